import shutil
import subprocess

import pytest

from boxd.desktop import box_launcher, exported_app, icon_name

SOURCE = """\
[Desktop Entry]
Type=Application
Name=Text Editor
Name[de]=Texteditor
GenericName=Editor
Exec=gedit %U
TryExec=gedit
DBusActivatable=true
Icon=org.gnome.gedit
Categories=Utility;TextEditor;
Actions=new-window;

[Desktop Action new-window]
Name=New Window
Exec=gedit --new-window
"""


def test_exported_app_runs_through_boxctl_and_names_the_box():
    text = exported_app(SOURCE, "dev")
    assert "Exec=boxctl run -c dev -- gedit %U" in text
    assert "Exec=boxctl run -c dev -- gedit --new-window" in text
    assert "Name=Text Editor (on dev)" in text and "Name[de]=Texteditor (on dev)" in text
    assert "Name=New Window\n" in text  # actions keep their own names
    assert "TryExec" not in text and "DBusActivatable" not in text
    assert icon_name(text) == "org.gnome.gedit"


@pytest.mark.parametrize("text", [exported_app(SOURCE, "dev"), box_launcher("dev")])
def test_desktop_files_validate(tmp_path, text):
    if not shutil.which("desktop-file-validate"):
        pytest.skip("desktop-file-validate is not installed")
    path = tmp_path / "boxd-dev.desktop"
    path.write_text(text)
    result = subprocess.run(["desktop-file-validate", str(path)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout
