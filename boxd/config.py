"""Daemon configuration, read from YAML (/etc/boxd/boxd.yaml by default).

Unknown keys and wrong types stop the daemon at start with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from boxd.errors import ConfigError

DEFAULT_PATH = Path("/etc/boxd/boxd.yaml")


@dataclass(frozen=True)
class Config:
    # "system": root daemon on the system bus, boxes in user namespaces, polkit decides.
    # "session": a user's own daemon on the session bus against their rootless podman.
    mode: str = "system"
    podman_socket: str = "/run/podman/podman.sock"
    default_image: str = "localhost/boxd-debian:12"
    state_dir: str = "/var/lib/boxd"
    log_format: str = "console"
    log_level: str = "info"
    start_timeout: float = 60.0
    stop_timeout: int = 5
    podman_timeout: float = 30.0
    # Subordinate id ranges for box user namespaces: each owner gets `subid_size` ids from a pool
    # starting at `subid_base`, above SSSD's default id mapping (200,000 to 2,000,200,000).
    userns: bool = True
    subid_base: int = 2_001_000_000
    subid_size: int = 65536
    # Per-user caps, so that one user cannot exhaust the host.
    max_boxes_per_user: int = 32
    max_sessions_per_user: int = 64
    # Sessions of a kind asked for lately start from execs started ahead (see boxd/warm.py):
    # how many to keep per (box, user, tty), 0 for none, and for how long unused.
    warm_sessions: int = 2
    warm_idle_seconds: float = 600.0
    # Bus address override (tests run a private bus); empty means the mode's usual bus.
    bus_address: str = ""
    extra_labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_choice("mode", self.mode, ("system", "session"))
        _check_choice("log_format", self.log_format, ("console", "json"))
        _check_choice("log_level", self.log_level, ("debug", "info", "warning", "error"))
        for key in ("start_timeout", "podman_timeout"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"config key '{key}' must be a positive number of seconds")
        if self.max_boxes_per_user < 1 or self.max_sessions_per_user < 1:
            raise ConfigError("config keys 'max_boxes_per_user' and 'max_sessions_per_user' "
                              "must be at least 1")
        if not 0 <= self.warm_sessions <= 8:
            raise ConfigError("config key 'warm_sessions' must be between 0 and 8")
        if self.warm_idle_seconds <= 0:
            raise ConfigError("config key 'warm_idle_seconds' must be a positive number of seconds")
        if self.stop_timeout < 0:
            raise ConfigError("config key 'stop_timeout' must not be negative")
        if self.subid_size < 65536 or self.subid_base < 65536:
            raise ConfigError("config keys 'subid_base' and 'subid_size' must be at least 65536")
        if self.subid_base + self.subid_size > 2**32 - 1:
            raise ConfigError("config keys 'subid_base' and 'subid_size' must leave room for a "
                              "range below 4294967295")
        if not os.path.isabs(self.state_dir):
            raise ConfigError("config key 'state_dir' must be an absolute path")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"config key '{key}' must be one of {', '.join(choices)}, not {value!r}")


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "float": (int, float),
    "int": (int,),
    "bool": (bool,),
    "dict[str, str]": (dict,),
}


def from_mapping(data: dict[str, Any], source: str = "config") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys to values")
    values: dict[str, Any] = {}
    for key, value in data.items():
        fld = _FIELDS.get(key)
        if fld is None:
            known = ", ".join(sorted(_FIELDS))
            raise ConfigError(f"{source}: unknown key '{key}' (known keys: {known})")
        expected = _TYPES[str(fld.type)]
        # bool is an int in Python; do not let `true` pass as a number or a number as a bool.
        if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
            raise ConfigError(f"{source}: key '{key}' must be of type {fld.type}, "
                              f"not {type(value).__name__}")
        if key == "extra_labels" and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ConfigError(f"{source}: key 'extra_labels' must map strings to strings")
        values[key] = value
    return Config(**values)


def load(path: Path | None) -> Config:
    """Load the config file; a missing default file means all defaults."""
    target = path or DEFAULT_PATH
    try:
        text = target.read_text()
    except FileNotFoundError:
        if path is None:
            return Config()
        raise ConfigError(f"config file {target} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {target}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{target}: not valid YAML: {exc}") from None
    return from_mapping(data if data is not None else {}, str(target))
