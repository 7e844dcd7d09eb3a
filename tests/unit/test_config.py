import pytest

from boxd import config
from boxd.errors import ConfigError


def test_defaults_when_the_default_file_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "DEFAULT_PATH", tmp_path / "missing.yaml")
    cfg = config.load(None)
    assert cfg.podman_socket == "/run/podman/podman.sock"
    assert cfg.mode == "system"


def test_reads_yaml(tmp_path):
    path = tmp_path / "boxd.yaml"
    path.write_text("podman_socket: /tmp/p.sock\nstart_timeout: 5\nlog_format: json\n")
    cfg = config.load(path)
    assert (cfg.podman_socket, cfg.start_timeout, cfg.log_format) == ("/tmp/p.sock", 5, "json")


@pytest.mark.parametrize("text, message", [
    ("colour: red\n", "unknown key 'colour'"),
    ("start_timeout: soon\n", "'start_timeout' must be of type float"),
    ("userns: 1\n", "'userns' must be of type bool"),
    ("stop_timeout: true\n", "'stop_timeout' must be of type int"),
    ("log_format: xml\n", "log_format"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("a: [\n", "not valid YAML"),
    ("state_dir: relative\n", "absolute path"),
])
def test_bad_config_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "boxd.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        config.load(path)


def test_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.yaml")
