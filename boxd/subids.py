"""Subordinate id ranges for box user namespaces: one range per owner, never shared, recorded,
registered, and checked against the host's users.

Container root of every box of one owner maps into that owner's range, so root in a box is an
unprivileged, otherwise unused host uid, and two owners' boxes never share ids. Ranges come from
a pool above SSSD's default id mapping (200,000 to 2,000,200,000), so that a box's root is not a
directory user's uid. Each range is written to /etc/subuid and /etc/subgid (`boxd
--register-subids`, run before the daemon as root: the daemon's unit cannot write /etc), so that
other allocators (useradd, administrators) see it taken; and before a box is created or started
its owner's range is checked: no user or group that NSS knows may lie in it, and no other
/etc/subuid or /etc/subgid range may overlap it.

The ranges are registered under SUBID_OWNER, a name that is no user's, not under the box's
owner: newuidmap lets a user map the ranges registered to them, and a user's rootless podman maps
all of them into its user namespace, which would change that user's own containers.

<state>/subids.json records each owner's range explicitly, so that a range once given never
moves: boxes made with an older `subid_base` keep the ids their containers were made with.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from boxd import errors, log
from boxd.model import IdRange, Owner
from boxd.state import atomic_write

_log = log.get("boxd.subids")

SSSD_DEFAULT_RANGE = (200_000, 2_000_200_000)   # [first, end) of SSSD's default id mapping
LAST_ID = 2**32 - 2                             # 2**32 - 1 is (uid_t) -1
OLD_DEFAULT_BASE = 1_000_000_000                # subid_base before ranges were recorded per owner
SUBUID = Path("/etc/subuid")
SUBGID = Path("/etc/subgid")
SUBID_OWNER = "_boxd"   # owner of boxd's lines in /etc/subuid and /etc/subgid; must be no user
# Ranges other software reserves without NSS entries: systemd's "foreign" ids (0x7FFE0000 +64K).
RESERVED = ((0x7FFE0000, 0x10000),)
_SAMPLES = 16        # NSS lookups spread over a range, besides its two ends
_MAX_SKIPPED = 64    # candidate ranges passed over for collisions before a new owner is refused
_CHECK_TTL = 60.0    # seconds a clean check of an owner's range stands


@dataclass(frozen=True)
class SubidEntry:
    """One line of /etc/subuid or /etc/subgid: owner (name or uid), first id, count."""

    owner: str
    start: int
    count: int

    def overlaps(self, start: int, count: int) -> bool:
        return self.start < start + count and start < self.start + self.count

    def line(self) -> str:
        return f"{self.owner}:{self.start}:{self.count}"


def parse_subids(text: str) -> list[SubidEntry]:
    """The entries of a subuid/subgid file; comments, blank and malformed lines are skipped,
    as shadow's tools do."""
    entries = []
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) != 3 or not parts[0] or line.lstrip().startswith("#"):
            continue
        if parts[1].isdigit() and parts[2].isdigit() and int(parts[2]) > 0:
            entries.append(SubidEntry(parts[0], int(parts[1]), int(parts[2])))
    return entries


def in_sssd_range(start: int, count: int) -> bool:
    first, end = SSSD_DEFAULT_RANGE
    return start < end and first < start + count


