"""The io.github.boxd1 objects: a Manager and one Box object per box. Thin: parse, authorize,
delegate to the BoxManager, and mirror its cache as D-Bus objects and property changes."""

from typing import Any

from dbus_next import Message, Variant
from dbus_next.service import PropertyAccess, ServiceInterface, dbus_property, method

from boxd import __version__
from boxd.authz import Authorizer
from boxd.bus.dispatch import Dispatcher, current_caller
from boxd.errors import InvalidArgument
from boxd.manager import BoxInfo, BoxManager

BUS_NAME = "io.github.boxd1"
MANAGER_PATH = "/io/github/boxd1"
BOX_PATH_PREFIX = "/io/github/boxd1/box/"

# CreateBox / Configure options and the D-Bus type each must have.
_OPTION_TYPES = {"home": "s", "hostname": "s", "volumes": "as", "env": "a{ss}"}


def escape_path_label(text: str) -> str:
    """Escape a name into one object-path element the way systemd does (_xx for other bytes)."""
    if not text:
        return "_"
    out = []
    for i, byte in enumerate(text.encode()):
        char = chr(byte)
        if (char.isascii() and char.isalnum() and not (i == 0 and char.isdigit())):
            out.append(char)
        else:
            out.append(f"_{byte:02x}")
    return "".join(out)


def box_path(name: str) -> str:
    return BOX_PATH_PREFIX + escape_path_label(name)


def unpack_options(options: dict[str, Variant]) -> dict[str, Any]:
    values = {}
    for key, variant in options.items():
        expected = _OPTION_TYPES.get(key)
        if expected is None:
            raise InvalidArgument(f"unknown option {key!r}: known options are "
                                  + ", ".join(sorted(_OPTION_TYPES)))
        if variant.signature != expected:
            raise InvalidArgument(f"option {key!r} must be of type {expected}, "
                                  f"not {variant.signature}")
        values[key] = variant.value
    return values


class BoxInterface(ServiceInterface):
    def __init__(self, service: "BoxdService", info: BoxInfo) -> None:
        super().__init__("io.github.boxd1.Box")
        self._service = service
        self.info = info

    def _authorized_name(self) -> str:
        self._service.authz.check_box(current_caller().uid, self.info.owner, self.info.name)
        return self.info.name

    @method()
    async def Start(self):
        await self._service.manager.start(self._authorized_name())

    @method()
    async def Stop(self):
        await self._service.manager.stop(self._authorized_name())

    @method()
    async def Remove(self, force: "b"):
        await self._service.manager.remove(self._authorized_name(), force)

    @method()
    async def Configure(self, changes: "a{sv}"):
        await self._service.manager.configure(self._authorized_name(), unpack_options(changes))

    @method()
    async def GetSettings(self) -> "a{sv}":
        settings = self._service.manager.settings(self._authorized_name())
        return {"home": Variant("s", settings.home), "hostname": Variant("s", settings.hostname),
                "volumes": Variant("as", [str(v) for v in settings.volumes]),
                "env": Variant("a{ss}", dict(settings.env))}

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


# BoxInfo field -> Box property
_PROPERTY_OF = {"name": "Name", "id": "Id", "image": "Image", "owner": "Owner", "state": "State",
                "created": "Created", "boxd_version": "BoxdVersion"}


class ManagerInterface(ServiceInterface):
    def __init__(self, service: "BoxdService") -> None:
        super().__init__("io.github.boxd1.Manager")
        self._service = service

    @method()
    async def CreateBox(self, name: "s", image: "s", options: "a{sv}") -> "o":
        caller = current_caller()
        self._service.authz.check_create(caller.uid)
        box = await self._service.manager.create(caller.uid, name, image, unpack_options(options))
        return box_path(box.name)

    @method()
    async def GetBox(self, name: "s") -> "o":
        box = self._service.manager.get(name)
        self._service.authz.check_box(current_caller().uid, box.owner, box.name)
        return box_path(box.name)

    @method()
    async def ListBoxes(self) -> "a(ossssu)":
        uid = current_caller().uid
        return [[box_path(b.name), b.name, b.id, b.image, b.state, b.owner]
                for b in self._service.manager.boxes()
                if self._service.authz.can_see(uid, b.owner)]

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

    def __init__(self, dispatcher: Dispatcher, manager: BoxManager, authz: Authorizer,
                 default_image: str) -> None:
        self.dispatcher = dispatcher
        self.manager = manager
        self.authz = authz
        self.default_image = default_image
        self.manager_interface = ManagerInterface(self)
        self._boxes: dict[str, BoxInterface] = {}
        manager.observer = self
        dispatcher.export(MANAGER_PATH, self.manager_interface)

    def podman_changed(self, available: bool) -> None:
        self.manager_interface.emit_properties_changed({"PodmanAvailable": available})

    def _object_manager_signal(self, member: str, signature: str, body: list[Any]) -> None:
        # dbus-next sends InterfacesAdded/Removed from the object's own path; the spec (and
        # GDBus/sd-bus clients) expect them from the ObjectManager's path, so send those here.
        self.dispatcher.bus.send(Message.new_signal(
            MANAGER_PATH, "org.freedesktop.DBus.ObjectManager", member, signature, body))

    # BoxObserver
    def box_added(self, box: BoxInfo) -> None:
        interface = BoxInterface(self, box)
        self._boxes[box.name] = interface
        path = box_path(box.name)
        self.dispatcher.export(path, interface)
        props = {"Name": Variant("s", box.name), "Id": Variant("s", box.id),
                 "Image": Variant("s", box.image), "Owner": Variant("u", box.owner),
                 "State": Variant("s", box.state), "Created": Variant("t", box.created),
                 "BoxdVersion": Variant("s", box.boxd_version)}
        self._object_manager_signal("InterfacesAdded", "oa{sa{sv}}",
                                    [path, {interface.name: props}])

    def box_changed(self, box: BoxInfo, changed: list[str]) -> None:
        interface = self._boxes.get(box.name)
        if interface is None:
            self.box_added(box)
            return
        interface.info = box
        props = {_PROPERTY_OF[f]: getattr(box, f) for f in changed if f in _PROPERTY_OF}
        if props:
            interface.emit_properties_changed(props)

    def box_removed(self, box: BoxInfo) -> None:
        interface = self._boxes.pop(box.name, None)
        if interface is not None:
            self.dispatcher.unexport(box_path(box.name), interface)
            self._object_manager_signal("InterfacesRemoved", "oas",
                                        [box_path(box.name), [interface.name]])
