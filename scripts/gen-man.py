#!/usr/bin/env python3
"""Write the man pages docs/man/boxctl.1 and docs/man/boxd.8 with argparse-manpage.

The options and commands come from the argparse parsers (boxd.cli.build_parser and
boxd.daemon.build_parser), the configuration keys from docs/config.md, the polkit actions from
polkit/io.github.boxd1.policy and the environment boxctl passes into boxes from boxd.attach; the
other sections are written here. Edit those sources (or this script), not the pages.

    /opt/boxd-venv/bin/python scripts/gen-man.py            rewrite docs/man/
    /opt/boxd-venv/bin/python scripts/gen-man.py --check    exit 1 if a page is out of date
    /opt/boxd-venv/bin/python scripts/gen-man.py --out DIR  write the pages into DIR instead

It needs boxd's dependencies and argparse-manpage (the "test" extras), and imports boxd from
this checkout, not from the installed package.
"""

from __future__ import annotations

import argparse
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "man"

# argparse wraps usage lines to the terminal's width: make the pages the same everywhere.
os.environ["COLUMNS"] = "72"  # 70 columns: fits the indented text of an 80-column man
sys.path.insert(0, str(REPO))

try:
    from argparse_manpage.manpage import Manpage
except ImportError:
    raise SystemExit("gen-man: needs argparse-manpage: pip install 'argparse-manpage>=4.8,<5' "
                     "(it is in boxd's test extras)") from None

from boxd import __version__, attach, cli, daemon  # noqa: E402

# --- roff helpers ---------------------------------------------------------------------------


def esc(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped, no line read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line
                     for line in text.split("\n"))


def b(text: str) -> str:
    return f"\\fB\\%{esc(text)}\\fR"  # \% keeps a name whole


def md(text: str) -> str:
    """One line of the docs' Markdown as roff: `code` in bold, the rest plain."""
    parts = text.split("`")
    return "".join(b(part) if n % 2 else esc(part) for n, part in enumerate(parts))


def para(*sentences: str) -> list[str]:
    return [".PP", *sentences]


def item(tag: str, *text: str) -> list[str]:
    return [".TP", tag, *text]


def example(text: str, *commands: str) -> list[str]:
    return [".PP", esc(text), ".PP", ".RS 4", ".nf", *(esc(c) for c in commands), ".fi", ".RE"]


def synopsis(words: list[str]) -> str:
    """A usage line as roff: bracketed groups such as [--config FILE] never broken apart."""
    out, depth = [], 0
    for char in " ".join(words):
        depth += (char in "[(") - (char in "])")
        out.append("\x00" if char == " " and depth else char)
    return esc("".join(out)).replace("\x00", "\\~")


def see_also(*pages: str) -> str:
    refs = []
    for page in pages:
        name, section = page.rstrip(")").split("(")
        refs.append(f".BR \\%{esc(name)} ({section})")
    return ",\n".join(refs)


def docs_list() -> list[str]:
    """The docs in the source tree, each with its title (its first heading)."""
    lines = [".PP", "In boxd's source tree:"]
    for doc in ["README.md", *sorted(p.relative_to(REPO).as_posix()
                                     for p in (REPO / "docs").glob("*.md"))]:
        first = (REPO / doc).read_text(encoding="utf-8").split("\n", 1)[0].lstrip("# ")
        if doc == "README.md":
            first = "what boxd is, how to set it up, a tour, troubleshooting"
        lines += item(b(doc), md(first))
    return lines