def sample_ids(rng: IdRange) -> list[int]:
    """The ids of a range NSS is asked about: both ends and _SAMPLES between."""
    step = max(1, rng.size // _SAMPLES)
    return sorted({*range(rng.host_start, rng.host_start + rng.size, step),
                   rng.host_start + rng.size - 1})


def _nss_user(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _nss_group(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def _nss_uid(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


@dataclass
class Host:
    """What a range is checked against and registered in; tests put stand-ins here."""

    subuid: Path = SUBUID
    subgid: Path = SUBGID
    user_of: Callable[[int], str | None] = _nss_user
    group_of: Callable[[int], str | None] = _nss_group
    user_named: Callable[[str], bool] = lambda name: _nss_uid(name) is not None

    def entries(self, path: Path) -> list[SubidEntry]:
        try:
            return parse_subids(path.read_text())
        except FileNotFoundError:
            return []


def collisions(rng: IdRange, owner: Owner, host: Host) -> list[str]:
    """Why `rng` cannot be `owner`'s box ids, one sentence each; empty if it can."""
    found = []
    for host_id in sample_ids(rng):
        user = host.user_of(host_id) if host_id != owner.uid else None
        if user is not None:
            found.append(f"uid {host_id} is the user {user}")
        group = host.group_of(host_id) if host_id != owner.gid else None
        if group is not None:
            found.append(f"gid {host_id} is the group {group}")
    for start, count in RESERVED:
        if start < rng.host_start + rng.size and rng.host_start < start + count:
            found.append(f"{start}-{start + count - 1} is reserved (systemd's foreign ids)")
    if host.user_named(SUBID_OWNER):
        found.append(f"a user named {SUBID_OWNER} exists, and /etc/subuid gives boxd's ranges "
                     "to that name")
    ours = {SUBID_OWNER, owner.user, str(owner.uid)}
    for path in (host.subuid, host.subgid):
        for entry in host.entries(path):
            if entry.owner not in ours and entry.overlaps(rng.host_start, rng.size):
                found.append(f"{path} gives {entry.start}-{entry.start + entry.count - 1} "
                             f"to {entry.owner}")
    return found


def register(entries: Iterable[SubidEntry], host: Host) -> list[str]:
    """Add the entries missing from /etc/subuid and /etc/subgid (the same in both); returns the
    lines added. Locked the way shadow's tools lock these files."""
    wanted = list(entries)
    added = []
    for path in (host.subuid, host.subgid):
        with _shadow_lock(path):
            try:
                text = path.read_text()
                st = path.stat()
                mode, gid = st.st_mode & 0o7777, st.st_gid
            except FileNotFoundError:
                text, mode, gid = "", 0o644, 0
            present = set(parse_subids(text))
            missing = [e for e in wanted if e not in present]
            if not missing:
                continue
            if text and not text.endswith("\n"):
                text += "\n"
            text += "".join(e.line() + "\n" for e in missing)
            atomic_write(path, text, mode, gid=gid)
            added += [f"{path}: {e.line()}" for e in missing]
    return added


@contextlib.contextmanager
def _shadow_lock(path: Path, timeout: float = 15.0):  # type: ignore[no-untyped-def]
    """PATH.lock holding our pid, as shadow's commonio writes it (a stale one, whose process is
    gone, is taken over)."""
    lock = path.with_name(path.name + ".lock")
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            break
        except FileExistsError:
            if _stale(lock):
                lock.unlink(missing_ok=True)
                continue
            if time.monotonic() > deadline:
                raise OSError(f"{lock} is held by another process") from None
            time.sleep(0.1)
    try:
        os.write(fd, f"{os.getpid()}".encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


def _stale(lock: Path) -> bool:
    try:
        pid = int(lock.read_text().strip() or "0")
    except (OSError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class SubidAllocator:
    """Owners' ranges, recorded in <state>/subids.json as {"version": 2, "ranges": {uid: {start,
    size}}}; the first format ({"base", "size", "slots"}) is read as the ranges it meant."""

    def __init__(self, path: Path, base: int, size: int, host: Host | None = None) -> None:
        self._path = path
        self._base = base
        self._size = size
        self.host = host or Host()
        self._ranges: dict[int, IdRange] = self._load()
        self._checked: dict[int, float] = {}
        self._mutex = threading.Lock()  # range_for runs in threads (NSS may block)

    def _load(self) -> dict[int, IdRange]:
        try:
            data = json.loads(self._path.read_text())
        except FileNotFoundError:
            return {}
        if isinstance(data.get("ranges"), dict):
            return {int(uid): IdRange(int(r["start"]), int(r["size"]))
                    for uid, r in data["ranges"].items()}
        base = int(data.get("base", OLD_DEFAULT_BASE))
        size = int(data.get("size", self._size))
        return {int(uid): IdRange(base + int(slot) * size, size)
                for uid, slot in (data.get("slots") or {}).items()}

    def _save(self) -> None:
        atomic_write(self._path, json.dumps({
            "version": 2,
            "ranges": {str(uid): {"start": r.host_start, "size": r.size}
                       for uid, r in sorted(self._ranges.items())}}))

    def known(self) -> dict[int, IdRange]:
        return dict(self._ranges)

    def range_for(self, owner: Owner) -> IdRange:
        """`owner`'s range, given now if they have none; refused if it collides with a user, a
        group or another user's registered range. Blocking (NSS): call it off the event loop."""
        with self._mutex:
            rng = self._ranges.get(owner.uid)
            if rng is None:
                return self._allocate(owner)
            if time.monotonic() - self._checked.get(owner.uid, -_CHECK_TTL) < _CHECK_TTL:
                return rng
            found = collisions(rng, owner, self.host)
            if found:
                _log.error("subid_collision", owner=owner.uid, start=rng.host_start,
                           size=rng.size, found=found[:5])
                raise errors.IdCollision(
                    f"the host ids of {owner.user}'s boxes ({rng.host_start}-"
                    f"{rng.host_start + rng.size - 1}) collide with this host's: "
                    f"{'; '.join(found[:3])}; an administrator must resolve this")
            self._checked[owner.uid] = time.monotonic()
            return rng

    def _allocate(self, owner: Owner) -> IdRange:
        taken = sorted(self._ranges.values(), key=lambda r: r.host_start)
        skipped: list[str] = []
        start = self._base
        while start + self._size - 1 <= LAST_ID:
            clash = next((r for r in taken if r.host_start < start + self._size
                          and start < r.host_start + r.size), None)
            if clash is not None:
                start += self._size
                continue
            candidate = IdRange(start, self._size)
            found = collisions(candidate, owner, self.host)
            if not found:
                self._ranges[owner.uid] = candidate
                self._save()
                self._checked[owner.uid] = time.monotonic()
                _log.info("subid_range_given", owner=owner.uid, start=start, size=self._size,
                          skipped=len(skipped))
                self._register(owner, candidate)
                return candidate
            skipped.append(f"{start}: {found[0]}")
            if len(skipped) >= _MAX_SKIPPED:
                break
            start += self._size
        raise errors.IdCollision(f"no free host id range is left for {owner.user}'s boxes "
                          f"(from {self._base}; {len(skipped)} collided with this host's users "
                          f"or registered ranges{', e.g. ' + skipped[0] if skipped else ''})")

    def _register(self, owner: Owner, rng: IdRange) -> None:
        """Register a new range at once where boxd may write /etc (not under its unit, whose
        ExecStartPre= registers it at the next start)."""
        try:
            register([SubidEntry(SUBID_OWNER, rng.host_start, rng.size)], self.host)
        except OSError as exc:
            _log.info("subid_registration_deferred", owner=owner.uid, error=str(exc))


def register_all(allocator: SubidAllocator, owner_lookup: Callable[[int], Owner]
                 ) -> tuple[list[str], list[str]]:
    """`boxd --register-subids`: every recorded owner's range into /etc/subuid and /etc/subgid.
    Returns (lines added, problems); a range that collides is reported, not registered."""
    entries, problems = [], []
    for uid, rng in sorted(allocator.known().items()):
        try:
            owner = owner_lookup(uid)
        except errors.BoxdError:
            problems.append(f"uid {uid} (range {rng.host_start}) has no account any more; "
                            "its range stays recorded, unregistered")
            continue
        found = collisions(rng, owner, allocator.host)
        if found:
            problems.append(f"{owner.user}'s range {rng.host_start}-"
                            f"{rng.host_start + rng.size - 1} collides: {'; '.join(found[:3])}")
            continue
        entries.append(SubidEntry(SUBID_OWNER, rng.host_start, rng.size))
    return register(entries, allocator.host), problems
