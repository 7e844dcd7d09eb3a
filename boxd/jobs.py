"""Long work done for a caller, reported as it goes: image pulls. Knows podman; not D-Bus."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

from boxd import errors, log, podman

_log = log.get("boxd.jobs")


@dataclass
class Layer:
    status: str = ""
    current: int = 0
    total: int = 0


@dataclass
class PullJob:
    id: str
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


class PullObserver:
    def progress(self, job: PullJob, layer: str, info: Layer) -> None: ...
    def finished(self, job: PullJob) -> None: ...


class JobManager:
    def __init__(self, client: podman.PodmanClient) -> None:
        self._podman = client
        self._ids = itertools.count(1)
        self._jobs: dict[str, PullJob] = {}
        self.observer = PullObserver()

    def get(self, job_id: str) -> PullJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise errors.NotFound(f"there is no job {job_id}")
        return job

    def forget(self, job: PullJob) -> None:
        self._jobs.pop(job.id, None)

    def of_sender(self, sender: str) -> list[PullJob]:
        return [j for j in self._jobs.values() if j.caller_sender == sender]

    def pull(self, reference: str, caller_uid: int, caller_sender: str) -> PullJob:
        job = PullJob(id=str(next(self._ids)), reference=reference, caller_uid=caller_uid,
                      caller_sender=caller_sender)
        self._jobs[job.id] = job
        job.task = asyncio.create_task(self._run(job))
        return job

    async def _run(self, job: PullJob) -> None:
        try:
            async for event in self._podman.pull_image(job.reference):
                if event.get("error") or event.get("errorDetail"):
                    message = (event.get("errorDetail") or {}).get("message") or event["error"]
                    job.error_code, job.error_message = classify_pull_error(job.reference,
                                                                            message)
                    job.state = "failed"
                    break
                layer_id = event.get("id")
                if layer_id:
                    layer = job.layers.setdefault(layer_id, Layer())
                    detail = event.get("progressDetail") or {}
                    layer.status = str(event.get("status", layer.status))
                    layer.total = int(detail.get("total") or layer.total)
                    layer.current = int(detail.get("current") or layer.current)
                    if layer.status in ("Download complete", "Already exists", "Pull complete"):
                        layer.current = max(layer.current, layer.total)
                    self.observer.progress(job, layer_id, layer)
            if job.state == "running":
                job.image_id = str((await self._podman.inspect_image(job.reference))["Id"])
                job.state = "done"
        except asyncio.CancelledError:
            job.state = "cancelled"
            job.error_code, job.error_message = "Cancelled", f"the pull of {job.reference} " \
                                                             "was cancelled"
        except podman.PodmanError as exc:
            job.state = "failed"
            job.error_code, job.error_message = classify_pull_error(job.reference, str(exc))
            if isinstance(exc, podman.PodmanUnavailable):
                job.error_code = "PodmanUnavailable"
        except Exception:
            _log.exception("pull_crashed", reference=job.reference)
            job.state = "failed"
            job.error_code, job.error_message = "Internal", "boxd hit an internal error"
        finally:
            job.done.set()
            _log.info("pull_finished", reference=job.reference, state=job.state,
                      caller_uid=job.caller_uid, error=job.error_code or None,
                      duration_ms=round((time.monotonic() - job.started) * 1000, 1))
            self.observer.finished(job)
