"""The box model: what a box is, how its input is validated, and the podman spec that makes it.

A box is a podman container labelled as boxd's. Its mutable settings (home, volumes, env) live in
boxd's state dir and reach the box through the entry point at every start, never through podman.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import re
import resource
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from boxd import __version__
from boxd.errors import InvalidArgument

LABEL_PREFIX = "io.github.boxd1"
LABEL_MANAGED = f"{LABEL_PREFIX}.managed"
LABEL_OWNER = f"{LABEL_PREFIX}.owner"
LABEL_VERSION = f"{LABEL_PREFIX}.version"
# The owner's supplementary gids mapped into the box at create, comma-separated.
LABEL_GROUPS = f"{LABEL_PREFIX}.groups"

INIT_PATH_IN_BOX = "/run/boxd/init"
CONFIG_DIR_IN_BOX = "/run/boxd/config"
HOST_ROOT_IN_BOX = "/run/host"
SYSTEM_BUS_IN_BOX = f"unix:path={HOST_ROOT_IN_BOX}/run/dbus/system_bus_socket"

# podman's own rule for names, and a hostname label's length so the box name can be its hostname.
_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")
_HOSTNAME_RE = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_PACKAGE_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9+._:-]{0,127}")
# Image references: registry/path:tag@digest, conservatively.
_IMAGE_RE = re.compile(r"[a-z0-9][a-z0-9._/:@-]{0,254}", re.IGNORECASE)
# Box paths where a volume would break the box or hide what boxd puts there.
_RESERVED_DESTINATIONS = ("/proc", "/sys", "/dev", "/run/host", "/run/boxd")
_MAX_VOLUMES = 64
_MAX_ENV = 256
_MAX_VALUE = 4096


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid box name {_show(name)}: use 1-63 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit")
    return name


def validate_image(image: str) -> str:
    if not _IMAGE_RE.fullmatch(image) or ".." in image or "//" in image:
        raise InvalidArgument(f"invalid image reference {_show(image)}")
    return image


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _clean_path(path: str, what: str) -> str:
    """An absolute, normalised path with no '..', no control characters and no spaces."""
    if not path.startswith("/") or len(path) > 1024:
        raise InvalidArgument(f"{what} must be an absolute path, not {_show(path)}")
    if any(ord(c) < 33 or c in "\\:" or ord(c) == 127 for c in path):
        raise InvalidArgument(f"{what} {_show(path)} contains spaces, ':' or control characters")
    parts = PurePosixPath(path).parts
    if ".." in parts:
        raise InvalidArgument(f"{what} {_show(path)} must not contain '..'")
    return str(PurePosixPath(*parts))


@dataclass(frozen=True)
class Volume:
    source: str       # path on the host
    destination: str  # path in the box
    read_only: bool = False

    @classmethod
    def parse(cls, spec: str) -> Volume:
        """SRC:DST[:ro|rw], as podman and Toolbx users write it."""
        if not isinstance(spec, str):
            raise InvalidArgument("each volume must be a string SRC:DST[:ro]")
        parts = spec.split(":")
        if len(parts) == 2:
            parts.append("rw")
        if len(parts) != 3 or parts[2] not in ("ro", "rw"):
            raise InvalidArgument(
                f"invalid volume {_show(spec)}: write it as SRC:DST or SRC:DST:ro")
        source = _clean_path(parts[0], "volume source")
        destination = _clean_path(parts[1], "volume destination")
        if destination == "/" or any(
            destination == r or destination.startswith(r + "/") for r in _RESERVED_DESTINATIONS
        ):
            raise InvalidArgument(f"volume destination {destination} is reserved in a box")
        return cls(source, destination, parts[2] == "ro")

    def __str__(self) -> str:
        return f"{self.source}:{self.destination}:{'ro' if self.read_only else 'rw'}"


@dataclass(frozen=True)
class BoxSettings:
    """What a user may change about a box after it was created; applied at its next start."""

    home: str = ""
    hostname: str = ""
    volumes: tuple[Volume, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    # Installed with the box's own package manager when they are missing, at start.
    packages: tuple[str, ...] = ()
    # sh commands run as root in the box at every start, after boxd's own set-up.
    hooks: tuple[str, ...] = ()

    KEYS = ("home", "hostname", "volumes", "env", "packages", "hooks")

    def to_json(self) -> dict[str, Any]:
        return {"home": self.home, "hostname": self.hostname,
                "volumes": [str(v) for v in self.volumes], "env": dict(self.env),
                "packages": list(self.packages), "hooks": list(self.hooks)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BoxSettings:
        return cls(home=data.get("home", ""), hostname=data.get("hostname", ""),
                   volumes=tuple(Volume.parse(v) for v in data.get("volumes", [])),
                   env=dict(data.get("env", {})), packages=tuple(data.get("packages", [])),
                   hooks=tuple(data.get("hooks", [])))

    def updated(self, changes: Mapping[str, Any]) -> BoxSettings:
        """Validated settings with `changes` applied (keys: KEYS)."""
        unknown = set(changes) - set(self.KEYS)
        if unknown:
            raise InvalidArgument(f"unknown option {sorted(unknown)[0]!r}: "
                                  f"known options are {', '.join(self.KEYS)}")
        values: dict[str, Any] = {}
        if "home" in changes:
            values["home"] = _clean_path(_expect(changes["home"], str, "home"), "home")
        if "hostname" in changes:
            hostname = _expect(changes["hostname"], str, "hostname")
            if not _HOSTNAME_RE.fullmatch(hostname):
                raise InvalidArgument(f"invalid hostname {_show(hostname)}")
            values["hostname"] = hostname
        if "volumes" in changes:
            specs = _expect(changes["volumes"], list, "volumes")
            if len(specs) > _MAX_VOLUMES:
                raise InvalidArgument(f"a box takes at most {_MAX_VOLUMES} volumes")
            volumes = tuple(Volume.parse(s) for s in specs)
            destinations = [v.destination for v in volumes]
            if len(set(destinations)) != len(destinations):
                raise InvalidArgument("two volumes have the same destination")
            values["volumes"] = volumes
        if "env" in changes:
            env = _expect(changes["env"], dict, "env")
            if len(env) > _MAX_ENV:
                raise InvalidArgument(f"a box takes at most {_MAX_ENV} environment variables")
            for key, value in env.items():
                if not isinstance(key, str) or not _ENV_NAME_RE.fullmatch(key):
                    raise InvalidArgument(f"invalid environment variable name {_show(key)}")
                if not isinstance(value, str) or "\0" in value or len(value) > _MAX_VALUE:
                    raise InvalidArgument(f"invalid value for environment variable {key}")
                if key in DENIED_ENV:
                    raise InvalidArgument(f"{key} may not be set through boxd")
            values["env"] = dict(env)
        if "packages" in changes:
            packages = _expect(changes["packages"], list, "packages")
            if len(packages) > _MAX_VOLUMES or not all(
                isinstance(p, str) and _PACKAGE_RE.fullmatch(p) for p in packages
            ):
                raise InvalidArgument("packages must be at most 64 package names "
                                      "(letters, digits and + . _ - : only)")
            values["packages"] = tuple(packages)
        if "hooks" in changes:
            hooks = _expect(changes["hooks"], list, "hooks")
            if len(hooks) > _MAX_VOLUMES or not all(
                isinstance(h, str) and h.strip() and "\0" not in h and len(h) <= _MAX_VALUE
                for h in hooks
            ):
                raise InvalidArgument("hooks must be at most 64 non-empty sh commands")
            values["hooks"] = tuple(hooks)
        return dataclasses.replace(self, **values)


# Host paths no box may have bound in, whoever asks: system config and secrets, the runtime dir
# with podman's and the bus's sockets, kernel interfaces, and the state of podman and boxd.
DENIED_SOURCES = ("/etc", "/root", "/run", "/var/run", "/proc", "/sys", "/dev", "/boot",
                  "/var/lib", "/var/log", "/usr/lib/polkit-1")
# Loader variables that would make programs in a box run code nobody asked for.
DENIED_ENV = frozenset({"LD_PRELOAD", "LD_AUDIT"})


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def check_volume_source(volume: Volume, owner: Owner, homes: Mapping[int, str]) -> None:
    """System mode: a box may bind host paths its owner could use anyway, not another user's
    home nor the host's secrets and sockets. `homes` maps uids to home directories. Symlinks
    are resolved first, so a link in the owner's home cannot point elsewhere."""
    real = os.path.realpath(volume.source)
    # Off limits whether or not it exists yet: the answer must not depend on the host's state
    # (/run/podman appears only once podman's service has run).
    if real == "/" or any(_within(real, top) for top in DENIED_SOURCES):
        raise InvalidArgument(f"volume source {volume.source} is off limits for boxes "
                              "(system files, secrets or sockets)")
    if not os.path.exists(real):
        raise InvalidArgument(f"volume source {volume.source} does not exist on the host")
    for uid, home in homes.items():
        if uid != owner.uid and home not in ("/", "") and _within(real, home) \
                and not _within(owner.home, home):
            raise InvalidArgument(f"volume source {volume.source} is in another user's home")


