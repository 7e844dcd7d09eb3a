"""A session collected by Wait() is let go at once, not kept by its linger timer."""

import asyncio
import gc
import weakref
from types import SimpleNamespace

from boxd.bus.dispatch import Dispatcher
from boxd.bus.service import BoxdService
from boxd.sessions import Session


class _Bus:
    def add_message_handler(self, handler) -> None:
        pass

    def export(self, path, interface) -> None:
        pass

    def unexport(self, path, interface=None) -> None:
        pass

    def send(self, message) -> None:
        pass


class _Sessions:
    def __init__(self) -> None:
        self.on_exit = None
        self.forgotten: list[str] = []

    def forget(self, session: Session) -> None:
        self.forgotten.append(session.id)


def test_collected_session_is_released_before_the_linger_ends():
    async def main() -> None:
        sessions = _Sessions()
        service = BoxdService(Dispatcher(_Bus()), SimpleNamespace(sessions=sessions),
                              SimpleNamespace(), authz=None, default_image="x")
        session = Session(id="1", box="b", caller_uid=1000, caller_sender=":1.5", tty=False)
        service.session_opened(session)
        session.exit_status = 0
        service._session_exited(session)  # starts the linger timer
        service.session_collected(session)  # Wait() answered
        assert sessions.forgotten == ["1"]
        released = weakref.ref(session)
        del session
        gc.collect()
        assert released() is None

    asyncio.run(main())
