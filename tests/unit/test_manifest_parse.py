import pytest

from boxd.errors import InvalidArgument
from boxd.manifest import SCHEMA, parse

GOOD = """\
boxes:
  dev:
    image: localhost/boxd-debian:12
    volumes: [/srv/data:/data:ro]
    env: {EDITOR: vim}
    packages: [git]
    hooks: ["echo hi"]
  scratch: {}
  empty:
"""


def test_parses_boxes_with_their_settings():
    dev, scratch, empty = parse(GOOD)
    assert (dev.name, dev.image, dev.line) == ("dev", "localhost/boxd-debian:12", 2)
    assert [str(v) for v in dev.settings.volumes] == ["/srv/data:/data:ro"]
    assert dev.settings.packages == ("git",) and dev.settings.hooks == ("echo hi",)
    assert scratch.options == {} and empty.image == ""


@pytest.mark.parametrize("text, message", [
    ("boxes:\n  dev:\n    imgae: x\n", "line 3: unknown key 'imgae' for box 'dev'"),
    ("boxes:\n  dev:\n    volumes: /a:/b\n", "line 3: 'volumes' must be a list"),
    ("boxes:\n  ../x: {}\n", "line 2: invalid box name"),
    ("boxes:\n  dev: {env: {1X: y}}\n", "line 2 (box 'dev'): invalid environment variable"),
    ("boxes:\n  dev: [\n", "not valid YAML"),
    ("boxs:\n  dev: {}\n", "line 1: unknown key 'boxs'"),
    ("", "manifest is empty"),
    ("boxes: [dev]\n", "line 1: 'boxes' must be a mapping"),
    ("boxes:\n  dev: {packages: ['rm -rf']}\n", "packages must be"),
])
def test_errors_name_the_line(text, message):
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(text)


def test_yaml_errors_carry_their_line():
    with pytest.raises(InvalidArgument, match=r"line \d+"):
        parse("boxes:\n  dev:\n    env: {a: b\n")


def test_schema_names_every_key():
    keys = SCHEMA["properties"]["boxes"]["additionalProperties"]["properties"]
    assert set(keys) == {"image", "home", "hostname", "volumes", "env", "packages", "hooks",
                         "exports"}