def _expect(value: Any, kind: type, what: str) -> Any:
    if not isinstance(value, kind):
        raise InvalidArgument(f"option {what!r} has the wrong type")
    return value


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int
    user: str
    home: str
    shell: str
    group: str
    # The host groups the user is in besides the primary one, as (name, gid): the box maps
    # these gids to themselves so that `id` and group-granted access (video, kvm...) match the
    # host's.
    groups: tuple[tuple[str, int], ...] = ()

    @classmethod
    def lookup(cls, uid: int) -> Owner:
        import grp

        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            raise InvalidArgument(f"uid {uid} has no user account on this host") from None
        try:
            group = grp.getgrgid(entry.pw_gid).gr_name
        except KeyError:
            group = entry.pw_name
        return cls(uid, entry.pw_gid, entry.pw_name, entry.pw_dir, entry.pw_shell or "/bin/sh",
                   group, supplementary_groups(entry.pw_name, entry.pw_gid))


# At most this many supplementary groups are mapped into a box (a uid/gid map holds 340 lines).
MAX_MAPPED_GROUPS = 64


def supplementary_groups(user: str, primary_gid: int) -> tuple[tuple[str, int], ...]:
    """The user's host groups other than the primary one, never gid 0 (root's group stays
    outside every box), at most MAX_MAPPED_GROUPS, as (name, gid) sorted by gid."""
    import grp

    try:
        gids = sorted(set(os.getgrouplist(user, primary_gid)) - {primary_gid, 0})
    except OSError:
        return ()
    groups = []
    for gid in gids[:MAX_MAPPED_GROUPS]:
        try:
            name = grp.getgrgid(gid).gr_name
        except KeyError:
            name = ""
        # The name goes into the box's /etc/group through sh and sed: plain names only.
        groups.append((name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]{0,31}", name)
                       else f"group{gid}", gid))
    return tuple(groups)


