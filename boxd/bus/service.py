"""The io.github.boxd1 objects: a Manager and one Box object per box. Thin: parse, authorize,
delegate to the BoxManager, and mirror its cache as D-Bus objects and property changes."""

import asyncio
import os
from typing import Any

from dbus_next import Message, MessageType, Variant
from dbus_next.service import PropertyAccess, ServiceInterface, dbus_property, method, signal

from boxd import __version__, authz, limits, manifest
from boxd.authz import Authorizer, Caller
from boxd.bus.dispatch import Dispatcher, current_caller
from boxd.errors import AccessDenied, InvalidArgument
from boxd.jobs import Job, JobManager, Layer
from boxd.manager import BoxInfo, BoxManager
from boxd.model import validate_image
from boxd.paths import JOB_PATH_PREFIX, MANAGER_PATH, SESSION_PATH_PREFIX, box_path
from boxd.sessions import Session

SESSION_INTERFACE = "io.github.boxd1.Session"
JOB_INTERFACE = "io.github.boxd1.Job"
# A finished session stays on the bus this long for a late Wait(), unless its caller leaves.
SESSION_LINGER = 60.0

# CreateBox / Configure options and the D-Bus type each must have.
_OPTION_TYPES = {"home": "s", "hostname": "s", "volumes": "as", "env": "a{ss}",
                 "packages": "as", "hooks": "as"}


def unpack_options(options: dict[str, Variant],
                   types: dict[str, str] = _OPTION_TYPES, what: str = "option") -> dict[str, Any]:
    """a{sv} options -> plain values, each checked against the one D-Bus type it may have."""
    limits.options(options, f"the {what}s")
    values = {}
    for key, variant in options.items():
        expected = types.get(key)
        if expected is None:
            raise InvalidArgument(f"unknown {what} {key!r}: known options are "
                                  + ", ".join(sorted(types)))
        if variant.signature != expected:
            raise InvalidArgument(f"{what} {key!r} must be of type {expected}, "
                                  f"not {variant.signature}")
        values[key] = variant.value
    limits.box_settings(values)
    return values


_SPAWN_OPTION_TYPES = {"tty": "b", "shell": "b", "root": "b"}


def _text(raw: bytes) -> str:
    """Paths and arguments travel as bytes (ay); keep undecodable bytes as they are."""
    return bytes(raw).rstrip(b"\0").decode("utf-8", "surrogateescape")


class SessionInterface(ServiceInterface):
    def __init__(self, service: "BoxdService", session: Session) -> None:
        super().__init__(SESSION_INTERFACE)
        self._service = service
        self.session = session

    def _authorize(self, caller: Caller | None = None) -> Session:
        if (caller or current_caller()).uid not in (0, self.session.caller_uid):
            raise AccessDenied("this session belongs to another caller")
        return self.session

    async def authorize_read(self, caller: Caller) -> None:
        self._authorize(caller)

    @method()
    async def Resize(self, rows: "u", cols: "u"):
        await self._authorize().resize(rows, cols)

    @method()
    async def Signal(self, signum: "i"):
        await self._authorize().signal(signum)

    @method()
    async def Wait(self) -> "i":
        status = await self._authorize().wait()
        self._service.session_collected(self.session)
        return status

    @signal()
    def Exited(self, status: "i") -> "i":
        return status

    @dbus_property(access=PropertyAccess.READ)
    def Box(self) -> "s":
        return self.session.box

    @dbus_property(access=PropertyAccess.READ)
    def Tty(self) -> "b":
        return self.session.tty

    @dbus_property(access=PropertyAccess.READ)
    def ExitStatus(self) -> "i":
        return -1 if self.session.exit_status is None else self.session.exit_status


class JobInterface(ServiceInterface):
    def __init__(self, job: Job) -> None:
        super().__init__(JOB_INTERFACE)
        self.job = job

    def _authorize(self, caller: Caller) -> None:
        if caller.uid not in (0, self.job.caller_uid):
            raise AccessDenied("this job belongs to another caller")

    async def authorize_read(self, caller: Caller) -> None:
        self._authorize(caller)

    @method()
    async def Cancel(self):
        self._authorize(current_caller())
        self.job.cancel()

    @signal()
    def Progress(self, layer: "s", status: "s", current: "t", total: "t") -> "sstt":
        return [layer, status, current, total]

    @signal()
    def Output(self, line: "s") -> "s":
        return line

    @signal()
    def Finished(self, state: "s", image_id: "s", error: "s", message: "s") -> "ssss":
        return [state, image_id, error, message]

    @dbus_property(access=PropertyAccess.READ)
    def Kind(self) -> "s":
        return self.job.kind

    @dbus_property(access=PropertyAccess.READ)
    def Reference(self) -> "s":
        return self.job.reference

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> "s":
        return self.job.state

    @dbus_property(access=PropertyAccess.READ)
    def ImageId(self) -> "s":
        return self.job.image_id


