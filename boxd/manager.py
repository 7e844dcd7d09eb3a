"""Box lifecycle: create, start (until the entry point is ready), stop, remove, configure.

The manager keeps a cache of boxes current from podman's event stream and tells an observer what
changed. It knows podman (through the client) and the box model; it knows nothing about D-Bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from boxd import boxconf, errors, log, manifest, offloop, podman, readiness
from boxd.config import Config
from boxd.exports import Export, Exports
from boxd.model import (
    DENIED_ENV,
    LABEL_GROUPS,
    LABEL_MANAGED,
    LABEL_OWNER,
    LABEL_VERSION,
    SYSTEM_BUS_IN_BOX,
    BoxSettings,
    IdRange,
    Owner,
    Volume,
    box_hostname,
    check_volume_source,
    container_spec,
    validate_image,
    validate_name,
)
from boxd.sessions import Session, SessionManager, SpawnRequest
from boxd.state import StateStore
from boxd.subids import SubidAllocator

_log = log.get("boxd.manager")


@dataclass(frozen=True)
class BoxInfo:
    name: str
    id: str
    image: str
    owner: int
    state: str          # running, starting, stopped, paused, removing, unknown
    created: int        # unix seconds
    boxd_version: str
    groups: tuple[int, ...] = ()  # host gids mapped into the box (see model.LABEL_GROUPS)


@dataclass(frozen=True)
class ImageInfo:
    id: str
    names: list[str]
    size: int
    created: int


@dataclass(frozen=True)
class PlanItem:
    box: str
    action: str     # create, update, recreate, unchanged
    detail: str


class BoxObserver(Protocol):
    def box_added(self, box: BoxInfo) -> None: ...
    def box_changed(self, box: BoxInfo, changed: list[str]) -> None: ...
    def box_removed(self, box: BoxInfo) -> None: ...


class _NullObserver:
    def box_added(self, box: BoxInfo) -> None: pass
    def box_changed(self, box: BoxInfo, changed: list[str]) -> None: pass
    def box_removed(self, box: BoxInfo) -> None: pass


# How often boxd checks that podman still answers, and how old its cached listing may be when a
# call acts on it.
PROBE_INTERVAL = 2.0
CACHE_MAX_AGE = 30.0
# podman events after which a container's processes are gone.
_ENDED = frozenset({"died", "stop", "cleanup", "remove"})

_STATES = {"running": "running", "paused": "paused", "stopping": "stopping",
           "removing": "removing", "created": "stopped", "configured": "stopped",
           "exited": "stopped", "stopped": "stopped", "initialized": "stopped"}


def _created(value: Any) -> int:
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str) and value:
        # podman prints nanoseconds; fromisoformat takes at most microseconds.
        head, dot, rest = value.partition(".")
        if dot:
            digits = "".join(c for c in rest if c.isdigit())
            value = f"{head}.{digits[:6]}{rest[len(digits):]}"
        with contextlib.suppress(ValueError):
            return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    return 0


def _from_list_entry(entry: dict[str, Any]) -> BoxInfo:
    labels = entry.get("Labels") or {}
    return BoxInfo(name=(entry.get("Names") or [""])[0], id=entry.get("Id", ""),
                   image=entry.get("Image", ""), owner=int(labels.get(LABEL_OWNER, -1)),
                   state=_STATES.get(entry.get("State", ""), "unknown"),
                   created=_created(entry.get("Created")),
                   boxd_version=labels.get(LABEL_VERSION, ""), groups=_groups(labels))


def _from_inspect(data: dict[str, Any]) -> BoxInfo:
    labels = (data.get("Config") or {}).get("Labels") or {}
    return BoxInfo(name=data.get("Name", ""), id=data.get("Id", ""),
                   image=data.get("ImageName", ""), owner=int(labels.get(LABEL_OWNER, -1)),
                   state=_STATES.get((data.get("State") or {}).get("Status", ""), "unknown"),
                   created=_created(data.get("Created")),
                   boxd_version=labels.get(LABEL_VERSION, ""), groups=_groups(labels))


def _groups(labels: dict[str, str]) -> tuple[int, ...]:
    return tuple(int(g) for g in labels.get(LABEL_GROUPS, "").split(",") if g.isdigit())


def _is_box(labels: dict[str, str] | None) -> bool:
    return (bool(labels) and labels.get(LABEL_MANAGED) == "true"
            and str(labels.get(LABEL_OWNER, "")).isdigit())


class BoxManager:
    def __init__(self, config: Config, client: podman.PodmanClient,
                 observer: BoxObserver | None = None,
                 owner_lookup: Callable[[int], Owner] = Owner.lookup) -> None:
        self._config = config
        self._podman = client
        self.observer: BoxObserver = observer or _NullObserver()
        self._owner_lookup = owner_lookup
        self._boxes: dict[str, BoxInfo] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._starting: set[str] = set()
        # One start per box at a time, shielded from its callers: a caller cancelled (ctrl-c,
        # gone from the bus) must not leave the box half started.
        self._start_tasks: dict[str, asyncio.Task[BoxInfo]] = {}
        self._start_listeners: dict[str, list[Callable[[str], None]]] = {}
        self._stopping: set[str] = set()
        self._podman_up = False
        self._on_podman_change: Callable[[bool], None] | None = None
        self._synced_at = 0.0
        # Set once podman was first seen and what a previous boxd left running was found.
        self.ready = asyncio.Event()
        # Set then, or at the first failure to reach podman (it is down: nothing to wait for).
        self.first_contact = asyncio.Event()
        self.state = StateStore(config.state_dir)
        self.state.prepare()  # modes, and the old flat layout migrated
        self.sessions = SessionManager(client, config.max_sessions_per_user,
                                       config.warm_sessions, config.warm_idle_seconds)
        self.exports = Exports(client, self.state)
        self._subids = (SubidAllocator(self.state.subids_path, config.subid_base,
                                       config.subid_size)
                        if config.userns and config.mode == "system" else None)

    # -- queries -------------------------------------------------------------------------------
    @property
    def podman_up(self) -> bool:
        return self._podman_up

    def boxes(self) -> list[BoxInfo]:
        return sorted(self._boxes.values(), key=lambda b: b.name)

    def get(self, name: str) -> BoxInfo:
        validate_name(name)
        box = self._boxes.get(name)
        if box is None:
            raise errors.NotFound(f"there is no box named {name!r}")
        return box

    async def images(self) -> list[ImageInfo]:
        with self._podman_errors():
            entries = await self._podman.list_images()
        return [ImageInfo(id=str(e.get("Id", "")), names=list(e.get("RepoTags") or e.get("Names")
                                                               or []),
                          size=max(0, int(e.get("Size") or 0)), created=_created(e.get("Created")))
                for e in entries]

    async def remove_image(self, reference: str, force: bool) -> None:
        """Remove an image; refused while a box uses it, unless forced (which removes those
        boxes too)."""
        validate_image(reference)
        users = [b.name for b in self._boxes.values() if b.image == reference]
        if users and not force:
            raise errors.Busy(f"image {reference} is used by {', '.join(sorted(users))}; "
                              "remove those boxes first, or force")
        with self._podman_errors():
            try:
                await self._podman.remove_image(reference, force=force)
            except podman.Conflict:
                raise errors.Busy(f"image {reference} is used by containers; remove them "
                                  "first, or force") from None
            except podman.NotFound:
                raise errors.ImageNotFound(f"there is no image {reference}") from None

    def settings(self, name: str) -> BoxSettings:
        data = self.state.read_settings(name)
        return BoxSettings.from_json(data) if data is not None else BoxSettings()

    # -- lifecycle -----------------------------------------------------------------------------
    async def create(self, owner_uid: int, name: str, image: str,
                     options: dict[str, Any]) -> BoxInfo:
        validate_name(name)
        image = validate_image(image or self._config.default_image)
        settings = BoxSettings().updated(options)
        owner = await self._owner(owner_uid)
        await self._check_settings(settings, owner)
        async with self._lock(name):
            if name in self._boxes:
                raise errors.AlreadyExists(f"a box named {name!r} exists already")
            owned = sum(1 for b in self._boxes.values() if b.owner == owner.uid)
            if owned >= self._config.max_boxes_per_user:
                raise errors.LimitReached(f"you have {owned} boxes already, the most this host "
                                          "allows; remove one first")
            with self._podman_errors():
                if await self._podman.container_exists(name):
                    raise errors.AlreadyExists(
                        f"a container named {name!r} exists already (not a box)")
                if not await self._podman.image_exists(image):
                    raise errors.ImageNotFound(
                        f"image {image} is not on this host; pull it or build the default image")
                id_range = await self._id_range(owner)
                config_dir = self._prepare_state(name, settings,
                                                 id_range.host_start if id_range else owner.gid)
                service = await asyncio.to_thread(self._podman.service_pid)
                spec = container_spec(name=name, image=image, owner=owner, settings=settings,
                                      config_dir=config_dir, id_range=id_range,
                                      stop_timeout=self._config.stop_timeout,
                                      extra_labels=self._config.extra_labels,
                                      runtime_limits_file=f"/proc/{service}/limits"
                                      if service else None)
                try:
                    await self._podman.create_container(spec)
                except (podman.Conflict, podman.ApiError) as exc:
                    self._drop_state(name)
                    if not isinstance(exc, podman.Conflict) and "already in use" not in str(exc):
                        raise
                    # Someone created it between our check and our create.
                    raise errors.AlreadyExists(
                        f"a container named {name!r} exists already (not a box)") from None
                except BaseException:
                    self._drop_state(name)
                    raise
                box = _from_inspect(await self._podman.inspect_container(name))
            self._upsert(box)
            return box

    async def start(self, name: str, on_output: Callable[[str], None] | None = None) -> BoxInfo:
        """Start a box and wait until its entry point is ready; `on_output` gets each line the
        entry point prints on the way (package installs, hooks). A start under way is joined,
        not repeated; cancelling this call leaves that start running to its end, so the box is
        never left half started."""
        self.get(name)
        await self.refresh_if_stale()
        task = self._start_tasks.get(name)
        if task is None:
            listeners: list[Callable[[str], None]] = []
            task = asyncio.create_task(self._start(name, listeners))
            self._start_tasks[name] = task
            self._start_listeners[name] = listeners
            task.add_done_callback(lambda done: self._start_done(name, done))
        listeners = self._start_listeners[name]
        if on_output is not None:
            listeners.append(on_output)
        try:
            return await asyncio.shield(task)
        finally:
            if on_output is not None:
                with contextlib.suppress(ValueError):
                    listeners.remove(on_output)

    def _start_done(self, name: str, task: asyncio.Task[BoxInfo]) -> None:
        if self._start_tasks.get(name) is task:
            del self._start_tasks[name]
            self._start_listeners.pop(name, None)
        if not task.cancelled() and task.exception() is not None:
            # Read here too: a start whose callers all left would otherwise log "never
            # retrieved".
            _log.debug("start_failed", box=name, error=str(task.exception()))

    async def _start(self, name: str, listeners: list[Callable[[str], None]]) -> BoxInfo:
        def output(line: str) -> None:
            for listener in list(listeners):
                listener(line)

        async with self._lock(name):
            box = self.get(name)
            if box.state != "running":
                # Whatever state an earlier start, podman or anyone else left, go by podman's
                # word: a box running already has nothing to wait for (its entry point said
                # ready to a token of before).
                with self._podman_errors():
                    box = _from_inspect(await self._podman.inspect_container(name))
                self._upsert(box)
            if box.state == "running":
                return box
            owner = await self._owner(box.owner)
            await self._id_range(owner)  # refused if the owner's ids now collide with the host's
            settings = self.settings(name)
            token = secrets.token_hex(8)
            self._write_box_conf(name, owner, settings, token, held_groups(box.groups, owner))
            self._starting.add(name)
            self._set_state(name, "starting")
            since = time.time()
            try:
                pipe = readiness.ReadyPipe(self._config_dir(name), token)
                with self._podman_errors(), pipe:
                    await self._podman.start_container(name)
                    told_by = await readiness.await_ready(self._podman, name, token, since,
                                                          self._config.start_timeout, pipe,
                                                          output)
                    box = _from_inspect(await self._podman.inspect_container(name))
            except BaseException:
                self._starting.discard(name)
                try:  # not "starting" any more: what podman says, or unknown
                    self._upsert(_from_inspect(await self._podman.inspect_container(name)))
                except (podman.PodmanError, asyncio.CancelledError):
                    self._set_state(name, "unknown")
                raise
            finally:
                self._starting.discard(name)
            _log.info("box_started", box=name, ready_by=told_by,
                      duration_ms=round((time.time() - since) * 1000, 1))
            self._upsert(box)
            return box

    async def stop(self, name: str) -> BoxInfo:
        """Stop a box: hang up its sessions (told why), kill what outlives stop_timeout, then
        stop the container. The box is "stopping" until podman says it is stopped."""
        self.get(name)
        async with self._lock(name):
            before = self.get(name)
            self._stopping.add(name)
            self._set_state(name, "stopping")
            try:
                with self._podman_errors():
                    await self._stop_container(name)
                    box = _from_inspect(await self._podman.inspect_container(name))
            except BaseException:
                self._stopping.discard(name)
                try:  # whatever podman says it is, or what it was
                    self._upsert(_from_inspect(await self._podman.inspect_container(name)))
                except podman.PodmanError:
                    if self._boxes.get(name) is not None:
                        self._upsert(before)
                raise
            self._stopping.discard(name)
            self._upsert(box)
            if box.state != "stopped":
                raise errors.BoxdError(f"podman did not stop box {name!r}: it is {box.state}")
            _log.info("box_stopped", box=name)
            return box

    async def _stop_container(self, name: str) -> None:
        timeout = self._config.stop_timeout
        for attempt in range(3):
            await self.sessions.end_box(name, f"box {name} was stopped", float(timeout))
            try:
                await self._podman.stop_container(name, timeout)
                return
            except podman.ApiError as exc:
                # An exec started while we ended the others (or podman still booking one):
                # end it, and try again.
                if "exec session" not in exc.message or attempt == 2:
                    raise
                _log.info("stop_retried", box=name, error=exc.message)

    async def remove(self, name: str, force: bool) -> None:
        box = self.get(name)
        if box.state in ("running", "starting", "paused") and not force:
            raise errors.Busy(f"box {name!r} is running; stop it first or remove it with force")
        if self.exports.files(name):
            # Removing launchers happens in the box, which may have to start for it.
            await self._forget_exports(name)
            force = True
        async with self._lock(name):
            box = self.get(name)
            if box.state in ("running", "starting", "paused") and not force:
                raise errors.Busy(f"box {name!r} is running; stop it first or remove it with force")
            await self.sessions.warm.release_box(name)
            with self._podman_errors():
                try:
                    await self._podman.remove_container(name, force=force)
                except podman.NotFound:
                    pass
            self._drop_state(name)
            self._forget(box.name, "removed")

    async def apply(self, owner_uid: int, entries: list[manifest.BoxEntry],
                    dry_run: bool) -> list[PlanItem]:
        """Make the caller's boxes what a manifest says: create what is missing, change in
        place what the entry point carries (volumes, env, home, packages, hooks: at the next
        start), re-create what podman cannot change (image, hostname; the home stays, it is the
        host's). Boxes the manifest does not name are left alone."""
        plan = [self._plan(owner_uid, entry) for entry in entries]
        if dry_run:
            return plan
        for item, entry in zip(plan, entries, strict=True):
            image = entry.image or self._config.default_image
            if item.action == "recreate":
                await self.remove(entry.name, force=True)
            if item.action in ("create", "recreate"):
                await self.create(owner_uid, entry.name, image, entry.options)
            elif item.action == "update":
                async with self._lock(entry.name):
                    await self._check_settings(entry.settings, await self._owner(owner_uid))
                    self._write_settings(entry.name, entry.settings)
            for app in self._unexported(entry):  # exporting starts the box: only if needed
                await self.export(entry.name, "app", app)
        return plan

    def _plan(self, owner_uid: int, entry: manifest.BoxEntry) -> PlanItem:
        box = self._boxes.get(entry.name)
        image = entry.image or self._config.default_image
        if box is None:
            return PlanItem(entry.name, "create", f"from {image}")
        if box.owner != owner_uid:
            raise errors.AlreadyExists(f"manifest line {entry.line}: box {entry.name!r} "
                                       "belongs to another user")
        current = self.settings(entry.name)
        if box.image != image:
            return PlanItem(entry.name, "recreate",
                            f"image {box.image} -> {image}; the home is kept")
        if current.hostname != entry.settings.hostname:
            return PlanItem(entry.name, "recreate", "hostname changed; the home is kept")
        now = current.to_json()
        changed = [k for k, v in entry.settings.to_json().items() if now.get(k) != v]
        if self._unexported(entry):
            changed.append("exports")
        if not changed:
            return PlanItem(entry.name, "unchanged", "")
        return PlanItem(entry.name, "update",
                        f"{', '.join(changed)} updated in place; applies at the next start")

    def _unexported(self, entry: manifest.BoxEntry) -> list[str]:
        exported = {e.name for e in self.exports.list(entry.name) if e.kind == "app"}
        return [app for app in entry.exports if app not in exported]

    # -- exports: launchers, apps and wrappers in the owner's home, written from the box ---------
    async def export(self, name: str, kind: str, target: str = "") -> Export:
        box = await self._running(name)
        owner = await self._owner(box.owner)
        with self._podman_errors():
            if kind == "app":
                return await self.exports.export_app(name, owner, target)
            if kind == "bin":
                return await self.exports.export_bin(name, owner, target)
            return await self.exports.launcher(name, owner)

    async def unexport(self, name: str, export_name: str) -> None:
        box = await self._running(name)
        with self._podman_errors():
            await self.exports.unexport(name, await self._owner(box.owner), export_name)

    async def _forget_exports(self, name: str) -> None:
        try:
            box = await self._running(name)
            with self._podman_errors():
                await self.exports.forget_box(name, await self._owner(box.owner))
        except errors.BoxdError as exc:
            _log.warning("exports_left_behind", box=name, files=self.exports.files(name),
                         error=exc.message)

    async def _running(self, name: str) -> BoxInfo:
        self.get(name)
        await self.refresh_if_stale()
        box = self.get(name)
        return box if box.state == "running" else await self.start(name)

    async def configure(self, name: str, changes: dict[str, Any]) -> BoxSettings:
        """Change a box's settings; the entry point applies them at the next start."""
        self.get(name)
        if "hostname" in changes:
            raise errors.InvalidArgument("the hostname of a box is set when it is created")
        async with self._lock(name):
            settings = self.settings(name).updated(changes)
            await self._check_settings(settings, await self._owner(self.get(name).owner))
            self._write_settings(name, settings)
            return settings

    async def spawn(self, name: str, *, caller_uid: int, caller_sender: str, argv: list[str],
                    cwd: str, env: dict[str, str], fds: dict[int, int], tty: bool,
                    login_shell: bool, as_root: bool = False) -> Session:
        """Run a command (or the login shell) in a box as its owner, starting the box if needed.
        `fds` are boxd's own duplicates of the caller's fds, closed here once the session holds
        descriptions of its own."""
        try:
            self.get(name)
            _check_command(argv, cwd, env, login_shell)
            box = await self._running(name)
            owner = await self._owner(box.owner)
            settings = self.settings(name)
            home = settings.home or owner.home
            if as_root:
                user, home, login = "0:0", "/root", "root"
            else:
                # The uid alone: podman then adds the groups the box's /etc/group gives the
                # user (the entry point puts the owner's host groups there); "uid:gid" gets none.
                user, login = str(owner.uid), owner.user
            full_env = {**settings.env, "HOME": home, "USER": login, "LOGNAME": login,
                        # The host's system bus, as Toolbx gives it (the entry point also links
                        # /run/dbus/system_bus_socket there).
                        "DBUS_SYSTEM_BUS_ADDRESS": SYSTEM_BUS_IN_BOX, **env}
            if "PATH" in settings.env:  # the box's own PATH beats the login profile's
                full_env["__BOXD_PATH"] = settings.env["PATH"]
            if tty:
                full_env.setdefault("TERM", "xterm-256color")
            changed = 0.0 if as_root else await asyncio.to_thread(login_files_changed, home)
            request = SpawnRequest(box=name, argv=argv, cwd=cwd, env=full_env, fds=fds,
                                   user=user, tty=tty, login_shell=login_shell,
                                   login_files_changed=changed)
            with self._podman_errors():
                try:
                    return await self.sessions.spawn(request, caller_uid, caller_sender)
                except podman.Conflict:
                    # "can only create exec sessions on running containers": stopped outside
                    # boxd, and its event is still on the way. Learn its state, start it, retry.
                    box = _from_inspect(await self._podman.inspect_container(name))
                    self._upsert(box)
                    if box.state == "running":
                        raise
                    await self.start(name)
                    return await self.sessions.spawn(request, caller_uid, caller_sender)
        finally:
            for fd in fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)

    async def _owner(self, uid: int) -> Owner:
        # NSS may be LDAP or SSSD, which can hang: never on the event loop.
        return await offloop.NSS.run("user lookups", self._owner_lookup, uid)

    async def _check_settings(self, settings: BoxSettings, owner: Owner) -> None:
        # Paths a user names may be on NFS or autofs, which can hang: never on the event loop.
        home = settings.home or owner.home
        if not await offloop.FS.run("file system checks", os.path.isdir, home):
            raise errors.InvalidArgument(f"home directory {home} does not exist on the host")
        if self._config.mode != "system":
            return  # a session daemon's boxes can reach only what its user can anyway
        homes = await offloop.NSS.run("user lookups", _all_homes)
        volumes = [Volume(settings.home, settings.home)] if settings.home else []
        volumes += settings.volumes
        if volumes:
            await offloop.FS.run("file system checks", _check_volume_sources, volumes, owner,
                                 homes)

    # -- podman events -------------------------------------------------------------------------
    async def run(self, on_podman_change: Callable[[bool], None] | None = None) -> None:
        """Follow podman for ever: resync on (re)connect, apply events as they come, and probe
        that podman still answers. podman going away (socket closed, stream dropped, no answer
        within podman_timeout) is retried with backoff; anything else is a bug and raises."""
        self._on_podman_change = on_podman_change
        delay = 0.2
        while True:
            follower = asyncio.create_task(self._follow())
            probe = asyncio.create_task(self._probe())
            try:
                done, _ = await asyncio.wait({follower, probe},
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (follower, probe):
                    task.cancel()
                for task in (follower, probe):
                    with contextlib.suppress(asyncio.CancelledError, podman.PodmanError):
                        await task
            why = "podman closed the event stream"
            for task in done:
                exc = task.exception()
                if exc is not None and not isinstance(exc, podman.PodmanError):
                    raise exc
                if exc is not None:
                    why = str(exc)
            self.first_contact.set()
            if self._podman_up:
                delay = 0.2  # it was up: try again soon
            self._set_podman_up(False, why)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _follow(self) -> None:
        # Subscribed first, then listed: a change in between waits in the stream.
        async with self._podman.event_stream({"type": ["container"]}) as events:
            await self.resync()
            if not self.ready.is_set():
                await self._end_leftovers()
                self.ready.set()
                self.first_contact.set()
            self._set_podman_up(True)
            async for event in events:
                await self._on_event(event)
        raise podman.PodmanUnavailable("podman closed the event stream")

    async def _probe(self) -> None:
        """Returns (raises PodmanUnavailable) once podman, while up, stops answering: a frozen
        podman keeps its sockets open, so the event stream alone would not tell."""
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            if self._podman_up:
                await self._podman.ping(timeout=self._config.podman_timeout)

    def _set_podman_up(self, up: bool, why: str = "") -> None:
        if up == self._podman_up:
            return
        self._podman_up = up
        if up:
            _log.info("podman_connected", socket=self._config.podman_socket)
        else:
            _log.warning("podman_lost", error=why)
            # What boxd knew of boxes' states is stale until podman answers again, and what
            # ran through podman (sessions' streams, warm execs) is gone or frozen with it.
            for name in list(self._boxes):
                self._set_state(name, "unknown")
            self.sessions.podman_lost()
        if self._on_podman_change:
            self._on_podman_change(up)

    async def refresh_if_stale(self) -> None:
        """Resync from podman's listing if the last one is older than CACHE_MAX_AGE: events
        can be missed (a podman that logs them elsewhere), and a call about to act on a box's
        cached state should not trust a stale one."""
        if not self._podman_up:
            return
        if asyncio.get_running_loop().time() - self._synced_at > CACHE_MAX_AGE:
            with self._podman_errors():
                await self.resync()

    async def _end_leftovers(self) -> None:
        """A previous boxd (killed, crashed, restarted) may have left sessions and warm
        launchers running in boxes: nobody can reach them any more. Hang them up."""
        running = {b.name: b.owner for b in self._boxes.values() if b.state == "running"}
        found = await self.sessions.end_leftovers(running)
        if found:
            _log.warning("leftovers_found", execs=found, boxes=len(running))

    async def resync(self) -> None:
        known_before = set(self._boxes)  # a box created while podman lists is not stale
        entries = await self._podman.list_containers(labels=[f"{LABEL_MANAGED}=true"])
        self._synced_at = asyncio.get_running_loop().time()
        seen = set()
        for entry in entries:
            if _is_box(entry.get("Labels")):
                box = _from_list_entry(entry)
                seen.add(box.name)
                self._upsert(box)
        for name in [n for n in known_before if n not in seen]:
            self._forget(name, "not listed by podman")

    async def _on_event(self, event: dict[str, Any]) -> None:
        actor = event.get("Actor") or {}
        attrs = actor.get("Attributes") or {}
        name = attrs.get("name", "")
        container_id = actor.get("ID", "")
        known = self._boxes.get(name)
        if known is None and not _is_box(attrs):
            return
        action = event.get("Action") or event.get("Status") or ""
        if action.startswith("exec") or action == "attach":
            return  # sessions come and go; the box's own state did not change
        if known is not None and action in _ENDED and (not container_id
                                                       or container_id == known.id):
            # Its execs, warm ones included, died with it: none may be handed out while
            # the inspect below is on its way.
            self.sessions.warm.forget_box(name)
        if action == "remove":
            # An event may be late (about an earlier container of a re-created box) or come
            # from another podman sharing the event log: only the removal of the container we
            # know by this name makes us forget the box.
            if known is not None and (not container_id or container_id == known.id):
                self._forget(name, "podman removed it")
            return
        try:
            data = await self._podman.inspect_container(container_id or name)
        except podman.NotFound:
            # Gone already (its "remove" event follows), or not this podman's. Not a reason to
            # forget: podman's lookups can fail for a moment while other containers come and go.
            return
        if _is_box((data.get("Config") or {}).get("Labels")):
            self._upsert(_from_inspect(data))

    # -- cache ---------------------------------------------------------------------------------
    def _upsert(self, box: BoxInfo) -> None:
        if box.name in self._starting:
            # Until start() says otherwise: an event's inspect may be from before the start
            # ("created", "exited") or from before the entry point said ready ("running").
            box = replace(box, state="starting")
        elif box.name in self._stopping:
            # Until stop() has podman's word: the entry point may die before podman has
            # cleaned up, or refused to (sessions still running).
            box = replace(box, state="stopping")
        old = self._boxes.get(box.name)
        self._boxes[box.name] = box
        if box.state not in ("running", "starting"):
            self.sessions.warm.forget_box(box.name)
        if old is None:
            self.observer.box_added(box)
        elif old != box:
            changed = [f for f in box.__dataclass_fields__ if getattr(old, f) != getattr(box, f)]
            self.observer.box_changed(box, changed)

    def _set_state(self, name: str, state: str) -> None:
        box = self._boxes.get(name)
        if box is not None and box.state != state:
            self._boxes[name] = replace(box, state=state)
            self.observer.box_changed(self._boxes[name], ["state"])

    def _forget(self, name: str, why: str) -> None:
        box = self._boxes.pop(name, None)
        self.sessions.warm.forget_box(name)
        if box is not None:
            _log.info("box_forgotten", box=name, why=why)
            self._locks.pop(name, None)
            self.observer.box_removed(box)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    @contextlib.contextmanager
    def _podman_errors(self):  # type: ignore[no-untyped-def]
        try:
            yield
        except podman.PodmanTimeout:
            raise errors.PodmanUnavailable(
                f"podman at {self._config.podman_socket} did not answer within "
                f"{self._config.podman_timeout:g} s; is it stopped or overloaded?") from None
        except podman.PodmanUnavailable:
            raise errors.PodmanUnavailable(
                f"podman is not reachable at {self._config.podman_socket}; "
                "is its service (podman.socket) running?") from None
        except podman.NotFound as exc:
            raise errors.NotFound(exc.message) from None
        except podman.ApiError as exc:
            raise errors.BoxdError(f"podman refused: {exc.message}") from None

    async def _id_range(self, owner: Owner) -> IdRange | None:
        """The owner's host id range (boxd/subids.py), checked against NSS and /etc/sub[ug]id
        in a thread: NSS may ask a directory server."""
        if self._subids is None:
            return None
        return await asyncio.to_thread(self._subids.range_for, owner)

    # -- state files: boxd/state.py ------------------------------------------------------------
    def _config_dir(self, name: str) -> Path:
        return self.state.config_dir(name)

    def _prepare_state(self, name: str, settings: BoxSettings, box_gid: int) -> Path:
        config_dir = self.state.create_box(name, box_gid)
        self._write_settings(name, settings)
        return config_dir

    def _write_settings(self, name: str, settings: BoxSettings) -> None:
        self.state.write_settings(name, settings.to_json())

    def _write_box_conf(self, name: str, owner: Owner, settings: BoxSettings, token: str,
                        groups: tuple[tuple[str, int], ...] = ()) -> None:
        if not self.state.has_config(name):
            raise errors.StartFailed(f"box {name!r} has no config at "
                                     f"{self.state.config_dir(name)}; re-create it")
        self.state.write_box_conf(name, boxconf.render(
            name=name, hostname=box_hostname(name, settings), owner=owner, settings=settings,
            token=token, groups=groups))

    def _drop_state(self, name: str) -> None:
        self.state.drop_box(name)


# What login shells read at start, in the user's home (shared with the host).
LOGIN_FILES = (".profile", ".bash_profile", ".bash_login", ".zprofile", ".zshenv", ".zlogin",
               ".config/fish/config.fish")


def login_files_changed(home: str) -> float:
    """The latest change time of the user's login files (0 if none)."""
    latest = 0.0
    for name in LOGIN_FILES:
        with contextlib.suppress(OSError):
            info = os.stat(os.path.join(home, name))
            latest = max(latest, info.st_mtime, info.st_ctime)
    return latest


def held_groups(mapped: tuple[int, ...], owner: Owner) -> tuple[tuple[str, int], ...]:
    """The owner's host groups that the box maps, as (name, gid) for the entry point. A mapped
    group the owner has left since the box was created would stay usable by root in the box:
    the box must be re-created instead."""
    current = dict((gid, name) for name, gid in owner.groups)
    left = [gid for gid in mapped if gid not in current]
    if left:
        raise errors.StartFailed(
            f"{owner.user} is no longer in host group(s) {', '.join(map(str, left))}, which this "
            "box maps; re-create the box (boxctl rm, then boxctl create)")
    return tuple((current[gid], gid) for gid in mapped)


def _all_homes() -> dict[int, str]:
    return {e.pw_uid: e.pw_dir for e in pwd.getpwall()}


def _check_volume_sources(volumes: list[Volume], owner: Owner, homes: dict[int, str]) -> None:
    for volume in volumes:
        check_volume_source(volume, owner, homes)


_MAX_ARGV_BYTES = 256 * 1024


def _check_command(argv: list[str], cwd: str, env: dict[str, str], login_shell: bool) -> None:
    if not argv and not login_shell:
        raise errors.InvalidArgument("argv is empty: name a command, or ask for the login shell")
    if argv and login_shell:
        raise errors.InvalidArgument("give either a command or the login shell option, not both")
    if sum(len(a) + 1 for a in argv) > _MAX_ARGV_BYTES or len(argv) > 4096:
        raise errors.InvalidArgument(f"the command line is longer than {_MAX_ARGV_BYTES} bytes")
    if any("\0" in a for a in argv):
        raise errors.InvalidArgument("an argument contains a NUL byte")
    if not cwd.startswith("/") or "\0" in cwd or len(cwd) > 4096:
        raise errors.InvalidArgument("the working directory must be an absolute path")
    if len(env) > 1024 or sum(len(k) + len(v) for k, v in env.items()) > _MAX_ARGV_BYTES:
        raise errors.InvalidArgument("the environment is too large")
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value or not key.isprintable():
            raise errors.InvalidArgument(f"invalid environment variable name {key[:40]!r}")
        if key in DENIED_ENV:
            raise errors.InvalidArgument(f"{key} may not be set through boxd")
