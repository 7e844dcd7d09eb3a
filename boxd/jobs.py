"""Long work done for a caller, reported as it goes: image pulls, building the default image, and
starting a box (whose entry point may install packages for minutes). Knows podman; not D-Bus."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from boxd import errors, log, podman

_log = log.get("boxd.jobs")


@dataclass
class Layer:
    status: str = ""
    current: int = 0
    total: int = 0


@dataclass
class Job:
    id: str
    kind: str                       # pull, build, start
    reference: str
    caller_uid: int
    caller_sender: str
    state: str = "running"          # running, done, failed, cancelled
    image_id: str = ""
    error_code: str = ""
    error_message: str = ""
    layers: dict[str, Layer] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()


# podman's words for why a pull failed -> (error code, plain sentence)
_PULL_FAILURES = [
    (("manifest unknown", "name unknown", "not found", "no such image"), "ImageNotFound",
     "the registry has no image {ref}"),
    (("unauthorized", "authentication required", "denied"), "AuthRequired",
     "the registry wants credentials for {ref}"),
    (("no space left",), "DiskFull", "the host ran out of disk space pulling {ref}"),
    (("connection refused", "no such host", "i/o timeout", "network is unreachable",
      "pinging container registry", "server gave http response"), "RegistryUnreachable",
     "cannot reach the registry of {ref}"),
]


def classify_pull_error(reference: str, message: str) -> tuple[str, str]:
    lowered = message.lower()
    for needles, code, sentence in _PULL_FAILURES:
        if any(n in lowered for n in needles):
            return code, sentence.format(ref=reference) + f" ({message.strip()[:300]})"
    return "Failed", f"pulling {reference} failed: {message.strip()[:300]}"


class JobObserver:
    def progress(self, job: Job, layer: str, info: Layer) -> None: ...
    def output(self, job: Job, line: str) -> None: ...
    def finished(self, job: Job) -> None: ...


class JobManager:
    def __init__(self, client: podman.PodmanClient, work_dir: Path) -> None:
        self._podman = client
        self._work_dir = work_dir
        self._ids = itertools.count(1)
        self._jobs: dict[str, Job] = {}
        self.observer = JobObserver()

    def forget(self, job: Job) -> None:
        self._jobs.pop(job.id, None)

    def of_sender(self, sender: str) -> list[Job]:
        return [j for j in self._jobs.values() if j.caller_sender == sender]

    def pull(self, reference: str, caller_uid: int, caller_sender: str) -> Job:
        return self._start("pull", reference, caller_uid, caller_sender, self._pull)

    def build_default(self, reference: str, caller_uid: int, caller_sender: str) -> Job:
        """Build a Debian image with debootstrap (no registry needed) and import it."""
        return self._start("build", reference, caller_uid, caller_sender, self._build)

    def run(self, kind: str, reference: str, caller_uid: int, caller_sender: str,
            work: Callable[[Callable[[str], None]], Awaitable[object]]) -> Job:
        """Any other long work: `work` gets a callback for the lines it wants the caller to see."""
        async def tracked(job: Job) -> None:
            await work(lambda line: self.observer.output(job, line))
            job.state = "done"

        return self._start(kind, reference, caller_uid, caller_sender, tracked)

    def _start(self, kind: str, reference: str, caller_uid: int, caller_sender: str,
               work: Callable[[Job], Awaitable[None]]) -> Job:
        job = Job(id=str(next(self._ids)), kind=kind, reference=reference,
                  caller_uid=caller_uid, caller_sender=caller_sender)
        self._jobs[job.id] = job
        job.task = asyncio.create_task(self._track(job, work))
        return job

    def _report(self, job: Job, layer_id: str, status: str, current: int = 0,
                total: int = 0) -> None:
        layer = job.layers.setdefault(layer_id, Layer())
        layer.status, layer.current, layer.total = status, current, total
        self.observer.progress(job, layer_id, layer)

    async def _pull(self, job: Job) -> None:
        async for event in self._podman.pull_image(job.reference):
            if event.get("error") or event.get("errorDetail"):
                message = (event.get("errorDetail") or {}).get("message") or event["error"]
                job.error_code, job.error_message = classify_pull_error(job.reference, message)
                job.state = "failed"
                return
            layer_id = event.get("id")
            if layer_id:
                layer = job.layers.get(layer_id, Layer())
                detail = event.get("progressDetail") or {}
                status = str(event.get("status", layer.status))
                total = int(detail.get("total") or layer.total)
                current = int(detail.get("current") or layer.current)
                if status in ("Download complete", "Already exists", "Pull complete"):
                    current = max(current, total)
                self._report(job, layer_id, status, current, total)
        job.image_id = str((await self._podman.inspect_image(job.reference))["Id"])
        job.state = "done"

    async def _build(self, job: Job) -> None:
        self._work_dir.mkdir(parents=True, exist_ok=True)
        tarball = self._work_dir / f"build-{job.id}.tar"
        script = str(resources.files("boxd") / "data" / "build-rootfs.sh")
        proc = await asyncio.create_subprocess_exec(
            "sh", script, "debian", str(tarball), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
        try:
            assert proc.stdout is not None and proc.stderr is not None
            while line := await proc.stdout.readline():
                self._report(job, "rootfs", line.decode(errors="replace").strip()[3:])
            stderr = (await proc.stderr.read()).decode(errors="replace").strip()
            if await proc.wait() != 0:
                job.state = "failed"
                job.error_code = "Failed"
                job.error_message = ("building the image with debootstrap failed: "
                                     + (stderr.splitlines() or ["no output"])[-1][:300])
                return
            size = tarball.stat().st_size
            job.image_id = await self._podman.import_image(
                job.reference, self._read_with_progress(job, tarball, size))
            job.state = "done"
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            tarball.unlink(missing_ok=True)

    async def _read_with_progress(self, job: Job, path: Path, size: int
                                  ) -> AsyncIterator[bytes]:
        sent = 0
        source = await asyncio.to_thread(open, path, "rb")
        try:
            while chunk := await asyncio.to_thread(source.read, 1 << 20):
                sent += len(chunk)
                self._report(job, "import", "Importing", sent, size)
                yield chunk
        finally:
            source.close()

    async def _track(self, job: Job, work: Callable[[Job], Awaitable[None]]) -> None:
        try:
            await work(job)
        except asyncio.CancelledError:
            job.state = "cancelled"
            job.error_code = "Cancelled"
            job.error_message = f"the {job.kind} of {job.reference} was cancelled"
        except errors.BoxdError as exc:
            job.state = "failed"
            job.error_code, job.error_message = exc.code, exc.message
        except podman.PodmanError as exc:
            job.state = "failed"
            job.error_code, job.error_message = classify_pull_error(job.reference, str(exc))
            if isinstance(exc, podman.PodmanUnavailable):
                job.error_code = "PodmanUnavailable"
        except Exception:
            _log.exception("job_crashed", kind=job.kind, reference=job.reference)
            job.state = "failed"
            job.error_code, job.error_message = "Internal", "boxd hit an internal error"
        finally:
            job.done.set()
            _log.info("job_finished", kind=job.kind, reference=job.reference, state=job.state,
                      caller_uid=job.caller_uid, error=job.error_code or None,
                      duration_ms=round((time.monotonic() - job.started) * 1000, 1))
            self.observer.finished(job)
