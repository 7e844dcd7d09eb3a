import pytest

from boxd.errors import InvalidArgument
from boxd.model import (
    LABEL_OWNER,
    BoxSettings,
    IdRange,
    Owner,
    Volume,
    box_hostname,
    container_spec,
    validate_image,
    validate_name,
)

OWNER = Owner(uid=1000, gid=1001, user="alice", home="/home/alice", shell="/bin/bash",
              group="alice")


@pytest.mark.parametrize("name", ["dev", "a", "fedora-40", "my_box.1", "x" * 63])
def test_good_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "../x", "a/b", "-x", ".x", "a\0b", "x" * 64, "bad name",
                                  "ünïcode", "a\u200bb", "a\nb"])
def test_bad_names(name):
    with pytest.raises(InvalidArgument, match="invalid box name"):
        validate_name(name)


@pytest.mark.parametrize("image", ["../etc/passwd", "a b", "x//y", ""])
def test_bad_images(image):
    with pytest.raises(InvalidArgument):
        validate_image(image)


def test_volume_parse():
    assert Volume.parse("/srv/data:/data") == Volume("/srv/data", "/data", False)
    assert Volume.parse("/srv/data/:/data:ro") == Volume("/srv/data", "/data", True)
    assert str(Volume.parse("/a:/b:ro")) == "/a:/b:ro"


@pytest.mark.parametrize("spec", ["relative:/x", "/x:relative", "/a/../etc:/x", "/x:/proc/y",
                                  "/x:/run/host", "/x:/", "/x:/y:rx", "/a b:/c", "/x",
                                  "/x:/run/boxd/init"])
def test_bad_volumes(spec):
    with pytest.raises(InvalidArgument):
        Volume.parse(spec)


def test_settings_update_validates_and_keeps_the_rest():
    base = BoxSettings().updated({"volumes": ["/a:/b"], "env": {"EDITOR": "vim"}})
    changed = base.updated({"env": {"X": "1"}})
    assert changed.volumes == (Volume("/a", "/b"),)
    assert changed.env == {"X": "1"}
    assert BoxSettings.from_json(changed.to_json()) == changed
    with pytest.raises(InvalidArgument, match="unknown option"):
        base.updated({"colour": "red"})
    with pytest.raises(InvalidArgument, match="environment variable name"):
        base.updated({"env": {"1X": "y"}})
    with pytest.raises(InvalidArgument, match="same destination"):
        base.updated({"volumes": ["/a:/b", "/c:/b"]})
    with pytest.raises(InvalidArgument, match="wrong type"):
        base.updated({"volumes": "/a:/b"})


def test_id_range_maps_owner_to_itself_and_root_to_the_range():
    mapping = IdRange(1_000_000_000).mapping(1000)
    assert mapping == [
        {"container_id": 0, "host_id": 1_000_000_000, "size": 1000},
        {"container_id": 1000, "host_id": 1000, "size": 1},
        {"container_id": 1001, "host_id": 1_000_001_001, "size": 64535},
    ]
    # Covered container ids are contiguous from 0 and no host id appears twice.
    big = IdRange(2_000_000_000).mapping(70000)
    assert {"container_id": 70000, "host_id": 70000, "size": 1} in big
    assert big[0] == {"container_id": 0, "host_id": 2_000_000_000, "size": 65536}


def test_container_spec_shares_the_host_and_runs_the_entry_point(tmp_path):
    spec = container_spec(name="dev", image="img", owner=OWNER, settings=BoxSettings(),
                          config_dir=tmp_path, id_range=IdRange(1_000_000_000),
                          stop_timeout=5, extra_labels={})
    assert spec["entrypoint"] == ["/bin/sh", "/run/boxd/init"]
    assert spec["labels"][LABEL_OWNER] == "1000"
    assert spec["netns"] == spec["pidns"] == spec["ipcns"] == {"nsmode": "host"}
    assert spec["use_image_resolve_conf"] and spec["use_image_hosts"]
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert mounts["/run/host"]["source"] == "/"
    assert "rslave" in mounts["/run/host"]["options"]
    assert mounts["/home/alice"]["source"] == "/home/alice"
    assert mounts["/run/boxd/init"]["options"] == ["ro"]
    assert mounts["/run/boxd/config"]["source"] == str(tmp_path)
    assert spec["userns"] == {"nsmode": "private"}
    assert spec["idmappings"]["GIDMap"][1] == {"container_id": 1001, "host_id": 1001, "size": 1}


def test_hostname_defaults_to_a_valid_label():
    assert box_hostname("my_box.1", BoxSettings()) == "my-box-1"
    assert box_hostname("dev", BoxSettings(hostname="work")) == "work"
