"""boxd's state on disk: one root-only directory per box, every write atomic.

    <state_dir>/                 0700  (the unit's StateDirectory=)
      subids.json                0600  host id ranges of box owners (boxd/subids.py)
      box/                       0700
        NAME/                    0700  one per box: nothing else is ever named after a box
          settings.json          0600
          exports.json           0600
          config/                0750 root:<box root's host gid>, bind-mounted read-only into the
            box.conf             0640  box at /run/boxd/config (podman's runtime opens the source
            ready                      as host root, so the 0700 parents do not stop it)
      boxes/                     0700  the old flat layout, migrated at start (see below)

A box's files are found by its name as one path component below box/, and the name rule
(boxd.model.validate_name) allows no "/" and no leading ".": names such as "x.json" or
"dev.exports" are just other directories, never another box's record.

Before this layout, settings and exports records were files named after the box next to each
other in boxes/ (NAME.json, NAME.exports.json, NAME/ for the config). `StateStore.prepare`
moves that to the layout above, once, at daemon start. A box's containers bind the config dir by
its old path, which podman cannot change: that path stays, as a symlink to the new config dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any

from boxd import log
from boxd.errors import InvalidArgument
from boxd.model import validate_name

_log = log.get("boxd.state")

DIR_MODE = 0o700
RECORD_MODE = 0o600
CONFIG_DIR_MODE = 0o750     # the box's root (group) reads box.conf and writes the ready FIFO
BOX_CONF_MODE = 0o640

SETTINGS = "settings.json"
EXPORTS = "exports.json"
CONFIG = "config"
BOX_CONF = "box.conf"


def atomic_write(path: Path, data: str | bytes, mode: int = RECORD_MODE, *,
                 gid: int | None = None) -> None:
    """Replace `path` with `data` so that a reader (or a crash) sees the old file or the new one,
    never a part: write a temporary file next to it, fsync it, rename it over, fsync the dir.
    The file gets `mode` (and group `gid` when running as root) before it becomes visible."""
    raw = data.encode() if isinstance(data, str) else data
    # A name no box, record or other writer uses: the leading dot is outside the name rule.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            if gid is not None and os.geteuid() == 0:
                os.fchown(fd, 0, gid)
            os.fchmod(fd, mode)  # not narrowed by the umask
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems do not fsync directories
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def ensure_dir(path: Path, mode: int = DIR_MODE, gid: int | None = None) -> Path:
    """`path` as a real directory (not a symlink) of root (and group `gid`) with `mode`, made if
    missing, corrected if not."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=mode)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{path} is not a directory")
    if os.geteuid() == 0 and (st.st_uid != 0 or (gid is not None and st.st_gid != gid)):
        os.chown(path, 0, st.st_gid if gid is None else gid, follow_symlinks=False)
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)
    return path


def read_json(path: Path) -> Any:
    """The JSON in `path`, or None if there is no such file."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


class StateStore:
    """Where boxd keeps what it knows about boxes. Knows paths and files, not podman."""

    def __init__(self, state_dir: Path | str) -> None:
        self.root = Path(state_dir)
        self.boxes = self.root / "box"
        self.legacy = self.root / "boxes"

    def prepare(self) -> None:
        """Make the state dir and its modes what they must be, and migrate the old layout."""
        self.root.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        ensure_dir(self.root.resolve())  # the state dir itself may be a symlink an admin made
        ensure_dir(self.boxes)
        with contextlib.suppress(FileNotFoundError):
            os.chmod(self.root / "subids.json", RECORD_MODE)
        migrate_flat_layout(self)

    # -- paths -----------------------------------------------------------------------------
    def box_dir(self, name: str) -> Path:
        return self.boxes / _component(name)

    def config_dir(self, name: str) -> Path:
        return self.box_dir(name) / CONFIG

    @property
    def subids_path(self) -> Path:
        return self.root / "subids.json"

    # -- a box's records -------------------------------------------------------------------
    def read_settings(self, name: str) -> dict[str, Any] | None:
        data = read_json(self.box_dir(name) / SETTINGS)
        return data if isinstance(data, dict) else None

    def write_settings(self, name: str, data: dict[str, Any]) -> None:
        atomic_write(ensure_dir(self.box_dir(name)) / SETTINGS, json.dumps(data))

    def read_exports(self, name: str) -> list[dict[str, Any]]:
        data = read_json(self.box_dir(name) / EXPORTS)
        return data if isinstance(data, list) else []

    def write_exports(self, name: str, data: list[dict[str, Any]]) -> None:
        atomic_write(ensure_dir(self.box_dir(name)) / EXPORTS, json.dumps(data))

    def drop_exports(self, name: str) -> None:
        (self.box_dir(name) / EXPORTS).unlink(missing_ok=True)

    # -- the config dir the box reads --------------------------------------------------------
    def create_box(self, name: str, box_gid: int) -> Path:
        """A box's directory and its config dir, which the box's root reads (group `box_gid`)."""
        ensure_dir(self.box_dir(name))
        return ensure_dir(self.config_dir(name), CONFIG_DIR_MODE, box_gid)

    def has_config(self, name: str) -> bool:
        return self.config_dir(name).is_dir()

    def write_box_conf(self, name: str, text: str) -> None:
        config_dir = self.config_dir(name)
        atomic_write(config_dir / BOX_CONF, text, BOX_CONF_MODE,
                     gid=config_dir.stat().st_gid)

    def drop_box(self, name: str) -> None:
        """Everything boxd kept about a box, and the old layout's link to it."""
        with contextlib.suppress(FileNotFoundError):
            link = self.legacy / _component(name)
            if link.is_symlink():
                link.unlink()
        shutil.rmtree(self.box_dir(name), ignore_errors=True)