class BoxInterface(ServiceInterface):
    def __init__(self, service: "BoxdService", info: BoxInfo) -> None:
        super().__init__("io.github.boxd1.Box")
        self._service = service
        self.info = info

    async def _authorized_name(self, what: str, action: str = authz.MANAGE_OWN_BOX,
                               extra: dict[str, str] | None = None) -> str:
        await self._service.authz.require_box(current_caller(), self.info.owner, self.info.name,
                                              action, what, extra)
        return self.info.name

    async def authorize_read(self, caller: Caller) -> None:
        await self._service.authz.require_box(caller, self.info.owner, self.info.name,
                                              authz.MANAGE_OWN_BOX, "see")

    @method()
    async def Start(self):
        await self._service.manager.start(await self._authorized_name("start"))

    @method()
    async def StartJob(self, options: "a{sv}") -> "o":
        caller = current_caller()
        unpack_options(options, {}, "start option")
        # That it runs already is nothing its owner may not know: no polkit round trip then.
        if caller.uid != self.info.owner or self.info.state != "running":
            await self._authorized_name("start")
        if self.info.state == "running":
            return "/"
        name, manager = self.info.name, self._service.manager
        return self._service.job_started(self._service.jobs.run(
            "start", name, caller.uid, caller.sender,
            lambda output: manager.start(name, on_output=output)))

    @method()
    async def Stop(self):
        await self._service.manager.stop(await self._authorized_name("stop"))

    @method()
    async def Remove(self, force: "b"):
        await self._service.manager.remove(await self._authorized_name("remove"), force)

    @method()
    async def Configure(self, changes: "a{sv}"):
        options = unpack_options(changes)
        await self._service.manager.configure(await self._authorized_name("configure"), options)

    @method()
    async def Spawn(self, cwd: "ay", argv: "aay", fds: "a{uh}", env: "a{ss}",
                    options: "a{sv}") -> "o":
        caller = current_caller()
        if not set(fds) <= {0, 1, 2}:
            raise InvalidArgument("fds may only map 0, 1 and 2 (stdin, stdout, stderr)")
        if any(not isinstance(fd, int) for fd in fds.values()):
            raise InvalidArgument("a file descriptor index does not match the fds sent with "
                                  "the call")
        opts = unpack_options(options, _SPAWN_OPTION_TYPES, "spawn option")
        limits.string(cwd, "the working directory")
        limits.argv(argv)
        limits.spawn_env(env)
        command = " ".join(_text(a) for a in argv)[:4096] or "<login shell>"
        as_root = opts.get("root", False)
        name = await self._authorized_name(
            "run a command as root in" if as_root else "run a command in",
            authz.SPAWN_AS_ROOT if as_root else authz.SPAWN_OWN_BOX, {"command": command})
        own_fds = {target: os.dup(fd) for target, fd in fds.items()}
        tty = opts.get("tty", 0 in own_fds and os.isatty(own_fds[0]))
        session = await self._service.manager.spawn(
            name, caller_uid=caller.uid, caller_sender=caller.sender,
            argv=[_text(a) for a in argv], cwd=_text(cwd) or "/", env=dict(env),
            fds=own_fds, tty=tty, login_shell=opts.get("shell", False), as_root=as_root)
        return self._service.session_opened(session)

    @method()
    async def ExportApp(self, app: "s") -> "as":
        limits.string(app, "the application's name")
        name = await self._authorized_name("export from")
        return (await self._service.manager.export(name, "app", app)).files

    @method()
    async def ExportBin(self, path: "s") -> "as":
        limits.string(path, "the path")
        name = await self._authorized_name("export from")
        return (await self._service.manager.export(name, "bin", path)).files

    @method()
    async def GenerateEntry(self) -> "as":
        name = await self._authorized_name("make a launcher for")
        return (await self._service.manager.export(name, "launcher")).files

    @method()
    async def Unexport(self, export_name: "s"):
        limits.string(export_name, "the export's name")
        name = await self._authorized_name("change the exports of")
        await self._service.manager.unexport(name, export_name)

    @method()
    async def ListExports(self) -> "a(ssas)":
        name = await self._authorized_name("see")
        return [[e.kind, e.name, e.files] for e in self._service.manager.exports.list(name)]

    @method()
    async def GetSettings(self) -> "a{sv}":
        settings = self._service.manager.settings(await self._authorized_name("see"))
        return {key: Variant(_OPTION_TYPES[key], value)
                for key, value in settings.to_json().items()}

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> "s":
        return self.info.name

    @dbus_property(access=PropertyAccess.READ)
    def Id(self) -> "s":
        return self.info.id

    @dbus_property(access=PropertyAccess.READ)
    def Image(self) -> "s":
        return self.info.image

    @dbus_property(access=PropertyAccess.READ)
    def Owner(self) -> "u":
        return self.info.owner

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> "s":
        return self.info.state

    @dbus_property(access=PropertyAccess.READ)
    def Created(self) -> "t":
        return self.info.created

    @dbus_property(access=PropertyAccess.READ)
    def BoxdVersion(self) -> "s":
        return self.info.boxd_version