@dataclass(frozen=True)
class IdRange:
    """Where container ids 0..size-1 land on the host; the owner's uid/gid always map to itself."""

    host_start: int
    size: int = 65536

    def holds_host_id(self, ident: int) -> bool:
        return self.host_start <= ident < self.host_start + self.size

    def mapping(self, keep: int, *also: int) -> list[dict[str, int]]:
        """Container ids 0..size-1 land at host_start + id, except `keep` and `also`, which map
        to themselves (the owner's uid, or gid and supplementary gids)."""
        kept = sorted({keep, *also})
        segments = []
        start = 0
        for ident in kept:
            if start <= ident < self.size:
                if ident > start:
                    segments.append({"container_id": start, "host_id": self.host_start + start,
                                     "size": ident - start})
                start = ident + 1
        if start < self.size:
            segments.append({"container_id": start, "host_id": self.host_start + start,
                             "size": self.size - start})
        segments += [{"container_id": ident, "host_id": ident, "size": 1} for ident in kept]
        return sorted(segments, key=lambda segment: segment["container_id"])


def init_script_path() -> Path:
    return Path(str(resources.files("boxd") / "data" / "boxd-init.sh"))


def container_spec(*, name: str, image: str, owner: Owner, settings: BoxSettings,
                   config_dir: Path, id_range: IdRange | None,
                   stop_timeout: int, extra_labels: Mapping[str, str],
                   runtime_limits_file: str | None = None) -> dict[str, Any]:
    """The libpod SpecGenerator JSON for a box: a pet container that shares the host."""
    home = settings.home or owner.home
    spec: dict[str, Any] = {
        "name": name,
        "image": image,
        "hostname": box_hostname(name, settings),
        "labels": {**extra_labels, LABEL_MANAGED: "true", LABEL_OWNER: str(owner.uid),
                   LABEL_VERSION: __version__},
        "entrypoint": ["/bin/sh", INIT_PATH_IN_BOX],
        "command": [],
        # The entry point sets the box up as root (in the box); keep-id would default to the user.
        "user": "0:0",
        "netns": {"nsmode": "host"},
        "pidns": {"nsmode": "host"},
        "ipcns": {"nsmode": "host"},
        # Host devices, and the capabilities the entry point needs to bind what the host shares;
        # with a user namespace they are confined to it.
        "privileged": True,
        # The entry point links these to the host's; podman must not manage them.
        "use_image_resolve_conf": True,
        "use_image_hosts": True,
        "stop_timeout": stop_timeout,
        "log_configuration": {"driver": "k8s-file"},
        "mounts": [
            _bind("/", HOST_ROOT_IN_BOX, "rbind", "rslave"),
            _bind(home, home, "rbind"),
            _bind(str(init_script_path()), INIT_PATH_IN_BOX, "ro"),
            _bind(str(config_dir), CONFIG_DIR_IN_BOX, "ro"),
        ],
    }
    # The host's limits, as Toolbx's `--ulimit host` gives, not podman's service's.
    rlimits = host_rlimits(runtime_limits_file=runtime_limits_file)
    if rlimits:
        spec["r_limits"] = rlimits
    if id_range is not None:
        spec["userns"] = {"nsmode": "private"}
        gids = [gid for _, gid in owner.groups if not id_range.holds_host_id(gid)]
        spec["idmappings"] = {"UIDMap": id_range.mapping(owner.uid),
                              "GIDMap": id_range.mapping(owner.gid, *gids)}
        spec["labels"][LABEL_GROUPS] = ",".join(map(str, gids))
    else:
        spec["userns"] = {"nsmode": "keep-id"}
    return spec