def _component(name: str) -> str:
    """A box name as one path component; the name rule already excludes '/', '.' and '..',
    this says so again where a path is made."""
    validate_name(name)
    if "/" in name or name in (".", "..") or "\0" in name:
        raise InvalidArgument(f"invalid box name {name[:40]!r}")
    return name


# -- migration of the flat layout -------------------------------------------------------------
_LINK_SUFFIX = ".boxd-link"


def migrate_flat_layout(store: StateStore) -> list[str]:
    """Move <state>/boxes/{NAME.json, NAME.exports.json, NAME/} into <state>/box/NAME/.

    A box is a directory in the old layout (its config dir: every box had one); files are
    records. Which record a file is tells its content, not only its name: "dev.exports.json" is
    the exports record of box "dev" (a list) or the settings of box "dev.exports" (a mapping),
    whichever was written last. Idempotent: what is in the new layout already wins, and a crash
    at any step is finished at the next start. Returns the names of the boxes it moved."""
    legacy = store.legacy
    if not legacy.is_dir() or legacy.is_symlink():
        return []
    names: set[str] = set()
    for entry in os.scandir(legacy):
        if entry.name.startswith(".") and entry.name.endswith(_LINK_SUFFIX):
            names.add(entry.name[1:-len(_LINK_SUFFIX)])  # a link left by a crash: finish it
        elif entry.is_dir(follow_symlinks=False):
            names.add(entry.name)
    moved: list[str] = []
    consumed: set[str] = set()
    for name in sorted(n for n in names if _valid(n)):
        box_dir = ensure_dir(store.box_dir(name))
        for record, wanted in ((f"{name}.json", dict), (f"{name}.exports.json", list)):
            target = box_dir / (SETTINGS if wanted is dict else EXPORTS)
            old = legacy / record
            try:
                data = json.loads(old.read_text())
            except (FileNotFoundError, IsADirectoryError, ValueError, UnicodeDecodeError):
                continue
            if not isinstance(data, wanted):
                continue  # the other box's record under a colliding name
            consumed.add(record)
            if not target.exists():
                atomic_write(target, json.dumps(data))
        _move_config(legacy, name, store.config_dir(name))
        moved.append(name)
    for record in sorted(consumed):
        (legacy / record).unlink(missing_ok=True)
    os.chmod(legacy, DIR_MODE)
    if moved:
        _log.info("state_migrated", boxes=len(moved), to=str(store.boxes))
    left = [e for e in os.listdir(legacy) if not (legacy / e).is_symlink()]
    if left:
        _log.warning("state_left_in_old_layout", dir=str(legacy), files=sorted(left)[:20])
    return moved


def _move_config(legacy: Path, name: str, config_dir: Path) -> None:
    """The config dir moves to the box's dir; its old path (which the box's container binds)
    becomes a symlink to it. Each step can be redone after a crash."""
    old = legacy / name
    link = legacy / f".{name}{_LINK_SUFFIX}"
    target = os.path.relpath(config_dir, legacy)
    if old.is_dir() and not old.is_symlink():
        if not link.is_symlink():
            link.symlink_to(target)
        if config_dir.exists():
            # A new-layout config dir exists already (a box made since): keep it; the old one
            # is what the container binds, so it wins.
            shutil.rmtree(config_dir)
        os.rename(old, config_dir)
    if link.is_symlink():
        os.replace(link, old)


def _valid(name: str) -> bool:
    try:
        _component(name)
    except InvalidArgument:
        return False
    return True