def manpage(parser: argparse.ArgumentParser, section: int, manual: str, name_line: str,
            description: list[str], sections: list[tuple[str, list[str]]]) -> str:
    # The parser's own description opens DESCRIPTION, followed by the longer text here.
    lead = parser.description
    parser.description = None
    page = Manpage(parser, format="single-commands-section")
    # Names and paths read better unhyphenated and the text ragged-right; the usage as argparse
    # writes it, with hyphens escaped (argparse-manpage leaves them as they are).
    page.add_section("synopsis", "=", "\n".join([".nh", ".ad l", b(page.synopsis[0]),
                                                 synopsis(page.synopsis[1:])]))
    page.add_section("description", "=", "\n".join([esc(lead or ""), *description]))
    for heading, lines in sections:
        page.add_section(heading, ">", "\n".join(lines))
    page.description = name_line
    page.section = section
    page.manual = manual
    page.source = f"boxd {__version__}"
    page.date = ""  # no build date: the pages are compared with their sources by a test
    return str(page)


def _commands_after_options(parser: argparse.ArgumentParser) -> None:
    """List the commands in their own COMMANDS section, after the global OPTIONS.

    Without a title, argparse keeps the subcommands with the positional arguments; with
    add_subparsers(title="commands") this finds them already in place.
    """
    groups = parser._action_groups  # argparse-manpage walks these too
    for group in list(groups):
        actions = group._group_actions
        if len(actions) == 1 and isinstance(actions[0], argparse._SubParsersAction):
            if group.title == "positional arguments":
                group.title = "commands"
            groups.remove(group)
            groups.append(group)


# --- boxctl(1) --------------------------------------------------------------------------------