_UNLIMITED = 2**64 - 1
# What a login on the host gets for open files: systemd's DefaultLimitNOFILE (1024:524288, the
# soft limit low for select(2)'s sake), capped by the host's own hard limit. PID 1's own soft
# limit is no guide: systemd raises its own to the maximum.
_LOGIN_NOFILE = (1024, 524288)


def _read_limits(path: str) -> dict[str, tuple[int, int]]:
    """nproc and nofile (soft, hard) from a /proc/PID/limits file; {} if unreadable."""
    limits: dict[str, tuple[int, int]] = {}
    try:
        with open(path) as handle:
            for line in handle:
                for label, kind in (("Max processes", "nproc"), ("Max open files", "nofile")):
                    if line.startswith(label + " "):
                        soft, hard = line[len(label):].split()[:2]
                        limits[kind] = (_UNLIMITED if soft == "unlimited" else int(soft),
                                        _UNLIMITED if hard == "unlimited" else int(hard))
    except (OSError, ValueError):
        return {}
    return limits


def host_rlimits(limits_file: str = "/proc/1/limits",
                 runtime_limits_file: str | None = None) -> list[dict[str, Any]]:
    """The limits a login on the host gets, in the OCI form, where podman's service would
    otherwise give its own (Toolbx's `--ulimit host`): processes as PID 1 has them (every login
    inherits them), open files as systemd gives a login session. Never above the hard limits of
    podman's service (`runtime_limits_file`) or boxd's own: the runtime, inside the box's user
    namespace, may lower limits but not raise them."""
    host = _read_limits(limits_file)
    runtime = _read_limits(runtime_limits_file) if runtime_limits_file else {}
    if set(runtime) != {"nproc", "nofile"}:
        # Without podman's own limits, a value above them would stop the box from starting
        # on a host where the runtime cannot raise limits: leave them to podman.
        return []
    limits: dict[str, tuple[int, int]] = {}
    for kind, which in (("nproc", resource.RLIMIT_NPROC), ("nofile", resource.RLIMIT_NOFILE)):
        _, own_hard = resource.getrlimit(which)
        ceiling = min(_UNLIMITED if own_hard < 0 else own_hard,
                      runtime.get(kind, (0, _UNLIMITED))[1])
        soft, hard = host.get(kind, (ceiling, ceiling))
        limits[kind] = (min(soft, ceiling), min(hard, ceiling))
    nofile_hard = min(_LOGIN_NOFILE[1], limits["nofile"][1])
    return [{"type": "nproc", "soft": limits["nproc"][0], "hard": limits["nproc"][1]},
            {"type": "nofile", "soft": min(_LOGIN_NOFILE[0], nofile_hard),
             "hard": nofile_hard}]


def box_hostname(name: str, settings: BoxSettings) -> str:
    """The box's hostname: its own setting, else the name made a valid hostname label."""
    if settings.hostname:
        return settings.hostname
    cleaned = re.sub(r"[^a-zA-Z0-9-]", "-", name).strip("-")
    return cleaned or "box"


def _bind(source: str, destination: str, *options: str) -> dict[str, Any]:
    return {"destination": destination, "source": source, "type": "bind",
            "options": list(options)}
