"""boxctl's side of an image pull: start the job, show per-layer progress (a rich progress bar
on a terminal, one line per layer step otherwise, nothing with --quiet), cancel on ctrl-c."""

from __future__ import annotations

import signal
import sys
from typing import Any

from jeepney import HeaderFields, MessageType

from boxd.client import BoxdClient, CallError

JOB = "io.github.boxd1.Job"


def pull(client: BoxdClient, reference: str, quiet: bool = False) -> str:
    """Pull `reference`; returns the image id, raises CallError with the job's error."""
    path = client.manager("PullImage", "sa{sv}", (reference, {}))[0]
    view = _Silent() if quiet else (_Bars(reference) if sys.stderr.isatty() else _Lines())

    def cancel(_signum: int, _frame: Any) -> None:
        client.send_only(path, JOB, "Cancel")

    previous = signal.signal(signal.SIGINT, cancel)
    try:
        with view:
            while True:
                msg = client.connection.receive()
                fields = msg.header.fields
                if msg.header.message_type != MessageType.signal or \
                        fields.get(HeaderFields.path) != path:
                    continue
                member = fields.get(HeaderFields.member)
                if member == "Progress":
                    view.update(*msg.body)
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


class _Lines(_Silent):
    """For logs and pipes: one line each time a layer changes step."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}

    def update(self, layer: str, status: str, current: int, total: int) -> None:
        if self._last.get(layer) != status:
            self._last[layer] = status
            size = f" ({total / 1e6:.1f} MB)" if total else ""
            print(f"{layer}: {status}{size}", file=sys.stderr, flush=True)


class _Bars(_Silent):
    """On a terminal: one rich progress bar per layer."""

    def __init__(self, reference: str) -> None:
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
        self._reference = reference

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