def boxctl_page() -> str:
    parser = cli.build_parser()
    _commands_after_options(parser)
    passed = sorted(attach.PASSED_ENV)
    prefixes = " or ".join(b(p) for p in attach.PASSED_PREFIXES)
    terminals = ", ".join(b(name) for name, _ in cli.TERMINALS)
    description = [
        *para(f"{b('boxctl')} is the command-line client of",
              ".BR boxd (8).",
              "A box is a long-lived, mutable container that belongs to one user: it runs as",
              "that user's uid, shares their home directory and terminal, sees the host's file",
              f"system under {b('/run/host')} and follows the host's DNS and time zone.",
              f"What is installed in a box (where {b('sudo')} needs no password) stays in the box,",
              "and root in a box is not root on the host."),
        *para("boxctl keeps no state of its own: every command is a call to boxd's D\\-Bus API",
              f"({b('io.github.boxd1')}) on the system bus or, with {b('--user')}, on your session",
              f"bus, where your own {b('boxd --session')} serves you with rootless podman.",
              "boxd decides who may do what, through",
              ".BR polkit (8):",
              "by default you may create and use boxes of your own, and you cannot see anyone",
              "else's."),
        *para(f"Commands that take a box name use the box named {b(cli.DEFAULT_BOX)} when none",
              "is given, USER being your user name (box names are shared by all users of the",
              "machine, so each has a default box of their own).",
              f"{b('enter')} opens your login shell in a box and {b('run')} runs a command there;",
              "both start a stopped box first, run in your current directory",
              "when the box has it (else in your home directory), use your terminal and",
              "standard input and output, and pass on part of your environment (see",
              f"{b('ENVIRONMENT')}). The command of {b('run')} is everything after {b('--')} or,",
              "without it, everything from the first argument that is not an option:",
              f"{b('boxctl run -c dev ls -l')} and {b('boxctl run dev -- ls -l')} are the same."),
    ]
    exit_status = [
        *para(f"{b('run')} and {b('enter')} exit with the status of the command or shell in the",
              "box, whatever it is: for example 127 when the command is not found in the box and",
              "126 when it cannot be executed; 255 means boxd could not learn how it ended.",
              "Before the command starts, and for every other command:"),
        *item(b("0"), "Success."),
        *item(b("1"),
              "boxd refused or failed the request, or could not be reached; one line on standard",
              f"error says why, mostly with a hint. {b('doctor')}: a check failed."),
        *item(b("2"), "Wrong usage: an unknown command or option, or a missing argument."),
        *item(b("130"), "boxctl was interrupted (SIGINT) outside a command in a box."),
        *item(b("141"),
              "Whoever read its output went away (a pipe into",
              f"{b('head')}): boxctl ends by SIGPIPE, saying nothing, as other tools do."),
    ]
    environment = [
        *item(b("BOXD_USER"), f"If set and not empty, the same as {b('--user')}."),
        *item(b("BOXD_BUS_ADDRESS"),
              "A D\\-Bus address to reach boxd at instead of the system or session bus, for",
              f"example {b('unix:path=/run/boxd-test/bus')}; for tests and unusual setups."),
        *item(f"{b('DBUS_SYSTEM_BUS_ADDRESS')}, {b('DBUS_SESSION_BUS_ADDRESS')}",
              "Where the system and the session bus are, as for every D\\-Bus client."),
        *item(b("BOXCTL_TIMEOUT"),
              "How many seconds boxd may stay silent before boxctl gives up on it (30 by",
              "default; 0: wait as long as it takes). boxctl asks a quiet boxd whether it is",
              "alive, so a call, a start or a pull that takes longer while boxd answers is not",
              "cut short; a boxd that leaves the bus during a start, pull or build ends the",
              "command at once."),
        *item(b("BOXCTL_TIMING"),
              "If set and not empty, boxctl says on standard error how long the command took."),
        *item(b("PATH"), f"{b('terminal')} opens the first of {terminals} that it finds."),
        *para(f"{b('run')} and {b('enter')} pass these variables on into the box when they are",
              f"set: {', '.join(b(name) for name in passed)}, and every variable whose name",
              f"starts with {prefixes}. The rest of the command's environment comes from the",
              f"box (and from the box's {b('--env')} settings)."),
    ]
    files = [
        *item(b("~/.local/share/applications/boxd-BOX-APP.desktop"),
              f"A box's application in your menus, written by {b('export --app')}; its icons go",
              f"to {b('~/.local/share/icons/')}."),
        *item(b("~/.local/bin/PROGRAM"),
              f"A wrapper that runs a box's program, written by {b('export --bin')}."),
        *item(b("~/.local/share/applications/boxd-BOX.desktop"),
              f"A launcher for a terminal in the box, written by {b('generate-entry')}."),
        *para("boxd writes these as you and removes them with the box."),
        *item(b("boxes.yaml"),
              f"A manifest of boxes for {b('apply')} (any name; see docs/manifest.md)."),
        *item(b("/usr/share/polkit-1/rules.d/50-io.github.boxd1.rules"),
              "Who may use boxd without being asked for a password; see",
              ".BR boxd (8)."),
    ]
    examples = [
        *example("Create a box named dev from boxd's default image and open a shell in it:",
                 "boxctl create dev", "boxctl enter dev"),
        *example("Run a command in it; boxctl exits with the command's status, and pipes work:",
                 "boxctl run dev -- make -j8", "echo hi | boxctl run -c dev cat"),
        *example("Create a box from another image, with a read-only host directory and a "
                 "variable:",
                 "boxctl create tools --image localhost/boxd-debian:12 \\",
                 "    -v /srv/data:/data:ro -e EDITOR=vim"),
        *example("List your boxes, or only their names:", "boxctl list", "boxctl list -q"),
        *example("Put a box's application in your menus and one of its programs in "
                 "~/.local/bin, then see what the box exports:",
                 "boxctl export dev --app org.gnome.TextEditor",
                 "boxctl export dev --bin /usr/bin/rg", "boxctl export dev --list"),
        *example("Stop and remove a box:", "boxctl stop dev", "boxctl rm dev"),
        *example("Tab completion in bash:", "source <(boxctl completion bash)"),
        *example("Check the bus, boxd, podman, polkit and your boxes when something fails:",
                 "boxctl doctor"),
    ]
    see = [see_also("boxd(8)", "podman(1)", "toolbox(1)", "distrobox(1)", "polkit(8)",
                    "busctl(1)"), *docs_list()]
    return manpage(parser, 1, "User Commands",
                   "create, enter and manage pet containers (boxes) through boxd", description,
                   [("exit status", exit_status), ("environment", environment),
                    ("files", files), ("examples", examples), ("see also", see)])


