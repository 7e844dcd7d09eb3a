"""boxctl: the thin command-line client of boxd, with the verbs Toolbx and Distrobox users know."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    import argparse

from boxd import __version__

# Box names are one namespace on the machine (podman's), so each user's default box has a
# name of its own: USER-box, as Toolbx's default is per user (its podman is the user's own).
DEFAULT_BOX = "USER-box"


def default_box() -> str:
    """The box commands use when none is named: USER-box. A user name a box name cannot hold
    as it is gets cleaned and the uid added, so that two users never share a default."""
    import pwd
    import re

    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = ""
    if re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,58}", user):
        return f"{user}-box"
    cleaned = re.sub(r"[^a-zA-Z0-9_.-]+", "-", user).strip("-_.")[:40] or "user"
    return f"{cleaned}-{uid}-box"


# Hints for the errors people hit most, keyed by the error's short name.
HINTS = {
    "NotFound": "see your boxes with 'boxctl list', or create one with 'boxctl create NAME'",
    "AlreadyExists": "pick another name, or remove the old box with 'boxctl rm NAME'",
    "ImageNotFound": "see 'boxctl images'; pull it with 'boxctl pull', or build the default "
                     "image with 'boxctl image build-default'",
    "RegistryUnreachable": "check the registry's address and your network",
    "AuthRequired": "log in to the registry first (as root: podman login REGISTRY)",
    "DiskFull": "free some space (remove unused images with 'boxctl rmi')",

    "AccessDenied": "ask an administrator, or use a box of your own",
    "Busy": "stop it first with 'boxctl stop NAME', or use 'boxctl rm -f NAME'",
    "LimitReached": "remove a box or end a session; an administrator can raise the limit",
    "InvalidArgument": "see 'boxctl --help' for what each option takes",
    "Timeout": "look at the box's output with 'podman logs NAME' (as root)",
    "StartFailed": "look at the box's output with 'podman logs NAME' (as root)",
}


def build_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="boxctl", description="Create, enter and manage pet containers (boxes) with boxd.")
    parser.add_argument("--version", action="version", version=f"boxctl {__version__}")
    parser.add_argument("--user", action="store_true", default=bool(os.environ.get("BOXD_USER")),
                        help="talk to your own boxd on the session bus (or set BOXD_USER=1)")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True, title="commands")

    create = sub.add_parser("create", help="create a box")
    create.add_argument("name", nargs="?", default=None, metavar="NAME",
                        help=f"the box's name (default: {DEFAULT_BOX})")
    create.add_argument("--image", "-i", default="",
                        help="the image to create it from (default: boxd's default_image)")
    create.add_argument("--home", metavar="DIR", help="home directory to share (default: yours)")
    create.add_argument("--volume", "-v", action="append", default=[], metavar="SRC:DST[:ro]",
                        help="also bind a host path into the box (repeatable)")
    create.add_argument("--env", "-e", action="append", default=[], metavar="NAME=VALUE",
                        help="set an environment variable in the box (repeatable)")
    create.add_argument("--hostname", help="the box's hostname (default: its name)")

    lst = sub.add_parser("list", aliases=["ls"], help="list your boxes")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.add_argument("--quiet", "-q", action="store_true", help="print only the names")

    export = sub.add_parser("export", help="put a box's app or program on the host")
    export.add_argument("name", metavar="NAME", help="the box")
    what = export.add_mutually_exclusive_group(required=True)
    what.add_argument("--app", help="an application (its .desktop name, e.g. gedit)")
    what.add_argument("--bin", help="a program in the box, by absolute path: a wrapper in "
                                    "~/.local/bin")
    what.add_argument("--list", action="store_true", help="what this box has exported")
    what.add_argument("--delete", metavar="EXPORT", help="take an export back")

    entry = sub.add_parser("generate-entry",
                           help="a desktop launcher that opens a terminal in the box")
    entry.add_argument("name", nargs="?", default=None, metavar="NAME",
                       help=f"the box (default: {DEFAULT_BOX})")

    terminal = sub.add_parser("terminal", help="open your terminal emulator in a box")
    terminal.add_argument("name", nargs="?", default=None, metavar="NAME",
                          help=f"the box (default: {DEFAULT_BOX})")

    apply = sub.add_parser("apply", help="make your boxes what a manifest (boxes.yaml) says")
    apply.add_argument("file", metavar="FILE", help="the manifest (see docs/manifest.md)")
    apply.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")

    pull = sub.add_parser("pull", help="pull an image from a registry, with progress")
    pull.add_argument("reference", metavar="IMAGE", help="e.g. registry.example.org/team/dev:1")
    pull.add_argument("--quiet", "-q", action="store_true", help="no progress, for scripts")

    image = sub.add_parser("image", help="build boxd's default image locally (no registry)")
    image.add_argument("task", choices=["build-default"],
                       help="build-default: debootstrap Debian and import it as the default")
    image.add_argument("--quiet", "-q", action="store_true", help="no progress, for scripts")

    rmi = sub.add_parser("rmi", help="remove an image")
    rmi.add_argument("--force", "-f", action="store_true",
                     help="also remove the boxes that use it")
    rmi.add_argument("references", nargs="+", metavar="IMAGE", help="their names or ids")

    images = sub.add_parser("images", help="list the images boxes can be created from")
    images.add_argument("--json", action="store_true", help="print JSON")

    sub.add_parser("doctor", help="check podman, the bus, polkit, images and your boxes")

    completion = sub.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=["bash", "fish", "zsh"], help="the shell")

    quiet_start = "do not show what the box prints while it starts (first-start packages)"
    start = sub.add_parser("start", help="start boxes")
    start.add_argument("names", nargs="*", default=[], metavar="NAME",
                       help=f"boxes to start (default: {DEFAULT_BOX})")
    stop = sub.add_parser("stop", help="stop boxes")
    stop.add_argument("names", nargs="*", default=[], metavar="NAME",
                      help=f"boxes to stop (default: {DEFAULT_BOX})")
    start.add_argument("-q", "--quiet", action="store_true", help=quiet_start)

    enter = sub.add_parser("enter", help="open your login shell in a box")
    enter.add_argument("name", nargs="?", default=None, metavar="NAME",
                       help=f"the box (default: {DEFAULT_BOX})")
    enter.add_argument("-c", "--container", dest="box", metavar="NAME",
                       help="the box, Toolbx style")
    enter.add_argument("-q", "--quiet", action="store_true", help=quiet_start)

    run = sub.add_parser("run", help="run a command in a box and return its exit status",
                         usage="boxctl run [-c NAME] [NAME --] COMMAND [ARG...]",
                         description="Without --, the command starts at the first word that is "
                                     "not an option: `boxctl run ls` runs ls in the default box; "
                                     "`boxctl run dev -- ls` or `boxctl run -c dev ls` in dev.")
    run.add_argument("-c", "--container", dest="box", metavar="NAME",
                     help=f"the box (default: {DEFAULT_BOX})")
    run.add_argument("-T", "--no-tty", action="store_true",
                     help="do not give the command a terminal even if you have one")
    run.add_argument("-q", "--quiet", action="store_true", help=quiet_start)

    rm = sub.add_parser("rm", aliases=["remove"], help="remove boxes")
    rm.add_argument("--force", "-f", action="store_true", help="remove running boxes too")
    rm.add_argument("names", nargs="+", metavar="NAME", help="boxes to remove")
    return parser


def _options(args: argparse.Namespace | SimpleNamespace) -> dict[str, tuple[str, Any]]:
    """CreateBox options as D-Bus variants (signature, value)."""
    options: dict[str, tuple[str, Any]] = {}
    if args.home:
        options["home"] = ("s", os.path.abspath(args.home))
    if args.hostname:
        options["hostname"] = ("s", args.hostname)
    if args.volume:
        options["volumes"] = ("as", [_absolute_volume(v) for v in args.volume])
    if args.env:
        env = {}
        for item in args.env:
            key, sep, value = item.partition("=")
            if not sep:
                raise UsageError(f"--env takes NAME=VALUE, not {item!r}")
            env[key] = value
        options["env"] = ("a{ss}", env)
    return options


def _absolute_volume(spec: str) -> str:
    source, sep, rest = spec.partition(":")
    return (os.path.abspath(source) if source else source) + sep + rest


class UsageError(Exception):
    pass


def _from_registry(image: str) -> bool:
    """An image named with a registry (host/...), other than localhost, can be pulled."""
    host = image.split("/", 1)[0] if "/" in image else ""
    return bool(host) and host != "localhost" and ("." in host or ":" in host)


# Terminal emulators and how each is told what to run; the first one present wins.
TERMINALS = [("xdg-terminal-exec", []), ("ptyxis", ["--"]), ("kgx", ["--"]),
             ("gnome-terminal", ["--"]), ("konsole", ["-e"]), ("xterm", ["-e"])]


def open_terminal(name: str) -> int:
    import shutil

    for program, separator in TERMINALS:
        path = shutil.which(program)
        if path:
            boxctl = shutil.which("boxctl") or sys.argv[0]
            os.execv(path, [program, *separator, boxctl, "enter", name])
    raise UsageError("no terminal emulator found (tried "
                     + ", ".join(p for p, _ in TERMINALS) + "); use 'boxctl enter' in one")


def run(args: argparse.Namespace | SimpleNamespace) -> int:
    if args.verb == "completion":
        from boxd.completion import script

        print(script(args.shell), end="")
        return 0
    if args.verb == "terminal":
        return open_terminal(args.name)
    from boxd.client import BoxdClient, CallError

    if args.verb == "doctor":
        from boxd.doctor import report, run_checks

        return report(run_checks(lambda: BoxdClient.connect(args.user), args.user))

    client = BoxdClient.connect(args.user)
    try:
        if args.verb == "create":
            body = (args.name, args.image, _options(args))
            try:
                client.manager("CreateBox", "ssa{sv}", body)
            except CallError as exc:
                if exc.short_name != "ImageNotFound" or not _from_registry(args.image):
                    raise
                from boxd.pull import pull

                print(f"Pulling {args.image} ...", file=sys.stderr)
                pull(client, args.image)
                client.manager("CreateBox", "ssa{sv}", body)
            named = "" if getattr(args, "implicit_box", None) else f" {args.name}"
            enter = f"boxctl enter{named}"
            print(f"Created box {args.name}. Enter it with: {enter}")
        elif args.verb == "export":
            if args.list:
                for kind, export_name, files in client.box(args.name, "ListExports")[0]:
                    print(f"{kind}\t{export_name}\t{' '.join(files)}")
            elif args.delete:
                client.box(args.name, "Unexport", "s", (args.delete,))
            else:
                member, target = ("ExportApp", args.app) if args.app else ("ExportBin", args.bin)
                files = client.box(args.name, member, "s", (target,))[0]
                print(f"Exported {target} from {args.name}: {files[0]}")
        elif args.verb == "generate-entry":
            print(f"Wrote {client.box(args.name, 'GenerateEntry')[0][0]}")
        elif args.verb == "apply":
            try:
                with open(args.file, encoding="utf-8") as handle:
                    text = handle.read()
            except OSError as exc:
                raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
            try:
                plan = client.manager("Apply", "sa{sv}",
                                      (text, {"dry_run": ("b", args.dry_run)}))[0]
            except CallError as exc:
                exc.message = exc.message.replace("manifest line", f"{args.file} line")
                raise
            verbs = {"create": "create", "update": "update in place", "recreate": "re-create",
                     "unchanged": "unchanged"}
            done = {"create": "created", "update": "updated in place", "recreate": "re-created",
                    "unchanged": "unchanged"}
            for box, action, detail in plan:
                said = (verbs if args.dry_run else done)[action]
                print(f"{box}: {'would ' if args.dry_run and action != 'unchanged' else ''}"
                      f"{said}" + (f" ({detail})" if detail else ""))
        elif args.verb == "pull":
            from boxd.pull import pull

            image_id = pull(client, args.reference, args.quiet)
            if not args.quiet:
                print(f"Pulled {args.reference} ({image_id.removeprefix('sha256:')[:12]})")
        elif args.verb == "image":
            from boxd.pull import build_default

            image_id = build_default(client, args.quiet)
            if not args.quiet:
                print(f"Built the default image ({image_id.removeprefix('sha256:')[:12]})")
        elif args.verb == "rmi":
            for reference in args.references:
                client.manager("RemoveImage", "sb", (reference, args.force))
        elif args.verb in ("list", "ls"):
            boxes = client.manager("ListBoxes")[0]
            if args.quiet:
                print("\n".join(b[1] for b in boxes))
            else:
                _print_list(boxes, args.json)
        elif args.verb == "images":
            _print_images(client.manager("ListImages")[0], args.json)
        elif args.verb == "start":
            from boxd.pull import start_box

            for name in args.names:
                start_box(client, name, args.quiet)
        elif args.verb == "stop":
            for name in args.names:
                client.box(name, "Stop")
        elif args.verb in ("enter", "run"):
            from boxd.attach import run_in_box

            name = args.box or getattr(args, "name", None)
            if not name:
                name = args.implicit_box = default_box()
            return run_in_box(client, name, getattr(args, "command", []),
                              allow_tty=not getattr(args, "no_tty", False), quiet=args.quiet)
        elif args.verb in ("rm", "remove"):
            for name in args.names:
                client.box(name, "Remove", "b", (args.force,))
        return 0
    finally:
        client.close()


def _print_list(boxes: list[list[Any]], as_json: bool) -> None:
    if not boxes and not as_json:
        return  # as Toolbx: no header over nothing
    rows = [{"name": b[1], "id": b[2][:12], "image": b[3], "state": b[4], "owner": b[5]}
            for b in boxes]
    _print_table(rows, {"name": "NAME", "id": "ID", "image": "IMAGE", "state": "STATE",
                        "owner": "OWNER"}, as_json)


def _print_images(images: list[list[Any]], as_json: bool) -> None:
    rows = [{"name": ", ".join(i[1]) or "<none>", "id": i[0].removeprefix("sha256:")[:12],
             "size": f"{i[2] / 1e6:.0f} MB", "created": time.strftime("%Y-%m-%d",
                                                                     time.localtime(i[3]))}
            for i in images]
    _print_table(rows, {"name": "IMAGE", "id": "ID", "size": "SIZE", "created": "CREATED"},
                 as_json)


def _print_table(rows: list[dict[str, Any]], header: dict[str, str], as_json: bool) -> None:
    if as_json:
        import json

        print(json.dumps(rows, indent=2))
        return
    widths = {k: max(len(str(r[k])) for r in [header, *rows]) for k in header}
    for row in [header, *rows]:
        print("  ".join(str(row[k]).ljust(widths[k]) for k in header).rstrip())


# What `run` and `enter` take in their plain forms (see plain_session).
_SESSION_FLAGS = {"-T": "no_tty", "--no-tty": "no_tty", "-q": "quiet", "--quiet": "quiet"}


def plain_session(argv: list[str]) -> SimpleNamespace | None:
    """`boxctl [--user] run|enter ...` with only the flags those take, read without argparse:
    importing and building the parser is a fifth of a warm run's start-up. Anything else (help,
    a typo, another verb) returns None and goes to argparse, which says what is wrong."""
    user = bool(os.environ.get("BOXD_USER"))
    if argv[:1] == ["--user"]:
        user, argv = True, argv[1:]
    if not argv or argv[0] not in ("run", "enter"):
        return None
    verb, rest = argv[0], argv[1:]
    args = SimpleNamespace(verb=verb, user=user, box=None, no_tty=False, quiet=False)
    if verb == "run" and "--" in rest:
        options, command = rest[:rest.index("--")], rest[rest.index("--") + 1:]
    else:
        options, command = rest, []
    toolbx_style = verb == "run" and "--" not in rest
    words = []
    i = 0
    while i < len(options):
        word = options[i]
        if word in ("-c", "--container") and i + 1 < len(options) \
                and not options[i + 1].startswith("-"):
            args.box = options[i + 1]
            i += 2
            continue
        if word in _SESSION_FLAGS and not (verb == "enter" and word in ("-T", "--no-tty")):
            setattr(args, _SESSION_FLAGS[word], True)
        elif word.startswith("-"):
            return None
        elif toolbx_style:
            command = options[i:]  # the command starts at the first word that is no option
            break
        else:
            words.append(word)
        i += 1
    if verb == "enter":
        if len(words) > 1:
            return None
        args.name = words[0] if words else None
        return args
    if len(words) > 1 or not command:
        return None
    args.box = args.box or (words[0] if words else None)
    args.command = command
    return args


def parse(argv: list[str]) -> argparse.Namespace | SimpleNamespace:
    return plain_session(argv) or parse_with_argparse(argv)


def _with_default_box(args: argparse.Namespace) -> argparse.Namespace:
    """Name the default box where a command that can go without one got none."""
    if args.verb in ("create", "generate-entry", "terminal") and args.name is None:
        args.name = args.implicit_box = default_box()
    elif args.verb in ("start", "stop") and not args.names:
        args.implicit_box = default_box()
        args.names = [args.implicit_box]
    return args


# What bare `boxctl` lists, as Toolbx lists its common commands.
COMMON_COMMANDS = [("create", "create a box"), ("enter", "open your shell in a box"),
                   ("list", "list your boxes"), ("rm", "remove boxes"),
                   ("run", "run a command in a box")]
GLOBAL_OPTIONS = {"--version", "--user", "-h", "--help"}


def parse_with_argparse(argv: list[str]) -> argparse.Namespace:
    """argparse, plus run's command: everything after `--`, or after the options (Toolbx style)."""
    parser = build_parser()
    at = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    unknown = [a for a in argv[:at] if a.split("=")[0] not in GLOBAL_OPTIONS]
    if unknown:  # else argparse would only say that COMMAND is missing
        parser.error(f"unrecognized option '{unknown[0]}'")
    if at == len(argv) and not set(argv) & {"--version", "-h", "--help"}:
        lines = ["boxctl: missing command", "These are some common commands:"]
        lines += [f"  {verb:<8}{what}" for verb, what in COMMON_COMMANDS]
        lines.append("Run 'boxctl --help' for all of them.")
        print("\n".join(lines), file=sys.stderr)
        sys.exit(2)
    if argv[at:at + 1] != ["run"]:  # the verb is the first word; `enter run` enters box run
        return _with_default_box(parser.parse_args(argv))
    head, rest = argv[:at + 1], argv[at + 1:]
    if "--" in rest:
        split = rest.index("--")
        options, command = rest[:split], rest[split + 1:]
    else:
        split = next((i for i, a in enumerate(rest)
                      if not a.startswith("-") and (i == 0 or rest[i - 1] not in ("-c",
                                                                              "--container"))),
                     len(rest))
        options, command = rest[:split], rest[split:]
    positional = [a for i, a in enumerate(options) if not a.startswith("-")
                  and (i == 0 or options[i - 1] not in ("-c", "--container"))]
    args = parser.parse_args(head + [a for a in options if a not in positional])
    if len(positional) > 1:
        parser.error("run takes at most one box name before --")
    if not command:
        parser.error("run needs a command, e.g. boxctl run -- ls -la")
    args.box = args.box or (positional[0] if positional else None)
    args.command = command
    return args


