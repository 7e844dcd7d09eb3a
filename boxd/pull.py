"""boxctl's side of jobs (pull, build-default, a box's start): start the job, show its progress
(rich progress bars on a terminal, one line per step otherwise, nothing with --quiet) and its
output, cancel on ctrl-c, and give back the image id or the job's error."""

from __future__ import annotations

import signal
import sys
from typing import Any

from jeepney import HeaderFields, MessageType

from boxd.client import BoxdClient, CallError

JOB = "io.github.boxd1.Job"


def pull(client: BoxdClient, reference: str, quiet: bool = False) -> str:
    """Pull `reference`; returns the image id, raises CallError with the job's error."""
    with client.watching_daemon():
        return follow(client, client.manager("PullImage", "sa{sv}", (reference, {}))[0], quiet)


def build_default(client: BoxdClient, quiet: bool = False) -> str:
    """Build and import boxd's default image; returns its id."""
    with client.watching_daemon():
        return follow(client, client.manager("BuildDefaultImage", "a{sv}", ({},))[0], quiet)


def start_box(client: BoxdClient, name: str, quiet: bool = False) -> None:
    """Start a box unless it runs already, showing what its entry point prints on the way."""
    with client.watching_daemon():  # a boxd that dies mid-start never sends Finished
        path = client.box(name, "StartJob", "a{sv}", ({},))[0]
        if path != "/":
            if not quiet:
                print(f"Starting box {name} ...", file=sys.stderr, flush=True)
            follow(client, path, quiet)


def follow(client: BoxdClient, path: str, quiet: bool) -> str:
    view = _Silent() if quiet else (_Bars() if sys.stderr.isatty() else _Lines())

    def cancel(_signum: int, _frame: Any) -> None:
        client.send_only(path, JOB, "Cancel")

    previous = signal.signal(signal.SIGINT, cancel)
    try:
        with view:
            while True:
                msg = client.receive()  # raises when boxd goes away or falls silent
                fields = msg.header.fields
                if msg.header.message_type != MessageType.signal or \
                        fields.get(HeaderFields.path) != path:
                    continue
                member = fields.get(HeaderFields.member)
                if member == "Progress":
                    view.update(*msg.body)
                elif member == "Output":
                    view.output(msg.body[0])
                elif member == "Finished":
                    state, image_id, error, message = msg.body
                    break
    finally:
        signal.signal(signal.SIGINT, previous)
    if state != "done":
        raise CallError(error or "io.github.boxd1.Error.Failed", message)
    return image_id


class _Silent:
    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, layer: str, status: str, current: int, total: int) -> None:
        pass

    def output(self, line: str) -> None:
        pass


class _Lines(_Silent):
    """For logs and pipes: one line each time a layer changes step."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}

    def update(self, layer: str, status: str, current: int, total: int) -> None:
        if self._last.get(layer) != status:
            self._last[layer] = status
            size = f" ({total / 1e6:.1f} MB)" if total else ""
            print(f"{layer}: {status}{size}", file=sys.stderr, flush=True)

    def output(self, line: str) -> None:
        print(f"  {line}", file=sys.stderr, flush=True)


class _Bars(_Silent):
    """On a terminal: one rich progress bar per layer."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                  DownloadColumn(), TransferSpeedColumn(), transient=False)
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> _Bars:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, layer: str, status: str, current: int, total: int) -> None:
        task = self._tasks.get(layer)
        if task is None:
            task = self._tasks[layer] = self._progress.add_task(layer, total=total or None)
        self._progress.update(task, description=f"{layer} {status}", completed=current,
                              total=total or None)

    def output(self, line: str) -> None:
        from rich.markup import escape

        self._progress.console.print(f"[dim]  {escape(line)}[/dim]", highlight=False)