# --- boxd(8) ----------------------------------------------------------------------------------


def config_table() -> list[str]:
    """The keys of /etc/boxd/boxd.yaml, from the table in docs/config.md."""
    rows = [line.strip().strip("|").split(" | ")
            for line in (REPO / "docs" / "config.md").read_text(encoding="utf-8").splitlines()
            if line.startswith("| ") and not line.startswith(("| key ", "| ---"))]
    if not rows:
        raise SystemExit("gen-man: no table of keys in docs/config.md")
    lines = para(f"{b('/etc/boxd/boxd.yaml')} (or the file given with {b('--config')}) is YAML.",
                 "Every key is optional; an unknown key or a value of the wrong type stops boxd",
                 "at start with a message naming the key.")
    for row in rows:
        if len(row) != 4:
            raise SystemExit(f"gen-man: docs/config.md: a row without 4 cells: {row}")
        key, kind, default, meaning = (cell.strip() for cell in row)
        lines += item(f"{b(key)} ({esc(kind)}, default {md(default)})", md(meaning))
    return lines


def polkit_actions() -> list[str]:
    """boxd's polkit actions and their defaults for active local sessions, from the policy."""
    root = ET.parse(REPO / "polkit" / "io.github.boxd1.policy").getroot()
    lines = para("Every check carries the details", f"{b('box')} (its name), {b('owner')} (its",
                 f"owner's uid) and, for commands run in a box, {b('command')}, for rules to use.",
                 "Root is never asked about; in session mode no one is.")
    for action in root.iter("action"):
        allow_active = action.findtext("defaults/allow_active", "").strip()
        lines += item(b(action.get("id", "")),
                      esc(action.findtext("description", "").strip()) + ".",
                      f"Active local sessions: {b(allow_active)}.")
    return lines


