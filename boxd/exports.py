"""Launchers and exported applications of boxes, in their owners' homes.

All of it happens inside the box, as its owner: reading the app's desktop file and icons, and
writing or removing files in the owner's home (which the box shares). So the daemon never
writes into a home as root, and a box cannot use boxd to reach a file its owner could not.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from boxd import desktop, errors, podman
from boxd.capture import run_captured
from boxd.model import Owner
from boxd.state import StateStore

APP_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_APP_RE = APP_NAME_RE
APP_DIRS = ("/usr/share/applications", "/usr/local/share/applications")
FIND_APP = ("for d in " + " ".join(APP_DIRS) + "; do "
            '[ -f "$d/$BOXD_APP.desktop" ] && exec cat "$d/$BOXD_APP.desktop"; done; exit 3')
# Copies the app's icons into the owner's icon theme, inside the box, as the owner.
COPY_ICONS = r'''
set -u
for f in /usr/share/icons/hicolor/*/apps/"$1".* /usr/share/pixmaps/"$1".*; do
    [ -f "$f" ] || continue
    case $f in
    /usr/share/icons/*) rel=${f#/usr/share/icons/} ;;
    *) rel=hicolor/scalable/apps/${f##*/} ;;
    esac
    mkdir -p "$HOME/.local/share/icons/${rel%/*}" && cp "$f" "$HOME/.local/share/icons/$rel" &&
        echo "$HOME/.local/share/icons/$rel"
done
'''


@dataclass
class Export:
    kind: str          # app, bin, launcher
    name: str
    files: list[str]


class Exports:
    def __init__(self, client: podman.PodmanClient, state: StateStore) -> None:
        self._podman = client
        self._state = state

    # -- records: <state>/box/NAME/exports.json (boxd/state.py) -----------------------------------
    def list(self, box: str) -> list[Export]:
        return [Export(**e) for e in self._state.read_exports(box)]

    def _save(self, box: str, exports: list[Export]) -> None:
        self._state.write_exports(box, [asdict(e) for e in exports])

    def _remember(self, box: str, export: Export) -> None:
        kept = [e for e in self.list(box) if (e.kind, e.name) != (export.kind, export.name)]
        self._save(box, [*kept, export])

    # -- exporting -----------------------------------------------------------------------------
    async def export_app(self, box: str, owner: Owner, app: str) -> Export:
        if not _APP_RE.fullmatch(app):
            raise errors.InvalidArgument(f"invalid application name {app[:40]!r}")
        user = f"{owner.uid}:{owner.gid}"
        code, out, _ = await run_captured(self._podman, box,
                                          ["env", f"BOXD_APP={app}", "sh", "-c", FIND_APP], user)
        if code != 0:
            raise errors.NotFound(f"box {box!r} has no application {app!r} (looked for "
                                  f"{app}.desktop in {', '.join(APP_DIRS)})")
        text = out.decode("utf-8", "replace")
        target = f"{owner.home}/.local/share/applications/boxd-{box}-{desktop.app_id(app)}.desktop"
        await self._write_as(box, owner, target, desktop.exported_app(text, box), 0o644)
        files = [target]
        icon = desktop.icon_name(text)
        if icon and _APP_RE.fullmatch(icon):
            _, copied, _ = await run_captured(self._podman, box,
                                              ["sh", "-c", COPY_ICONS, "sh", icon], user)
            files += copied.decode().split()
        export = Export("app", app, files)
        self._remember(box, export)
        return export

    async def export_bin(self, box: str, owner: Owner, path: str) -> Export:
        if not path.startswith("/") or ".." in path.split("/") or len(path) > 1024 or \
                any(c.isspace() or c in "'\"\\$`" for c in path):
            raise errors.InvalidArgument("the program must be an absolute path in the box")
        name = desktop.app_id(path.rsplit("/", 1)[-1])
        target = f"{owner.home}/.local/bin/{name}"
        script = (f"#!/bin/sh\n# Written by boxd: runs {path} in the box {box}.\n"
                  f"exec boxctl run -c '{box}' -- '{path}' \"$@\"\n")
        await self._write_as(box, owner, target, script, 0o755)
        export = Export("bin", name, [target])
        self._remember(box, export)
        return export

    async def launcher(self, box: str, owner: Owner) -> Export:
        target = f"{owner.home}/.local/share/applications/boxd-{box}.desktop"
        await self._write_as(box, owner, target, desktop.box_launcher(box), 0o644)
        export = Export("launcher", box, [target])
        self._remember(box, export)
        return export

    async def unexport(self, box: str, owner: Owner, name: str) -> None:
        exports = self.list(box)
        gone = [e for e in exports if e.name == name]
        if not gone:
            raise errors.NotFound(f"box {box!r} has exported nothing named {name!r}")
        await self._remove_as(box, owner, [f for e in gone for f in e.files])
        self._save(box, [e for e in exports if e.name != name])

    def files(self, box: str) -> list[str]:
        return [f for e in self.list(box) for f in e.files]

    async def forget_box(self, box: str, owner: Owner) -> None:
        """The box is going (it must be running): its launchers, apps and wrappers go too."""
        files = self.files(box)
        if files:
            await self._remove_as(box, owner, files)
        self._state.drop_exports(box)

    # -- the owner's rights, in the box ---------------------------------------------------------
    async def _write_as(self, box: str, owner: Owner, path: str, text: str, mode: int) -> None:
        await self._in_box(box, owner, ["sh", "-c", 'mkdir -p "${1%/*}" && cat > "$1.boxd-new" '
                                        '&& chmod "$2" "$1.boxd-new" && mv -f "$1.boxd-new" "$1"',
                                        "sh", path, f"{mode:o}"], text.encode())

    async def _remove_as(self, box: str, owner: Owner, paths: list[str]) -> None:
        await self._in_box(box, owner, ["rm", "-f", "--", *paths], None)

    async def _in_box(self, box: str, owner: Owner, argv: list[str], stdin: bytes | None
                      ) -> None:
        code, _, err = await run_captured(self._podman, box, argv, f"{owner.uid}:{owner.gid}",
                                          stdin)
        if code != 0:
            raise errors.BoxdError(f"could not write in {owner.user}'s home: "
                                   f"{err.decode(errors='replace').strip()[:200]}")