# BoxInfo field -> Box property, and each property's D-Bus type
_PROPERTY_OF = {"name": "Name", "id": "Id", "image": "Image", "owner": "Owner", "state": "State",
                "created": "Created", "boxd_version": "BoxdVersion"}
_SIGNATURE_OF = {"Name": "s", "Id": "s", "Image": "s", "Owner": "u", "State": "s",
                 "Created": "t", "BoxdVersion": "s"}
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"


def _box_properties(box: BoxInfo) -> dict[str, Variant]:
    return {prop: Variant(_SIGNATURE_OF[prop], getattr(box, field))
            for field, prop in _PROPERTY_OF.items()}


class ManagerInterface(ServiceInterface):
    def __init__(self, service: "BoxdService") -> None:
        super().__init__("io.github.boxd1.Manager")
        self._service = service

    @method()
    async def CreateBox(self, name: "s", image: "s", options: "a{sv}") -> "o":
        caller = current_caller()
        limits.string(name, "the box name")
        limits.string(image, "the image reference")
        await self._service.authz.require(caller, authz.CREATE_BOX,
                                          {"box": name[:256], "image": image[:256]},
                                          "create boxes")
        box = await self._service.manager.create(caller.uid, name, image, unpack_options(options))
        return box_path(box.name)

    @method()
    async def GetBox(self, name: "s") -> "o":
        limits.string(name, "the box name")
        box = self._service.manager.get(name)
        await self._service.authz.require_box(current_caller(), box.owner, box.name,
                                              authz.MANAGE_OWN_BOX, "see")
        return box_path(box.name)

    @method()
    async def ListBoxes(self) -> "a(ossssu)":
        return [[box_path(b.name), b.name, b.id, b.image, b.state, b.owner]
                for b in await self._service.visible_boxes(current_caller())]

    @method()
    async def PullImage(self, reference: "s", options: "a{sv}") -> "o":
        caller = current_caller()
        unpack_options(options, {}, "pull option")
        limits.string(reference, "the image reference")
        validate_image(reference)
        await self._service.authz.require(caller, authz.MANAGE_IMAGES,
                                          {"image": reference[:256]}, "pull images")
        return self._service.job_started(
            self._service.jobs.pull(reference, caller.uid, caller.sender))

    @method()
    async def Apply(self, manifest_text: "s", options: "a{sv}") -> "a(sss)":
        caller = current_caller()
        opts = unpack_options(options, {"dry_run": "b"}, "apply option")
        limits.manifest(manifest_text)
        # Authorized before the manifest is read, dry runs too: reading it is work (and a
        # dry run says which names other users' boxes have).
        await self._service.authz.require(caller, authz.CREATE_BOX, {}, "create boxes")
        await self._service.authz.require(caller, authz.MANAGE_OWN_BOX, {}, "manage boxes")
        entries = await manifest.parse_off_loop(manifest_text)
        plan = await self._service.manager.apply(caller.uid, entries, opts.get("dry_run", False))
        return [[item.box, item.action, item.detail] for item in plan]

    @dbus_property(access=PropertyAccess.READ)
    def ManifestSchema(self) -> "s":
        return manifest.schema_json()

    @method()
    async def BuildDefaultImage(self, options: "a{sv}") -> "o":
        caller = current_caller()
        unpack_options(options, {}, "build option")
        reference = self._service.default_image
        await self._service.authz.require(caller, authz.MANAGE_IMAGES, {"image": reference},
                                          "build images")
        return self._service.job_started(
            self._service.jobs.build_default(reference, caller.uid, caller.sender))

    @method()
    async def RemoveImage(self, reference: "s", force: "b"):
        limits.string(reference, "the image reference")
        await self._service.authz.require(current_caller(), authz.MANAGE_IMAGES,
                                          {"image": reference[:256]}, "remove images")
        await self._service.manager.remove_image(reference, force)

    @method()
    async def ListImages(self) -> "a(sastt)":
        return [[i.id, i.names, i.size, i.created] for i in await self._service.manager.images()]

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> "s":
        return __version__

    @dbus_property(access=PropertyAccess.READ)
    def DefaultImage(self) -> "s":
        return self._service.default_image

    @dbus_property(access=PropertyAccess.READ)
    def PodmanAvailable(self) -> "b":
        return self._service.manager.podman_up