def main(argv: list[str] | None = None) -> None:
    closed = _guard_stdio()
    args = parse(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    try:
        status = run(args)
        if 1 not in closed:
            sys.stdout.flush()  # here, where a reader gone away can still end us quietly
    except UsageError as exc:
        _say(f"boxctl: {exc}")
        status = 2
    except KeyboardInterrupt:
        status = 130
    except BrokenPipeError:
        _die_of_sigpipe()  # the bus's own errors come as Unreachable: this is our output
    except Exception as exc:  # one clear line, never a traceback
        status = _report(exc, getattr(args, "implicit_box", None))
    if os.environ.get("BOXCTL_TIMING"):
        _say(f"boxctl: {time.monotonic() - started:.3f} s")
    sys.exit(status)


def _guard_stdio() -> set[int]:
    """Put /dev/null where stdin, stdout or stderr came closed (`boxctl ... >&-`): else the bus
    socket would take the lowest free fd and a command in a box would be handed it as its
    stdout. What it writes there is lost, as a shell's command loses it."""
    closed = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
    for fd in sorted(closed):
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        stream = open(fd, "r" if fd == 0 else "w", closefd=False)
        setattr(sys, ("stdin", "stdout", "stderr")[fd], stream)
    return closed


def _die_of_sigpipe() -> NoReturn:
    """Whoever read our output left (`boxctl list | head -1`): end as coreutils do, by SIGPIPE,
    with nothing said (a shell sees status 141)."""
    import signal

    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # nothing left to flush at exit
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    sys.exit(141)  # not reached


def _say(line: str) -> None:
    """One line on stderr, if anyone still reads it."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


def _report(exc: Exception, implicit_box: str | None = None) -> int:
    """Print `exc` as one line with a hint; `implicit_box` is the default box the command used
    because none was named."""
    from boxd import faults
    from boxd.client import CallError, Unreachable

    if isinstance(exc, Unreachable):
        _say("boxctl: " + faults.unreachable_line(exc.kind, exc.message, exc.bus))
        return 1
    if isinstance(exc, CallError):
        hint = HINTS.get(exc.short_name)
        if exc.short_name == "PodmanUnavailable":
            hint = faults.start_podman()
        if exc.short_name == "NotFound" and implicit_box:
            hint = (f"with no box named, boxctl uses your default box, {implicit_box}: create "
                    "it with 'boxctl create', or name one of 'boxctl list'")
        _say(f"boxctl: {exc.message or exc.name}" + (f" (hint: {hint})" if hint else ""))
        return 1
    if isinstance(exc, OSError):
        _say(f"boxctl: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
        return 1
    _say(f"boxctl: unexpected error: {exc}")
    return 1


if __name__ == "__main__":
    main()