def boxd_page() -> str:
    parser = daemon.build_parser()
    description = [
        *para(f"{b('boxd')} keeps the boxes of a host's users: long-lived, mutable podman",
              "containers, each owned by one user, which share that user's uid, home directory",
              f"and terminal with the host and see the host's file system under {b('/run/host')}.",
              f"It owns the name {b('io.github.boxd1')} on the D\\-Bus system bus and serves the",
              "API that",
              ".BR boxctl (1),",
              "terminals and desktop launchers use. It drives podman only through podman's REST",
              "socket and keeps its own settings per box in its state directory. Restarting",
              "boxd leaves running boxes running."),
        *para("Callers are identified by the bus, never by their arguments. Root may do",
              "anything; in system mode boxd asks",
              ".BR polkit (8)",
              f"about everyone else (see {b('POLKIT ACTIONS')}), and a polkit that cannot be",
              "reached means no. Boxes run in user namespaces: root in a box is an unprivileged",
              "host uid from a range boxd allots to each owner."),
        *para(f"In session mode ({b('--session')}) boxd serves only the user who runs it, on",
              "that user's session bus, with their rootless podman."),
        *para(f"boxd is started by systemd ({b('boxd.service')}) or by D\\-Bus activation, not",
              f"by hand, and logs to standard error (see {b('log_format')} and {b('log_level')}).",
              f"{b('boxctl doctor')} checks that everything it needs is in place."),
    ]
    signals = [
        *item(f"{b('SIGTERM')}, {b('SIGINT')}",
              "boxd gives up its bus name and exits; boxes and their commands keep running."),
    ]
    exit_status = [
        *item(b("0"), "boxd was told to stop and did."),
        *item(b("1"), "The bus could not be reached, its name is taken by another boxd, or the",
              "bus went away."),
        *item(b("2"), "Wrong usage, or a configuration file that cannot be used."),
    ]
    environment = [
        *item(f"{b('DBUS_SYSTEM_BUS_ADDRESS')}, {b('DBUS_SESSION_BUS_ADDRESS')}",
              f"Where the bus is, unless {b('--bus-address')} or {b('bus_address')} says."),
        *item(f"{b('XDG_RUNTIME_DIR')}, {b('XDG_STATE_HOME')}",
              f"Session mode without {b('--config')}: podman's socket is",
              f"{b('$XDG_RUNTIME_DIR/podman/podman.sock')} and the state directory",
              f"{b('$XDG_STATE_HOME/boxd')} (default {b('~/.local/state/boxd')})."),
    ]
    files = [
        *item(b("/etc/boxd/boxd.yaml"), f"The configuration; see {b('CONFIGURATION')}."),
        *item(b("/var/lib/boxd/"),
              f"The state directory ({b('state_dir')}): each box's settings and entry-point",
              f"configuration, and in {b('subids.json')} the host id range of each box owner."),
        *item(b("/run/podman/podman.sock"), f"podman's REST socket ({b('podman_socket')})."),
        *item(b("/usr/share/dbus-1/system.d/io.github.boxd1.conf"),
              "The bus policy: only root may own the name; everyone may call boxd."),
        *item(b("/usr/share/dbus-1/system-services/io.github.boxd1.service"),
              "Starts boxd.service when the name is called."),
        *item(b("/usr/share/polkit-1/actions/io.github.boxd1.policy"),
              f"boxd's polkit actions (see {b('POLKIT ACTIONS')})."),
        *item(b("/usr/share/polkit-1/rules.d/50-io.github.boxd1.rules"),
              f"The default rules: members of the group {b('boxd')} may create and use their",
              "own boxes from anywhere (ssh too), members of",
              f"{b('boxd-admin')} may do everything. To change them, copy the file to",
              f"{b('/etc/polkit-1/rules.d/')} under a lower number."),
        *item(b("/etc/systemd/system/boxd.service"), "The sandboxed systemd unit."),
        *item(b("/var/log/boxd/boxd.log"),
              "boxd's log where it runs without systemd (as scripts/boxd-up.sh starts it)."),
        *para("For session mode, boxd's source tree has the user unit",
              f"{b('boxd-session.service')} (in systemd/) and its D\\-Bus activation file",
              f"{b('io.github.boxd1.session.service')} (in dbus/)."),
    ]
    examples = [
        *example("Start boxd now and at every boot:", "systemctl enable --now boxd.service"),
        *example("See what it logs:", "journalctl -u boxd.service"),
        *example("Let a user create and use boxes, also over ssh:", "usermod -aG boxd USER"),
        *example("Run a user's own boxd on their session bus, with rootless podman:",
                 "systemctl --user enable --now podman.socket", "boxd --session"),
        *example("Try a configuration on a private bus:",
                 "boxd --config ./boxd.yaml --bus-address unix:path=/tmp/bus"),
    ]
    see = [see_also("boxctl(1)", "podman(1)", "podman-system-service(1)", "toolbox(1)",
                    "distrobox(1)", "polkit(8)", "dbus-daemon(1)", "systemd.exec(5)"),
           *docs_list()]
    return manpage(parser, 8, "System Manager's Manual",
                   "the daemon that serves pet containers (boxes) over D-Bus", description,
                   [("configuration", config_table()), ("polkit actions", polkit_actions()),
                    ("signals", signals), ("exit status", exit_status),
                    ("environment", environment), ("files", files), ("examples", examples),
                    ("see also", see)])


PAGES = {"boxctl.1": boxctl_page, "boxd.8": boxd_page}


def main() -> int:
    parser = argparse.ArgumentParser(description="Write boxd's man pages.")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a page in docs/man/ is out of date")
    parser.add_argument("--out", type=Path, default=OUTPUT, help="directory to write to")
    args = parser.parse_args()
    stale = []
    for name, render in PAGES.items():
        text = render()
        target = args.out / name
        if args.check:
            if not target.exists() or target.read_text(encoding="utf-8") != text:
                stale.append(name)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    if stale:
        print(f"docs/man/{', '.join(stale)} out of date: run scripts/gen-man.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