class BoxdService:
    """Owns the exported objects and keeps them in step with the BoxManager (its observer)."""

    def __init__(self, dispatcher: Dispatcher, manager: BoxManager, jobs: JobManager,
                 authz: Authorizer, default_image: str) -> None:
        self.dispatcher = dispatcher
        self.manager = manager
        self.authz = authz
        self.default_image = default_image
        self.manager_interface = ManagerInterface(self)
        self._boxes: dict[str, BoxInterface] = {}
        self._sessions: dict[str, SessionInterface] = {}
        # A finished session's linger timer: cancelled when Wait() collects it sooner, so that
        # the timer does not keep the session (and what it holds) for SESSION_LINGER seconds.
        self._lingering: dict[str, asyncio.TimerHandle] = {}
        self._jobs: dict[str, JobInterface] = {}
        self.jobs = jobs
        jobs.observer = self  # type: ignore[assignment]
        manager.observer = self
        manager.sessions.on_exit = self._session_exited
        dispatcher.export(MANAGER_PATH, self.manager_interface)
        dispatcher.bus.add_message_handler(self._on_name_owner_changed)
        dispatcher.handle("org.freedesktop.DBus.ObjectManager", "GetManagedObjects",
                          self._get_managed_objects)

    async def visible_boxes(self, caller: Caller) -> list[BoxInfo]:
        boxes = self.manager.boxes()
        others = any(b.owner != caller.uid for b in boxes)
        sees_all = others and await self.authz.sees_all(caller)
        return [b for b in boxes if self.authz.sees(caller, b.owner, sees_all)]

    async def _get_managed_objects(self, caller: Caller, msg: Message
                                   ) -> tuple[str, list[Any]]:
        if msg.path != MANAGER_PATH:
            return "a{oa{sa{sv}}}", [{}]
        objects = {box_path(b.name): {"io.github.boxd1.Box": _box_properties(b)}
                   for b in await self.visible_boxes(caller)}
        return "a{oa{sa{sv}}}", [objects]

    def _send_private(self, owner: int, path: str, interface: str, member: str,
                      signature: str, body: list[Any]) -> None:
        """A signal about a box goes to the connections of its owner and of root that have
        talked to boxd, never to the whole bus."""
        for sender, uid in self.dispatcher.known_callers().items():
            if uid in (owner, 0):
                self.dispatcher.bus.send(Message(
                    message_type=MessageType.SIGNAL, destination=sender, path=path,
                    interface=interface, member=member, signature=signature, body=body))

    async def watch_callers(self) -> None:
        """Subscribe to NameOwnerChanged, to end the sessions of callers who leave the bus."""
        await self.dispatcher.bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="AddMatch", signature="s",
            body=["type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',"
                  "arg2=''"]))

    def _on_name_owner_changed(self, msg: Message) -> bool:
        if (msg.message_type == MessageType.SIGNAL and msg.member == "NameOwnerChanged"
                and msg.sender == "org.freedesktop.DBus" and msg.signature == "sss"):
            name, _old, new = msg.body
            if not new and name.startswith(":"):
                self.dispatcher.forget_sender(name)
                for job in self.jobs.of_sender(name):
                    job.cancel()  # nobody is left to use what it pulls
                for session in self.manager.sessions.of_sender(name):
                    # Its fds are now someone else's terminal: nothing more may land there,
                    # podman's own "Error: read unixpacket ..." included.
                    session.caller_gone = True
                    if session.running:
                        asyncio.get_running_loop().create_task(session.hang_up())
                    else:
                        self.session_collected(session)
        return False

    # -- jobs: their signals go to the caller who started them ---------------------------------
    def job_started(self, job: Job) -> str:
        interface = JobInterface(job)
        self._jobs[job.id] = interface
        self.dispatcher.export(JOB_PATH_PREFIX + job.id, interface)
        return JOB_PATH_PREFIX + job.id

    def _job_signal(self, job: Job, member: str, signature: str, body: list[Any]) -> None:
        self.dispatcher.bus.send(Message(
            message_type=MessageType.SIGNAL, destination=job.caller_sender,
            path=JOB_PATH_PREFIX + job.id, interface=JOB_INTERFACE, member=member,
            signature=signature, body=body))

    def progress(self, job: Job, layer: str, info: Layer) -> None:
        self._job_signal(job, "Progress", "sstt", [layer, info.status, info.current, info.total])

    def output(self, job: Job, line: str) -> None:
        self._job_signal(job, "Output", "s", [line])

    def finished(self, job: Job) -> None:
        error = f"io.github.boxd1.Error.{job.error_code}" if job.error_code else ""
        self._job_signal(job, "Finished", "ssss",
                         [job.state, job.image_id, error, job.error_message])
        asyncio.get_running_loop().call_later(SESSION_LINGER, self._job_collected, job)

    def _job_collected(self, job: Job) -> None:
        interface = self._jobs.pop(job.id, None)
        if interface is not None:
            self.dispatcher.unexport(JOB_PATH_PREFIX + job.id, interface)
            self.jobs.forget(job)

    # -- sessions ------------------------------------------------------------------------------
    def session_opened(self, session: Session) -> str:
        interface = SessionInterface(self, session)
        self._sessions[session.id] = interface
        path = SESSION_PATH_PREFIX + session.id
        self.dispatcher.export(path, interface)
        return path

    def _session_exited(self, session: Session) -> None:
        interface = self._sessions.get(session.id)
        if interface is None:
            return
        assert session.exit_status is not None
        # Session state goes to the caller who spawned it, not to everyone on the bus.
        self.dispatcher.bus.send(Message(
            message_type=MessageType.SIGNAL, destination=session.caller_sender,
            path=SESSION_PATH_PREFIX + session.id, interface=SESSION_INTERFACE,
            member="Exited", signature="i", body=[session.exit_status]))
        self._lingering[session.id] = asyncio.get_running_loop().call_later(
            SESSION_LINGER, self.session_collected, session)

    def session_collected(self, session: Session) -> None:
        interface = self._sessions.pop(session.id, None)
        if interface is not None and not session.running:
            self.dispatcher.unexport(SESSION_PATH_PREFIX + session.id, interface)
            self.manager.sessions.forget(session)
            linger = self._lingering.pop(session.id, None)
            if linger is not None:
                linger.cancel()
        elif interface is not None:
            self._sessions[session.id] = interface

    def podman_changed(self, available: bool) -> None:
        self.manager_interface.emit_properties_changed({"PodmanAvailable": available})

    # BoxObserver
    def box_added(self, box: BoxInfo) -> None:
        interface = BoxInterface(self, box)
        self._boxes[box.name] = interface
        path = box_path(box.name)
        self.dispatcher.export(path, interface)
        self._send_private(box.owner, MANAGER_PATH, OBJECT_MANAGER, "InterfacesAdded",
                           "oa{sa{sv}}", [path, {interface.name: _box_properties(box)}])

    def box_changed(self, box: BoxInfo, changed: list[str]) -> None:
        interface = self._boxes.get(box.name)
        if interface is None:
            self.box_added(box)
            return
        interface.info = box
        props = {_PROPERTY_OF[f]: getattr(box, f) for f in changed if f in _PROPERTY_OF}
        if props:
            self._send_private(box.owner, box_path(box.name), "org.freedesktop.DBus.Properties",
                               "PropertiesChanged", "sa{sv}as",
                               [interface.name, {k: Variant(_SIGNATURE_OF[k], v)
                                                 for k, v in props.items()}, []])

    def box_removed(self, box: BoxInfo) -> None:
        interface = self._boxes.pop(box.name, None)
        if interface is not None:
            self.dispatcher.unexport(box_path(box.name), interface)
            self._send_private(box.owner, MANAGER_PATH, OBJECT_MANAGER, "InterfacesRemoved",
                               "oas", [box_path(box.name), [interface.name]])
