"""The boxd daemon: connects to the bus and to podman, serves io.github.boxd1 until told to stop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from dbus_next import BusType, Message, NameFlag, RequestNameReply

from boxd import __version__, config, errors, log, memory, podman, subids
from boxd.authz import Authorizer
from boxd.bus.dispatch import Dispatcher
from boxd.bus.service import BoxdService
from boxd.bus.wire import BoxdBus
from boxd.jobs import JobManager
from boxd.loopwatch import LoopWatch
from boxd.manager import BoxManager
from boxd.model import Owner
from boxd.paths import BUS_NAME
from boxd.polkit import Polkit
from boxd.state import StateStore

_log = log.get("boxd.daemon")
# How long a starting daemon waits for podman before it takes its bus name (see serve).
LEFTOVER_SCAN_WAIT = 10.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="boxd", description="Serve pet containers (boxes) over D-Bus, driving podman.")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="YAML config file (default /etc/boxd/boxd.yaml)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--system", dest="mode", action="store_const", const="system",
                      help="serve on the system bus (the default)")
    mode.add_argument("--session", dest="mode", action="store_const", const="session",
                      help="serve the calling user on the session bus, with rootless podman")
    parser.add_argument("--bus-address", metavar="ADDRESS",
                        help="connect to this D-Bus address instead")
    parser.add_argument("--register-subids", action="store_true",
                        help="write the host id ranges of box owners to /etc/subuid and "
                             "/etc/subgid, then exit (run as root before the daemon)")
    parser.add_argument("--version", action="version", version=f"boxd {__version__}")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def effective_config(args: argparse.Namespace) -> config.Config:
    cfg = config.load(args.config)
    overrides = {}
    if args.mode:
        overrides["mode"] = args.mode
    if args.bus_address:
        overrides["bus_address"] = args.bus_address
    if overrides.get("mode") == "session" and args.config is None:
        runtime = os.environ.get("XDG_RUNTIME_DIR", f"/run/user/{os.getuid()}")
        state = os.environ.get("XDG_STATE_HOME", os.path.expanduser("~/.local/state"))
        overrides.setdefault("podman_socket", f"{runtime}/podman/podman.sock")
        overrides.setdefault("state_dir", f"{state}/boxd")
    if overrides:
        data = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
        cfg = config.Config(**{**data, **overrides})
    return cfg


async def serve(cfg: config.Config) -> int:
    if cfg.bus_address:
        bus = BoxdBus(bus_address=cfg.bus_address, negotiate_unix_fd=True)
    else:
        bus_type = BusType.SYSTEM if cfg.mode == "system" else BusType.SESSION
        bus = BoxdBus(bus_type=bus_type, negotiate_unix_fd=True)
    try:
        await bus.connect()
    except OSError as exc:
        _log.error("bus_unreachable", error=str(exc))
        return 1
    client = podman.PodmanClient(cfg.podman_socket, timeout=cfg.podman_timeout)
    manager = BoxManager(cfg, client)
    policy = Polkit(bus) if cfg.mode == "system" else None
    jobs = JobManager(client, Path(cfg.state_dir) / "work")
    service = BoxdService(Dispatcher(bus), manager, jobs,
                          Authorizer(cfg.mode, os.getuid(), policy), cfg.default_image)
    await service.watch_callers()
    follower = asyncio.create_task(manager.run(service.podman_changed))
    # What a previous boxd left in boxes is found before anyone can call: no new session can
    # be taken for a leftover. If podman is down or slow, that happens once it answers.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(LEFTOVER_SCAN_WAIT):
            await manager.first_contact.wait()
    reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
    if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
        _log.error("bus_name_taken", name=BUS_NAME, reply=reply.name)
        follower.cancel()
        return 1
    _log.info("ready", name=BUS_NAME, mode=cfg.mode, podman=cfg.podman_socket,
              version=__version__)
    watch = LoopWatch()
    watch.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    disconnected = asyncio.create_task(bus.wait_for_disconnect())
    await asyncio.wait([asyncio.create_task(stop.wait()), disconnected, follower],
                       return_when=asyncio.FIRST_COMPLETED)
    watch.stop()
    crashed = follower.done()  # it retries podman's own failures for ever: its end is a bug
    crash = follower.exception() if crashed and not follower.cancelled() else None
    follower.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await follower
    manager.sessions.warm.close()  # the launchers waiting in boxes leave
    # Sessions end with the daemon, hung up like closed terminals, and their callers are told
    # (Exited, and a line on their stderr) while the bus is still there.
    await manager.sessions.end_all("boxd is stopping")
    if not disconnected.done():
        await _flush(bus)
    await asyncio.sleep(0)
    await client.aclose()
    if crashed:
        # Exit non-zero (Restart=on-failure restarts it), with the traceback in the log.
        _log.error("crashed", exc_info=crash or RuntimeError("the podman follower ended"))
        bus.disconnect()
        return 1
    if disconnected.done():
        _log.error("bus_lost")
        return 1
    bus.disconnect()
    _log.info("stopped")
    return 0


async def _flush(bus: BoxdBus) -> None:
    """Wait until what was sent (Exited signals, Wait replies) has reached the bus: it handles
    one connection's messages in order, so a Ping's answer means they are through."""
    await asyncio.sleep(0)  # let the Wait calls that just ended send their replies
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2):
            await bus.call(Message(destination="org.freedesktop.DBus",
                                   path="/org/freedesktop/DBus",
                                   interface="org.freedesktop.DBus.Peer", member="Ping"))


def register_subids(cfg: config.Config) -> int:
    """`boxd --register-subids`: the unit's ExecStartPre=+ (root, outside the sandbox)."""
    if not cfg.userns or cfg.mode != "system":
        return 0
    store = StateStore(cfg.state_dir)
    store.prepare()
    allocator = subids.SubidAllocator(store.subids_path, cfg.subid_base, cfg.subid_size)
    try:
        added, problems = subids.register_all(allocator, Owner.lookup)
    except OSError as exc:
        print(f"boxd: cannot register subordinate ids: {exc}", file=sys.stderr)
        return 1
    for line in added:
        print(f"boxd: registered {line}")
    for problem in problems:
        # Not fatal for everyone: that owner's boxes are refused at start, with this reason.
        print(f"boxd: warning: {problem}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        cfg = effective_config(args)
    except errors.ConfigError as exc:
        print(f"boxd: {exc.message}", file=sys.stderr)
        sys.exit(2)
    if args.register_subids:
        sys.exit(register_subids(cfg))
    log.configure(cfg.log_format, cfg.log_level)
    memory.configure()
    if cfg.userns and cfg.mode == "system" and subids.in_sssd_range(cfg.subid_base,
                                                                      cfg.subid_size):
        _log.warning("subid_base_in_sssd_range", subid_base=cfg.subid_base,
                     hint="SSSD maps directory users to 200000-2000200000 by default; "
                          "a box's root could be such a user (see boxd.yaml's subid_base)")
    sys.exit(asyncio.run(serve(cfg)))


if __name__ == "__main__":
    main()
