"""An async client for podman's libpod REST API over its unix socket.

It knows containers, images and events; it knows nothing about boxes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import h11
import httpx

API = "/v4.0.0/libpod"


class PodmanError(Exception):
    """Base of every error this client raises."""


class PodmanUnavailable(PodmanError):
    """The socket is missing, refuses connections, or the service did not answer in time."""


class PodmanTimeout(PodmanUnavailable):
    """The service took the call but did not answer within the client's timeout (frozen or
    overloaded)."""


class ApiError(PodmanError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"podman answered {status}: {message}")
        self.status = status
        self.message = message


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


@dataclass
class ExecStream:
    """A hijacked exec connection; `initial` holds stream bytes that arrived with the 101."""

    initial: bytes
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


def _filters(filters: Mapping[str, list[str]] | None) -> dict[str, str]:
    return {"filters": json.dumps(dict(filters))} if filters else {}


class PodmanClient:
    def __init__(self, socket_path: str, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self._timeout = timeout
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=socket_path),
            base_url="http://podman" + API,
            timeout=httpx.Timeout(timeout),
        )

    def service_pid(self) -> int | None:
        """The pid behind the socket (SO_PEERCRED): podman's service, or whoever listens for it
        (systemd, with socket activation). Blocking: call it off the event loop."""
        import socket
        import struct

        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self._timeout)
                sock.connect(self.socket_path)
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                        struct.calcsize("3i"))
        except OSError:
            return None
        pid = struct.unpack("3i", creds)[0]
        return pid if pid > 0 else None

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                       json_body: Any = None, content: Any = None,
                       timeout: float | None = None,
                       headers: Mapping[str, str] | None = None) -> httpx.Response:
        try:
            response = await self._http.request(
                method, path, params=params, json=json_body, content=content, headers=headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TimeoutException:
            raise PodmanTimeout(
                f"podman at {self.socket_path} did not answer in time") from None
        except (httpx.TransportError, OSError) as exc:
            # Any transport failure (refused, reset, closed mid-answer) is podman being away,
            # never a crash of the caller.
            raise PodmanUnavailable(f"cannot reach podman at {self.socket_path}: {exc}") from None
        _raise_for_status(response)
        return response

    # -- service -------------------------------------------------------------------------------
    async def ping(self, timeout: float | None = None) -> None:
        """Raises PodmanUnavailable unless podman answers within `timeout` (its own default)."""
        await self._request("GET", "/_ping", timeout=timeout)

    # -- containers ----------------------------------------------------------------------------
    async def create_container(self, spec: Mapping[str, Any]) -> str:
        body = (await self._request("POST", "/containers/create", json_body=spec)).json()
        return str(body["Id"])

    async def start_container(self, name: str) -> None:
        # 304 means it was running already: not an error for us.
        await self._request("POST", f"/containers/{name}/start")

    async def stop_container(self, name: str, timeout: int) -> None:
        await self._request("POST", f"/containers/{name}/stop", params={"timeout": timeout},
                            timeout=self._timeout + timeout)

    async def remove_container(self, name: str, force: bool = False) -> None:
        params = {"force": str(force).lower(), "v": "true"}
        await self._request("DELETE", f"/containers/{name}", params=params,
                            timeout=self._timeout + 30)

    async def inspect_container(self, name: str) -> dict[str, Any]:
        return (await self._request("GET", f"/containers/{name}/json")).json()

    async def container_exists(self, name: str) -> bool:
        return await self._exists(f"/containers/{name}/exists")

    async def list_containers(self, labels: list[str] | None = None) -> list[dict[str, Any]]:
        params = {"all": "true", **_filters({"label": labels} if labels else None)}
        return (await self._request("GET", "/containers/json", params=params)).json() or []

    async def container_logs(self, name: str, *, since: float | None = None,
                             follow: bool = True) -> AsyncIterator[tuple[int, bytes]]:
        """Yield (stream, line) from a non-tty container's log; stream 1 is stdout, 2 stderr."""
        params: dict[str, Any] = {"follow": str(follow).lower(), "stdout": "true",
                                  "stderr": "true"}
        if since is not None:
            params["since"] = f"{since:.6f}"  # podman keeps nanoseconds: a start's own lines only
        async for stream, payload in self._stream_frames(f"/containers/{name}/logs", params):
            for line in payload.splitlines():
                yield stream, line

    # -- exec ----------------------------------------------------------------------------------
    async def exec_create(self, container: str, config: Mapping[str, Any]) -> str:
        body = (await self._request("POST", f"/containers/{container}/exec",
                                    json_body=config)).json()
        return str(body["Id"])

    async def exec_start(self, exec_id: str, tty: bool, height: int = 0, width: int = 0
                         ) -> ExecStream:
        """Start an exec session and hijack the connection: after podman's "101 UPGRADED" the
        socket is the process's raw stdio (tty: one stream; else 8-byte framed stdout/stderr)."""
        body: dict[str, Any] = {"Detach": False, "Tty": tty}
        if tty and height and width:
            body["h"], body["w"] = height, width
        payload = json.dumps(body).encode()
        writer: asyncio.StreamWriter | None = None
        http = h11.Connection(h11.CLIENT)
        try:
            # One bound for all of it, connect included: a frozen podman accepts connections
            # (the kernel does) and then says nothing.
            async with asyncio.timeout(self._timeout):
                reader, writer = await asyncio.open_unix_connection(self.socket_path,
                                                                    limit=1 << 20)
                writer.write(http.send(h11.Request(
                    method="POST", target=f"{API}/exec/{exec_id}/start",
                    headers=[("Host", "podman"), ("Content-Type", "application/json"),
                             ("Content-Length", str(len(payload))), ("Connection", "Upgrade"),
                             ("Upgrade", "tcp")])) or b"")
                writer.write(http.send(h11.Data(data=payload)) or b"")
                writer.write(http.send(h11.EndOfMessage()) or b"")
                while True:
                    event = http.next_event()
                    if event is h11.NEED_DATA:
                        data = await reader.read(65536)
                        http.receive_data(data)
                        if not data:
                            raise PodmanUnavailable("podman closed the exec connection")
                        continue
                    if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                        break
                    if isinstance(event, h11.Response):
                        text = await _read_body(http, reader)
                        _raise_for_status(httpx.Response(event.status_code, content=text))
                        raise ApiError(event.status_code, "podman did not upgrade the exec stream")
        except BaseException as exc:
            if writer is not None:
                writer.close()
            if isinstance(exc, TimeoutError):
                raise PodmanTimeout("podman did not start the exec session in time") from None
            if isinstance(exc, h11.RemoteProtocolError):
                raise PodmanUnavailable(f"podman sent a malformed answer: {exc}") from None
            if isinstance(exc, OSError):
                raise PodmanUnavailable(
                    f"cannot reach podman at {self.socket_path}: {exc}") from None
            raise
        leftover, _closed = http.trailing_data
        return ExecStream(bytes(leftover), reader, writer)

    async def exec_resize(self, exec_id: str, height: int, width: int) -> None:
        await self._request("POST", f"/exec/{exec_id}/resize", params={"h": height, "w": width})

    async def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        return (await self._request("GET", f"/exec/{exec_id}/json")).json()

    async def wait_exec_ended(self, exec_id: str, timeout: float = 15.0) -> dict[str, Any] | None:
        """The exec's inspect once podman has booked its end, or None after `timeout`.

        An exec's stream ends as its process exits, and podman books the exit code a moment
        later (longer on a loaded machine): poll quickly first, then back off."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.01
        while True:
            info = await self.exec_inspect(exec_id)
            if not info.get("Running"):
                return info
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.2)

    # -- images --------------------------------------------------------------------------------
    async def list_images(self) -> list[dict[str, Any]]:
        return (await self._request("GET", "/images/json")).json() or []

    async def inspect_image(self, ref: str) -> dict[str, Any]:
        return (await self._request("GET", f"/images/{ref}/json")).json()

    async def image_exists(self, ref: str) -> bool:
        return await self._exists(f"/images/{ref}/exists")

    async def _exists(self, path: str) -> bool:
        try:
            await self._request("GET", path)
        except NotFound:
            return False
        return True

    async def pull_image(self, reference: str) -> AsyncIterator[dict[str, Any]]:
        """Pull through the Docker-compatible endpoint, the one that reports per-layer progress
        (libpod's own only streams text). Yields its JSON events; failures arrive as events with
        "error" after a 200, so the caller must look at each."""
        name, tag = split_reference(reference)
        params = {"fromImage": name, **({"tag": tag} if tag else {})}
        url = f"http://podman{API.removesuffix('/libpod')}/images/create"
        async for event in self._json_lines("POST", url, params, "the pull"):
            yield event

    async def remove_image(self, reference: str, force: bool = False) -> None:
        await self._request("DELETE", f"/images/{reference}",
                            params={"force": str(force).lower()})

    async def import_image(self, reference: str, tarball: AsyncIterator[bytes] | bytes,
                           changes: list[str] | None = None) -> str:
        params: dict[str, Any] = {"reference": reference}
        if changes:
            params["changes"] = changes
        response = await self._request("POST", "/images/import", params=params, content=tarball,
                                       timeout=max(self._timeout, 600),
                                       headers={"Content-Type": "application/x-tar"})
        return str(response.json().get("Id", ""))

    # -- events --------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def event_stream(self, filters: Mapping[str, list[str]] | None = None
                           ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Podman's event stream, subscribed once this is entered (podman has answered): what
        happens from then on waits in the stream for the iterator. The iterator ends (or raises
        PodmanUnavailable) if podman goes away."""
        params = {"stream": "true", **_filters(filters)}
        async with self._stream("GET", "/events", params, "the event stream") as resp:
            yield _json_objects(resp)

    @contextlib.asynccontextmanager
    async def _stream(self, method: str, url: str, params: Mapping[str, Any], what: str
                      ) -> AsyncIterator[httpx.Response]:
        """A streaming response with no read timeout; podman going away is PodmanUnavailable."""
        try:
            async with self._http.stream(method, url, params=params,
                                         timeout=httpx.Timeout(self._timeout, read=None)) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    _raise_for_status(resp)
                yield resp
        except (httpx.TransportError, OSError) as exc:
            raise PodmanUnavailable(f"lost podman during {what}: {exc}") from None

    async def _json_lines(self, method: str, url: str, params: Mapping[str, Any], what: str
                          ) -> AsyncIterator[dict[str, Any]]:
        async with self._stream(method, url, params, what) as resp:
            async for item in _json_objects(resp):
                yield item

    async def _stream_frames(self, path: str, params: Mapping[str, Any]
                             ) -> AsyncIterator[tuple[int, bytes]]:
        """Read podman's multiplexed stream: 8-byte headers [stream, 0, 0, 0, length (BE)]."""
        async with self._stream("GET", path, params, "a log stream") as resp:
            buffer = b""
            async for chunk in resp.aiter_raw():
                buffer += chunk
                while len(buffer) >= 8:
                    stream, length = struct.unpack(">BxxxI", buffer[:8])
                    if len(buffer) < 8 + length:
                        break
                    yield stream, buffer[8:8 + length]
                    buffer = buffer[8 + length:]


async def _read_body(http: h11.Connection, reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while True:
        event = http.next_event()
        if event is h11.NEED_DATA:
            http.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
        else:
            return b"".join(chunks)


def split_reference(reference: str) -> tuple[str, str]:
    """registry/repo:tag -> (registry/repo, tag); digests stay in the name."""
    if "@" in reference:
        return reference, ""
    slash = reference.rfind("/")
    colon = reference.rfind(":")
    if colon > slash:
        return reference[:colon], reference[colon + 1:]
    return reference, "latest"


async def _json_objects(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    async for line in response.aiter_lines():
        if line.strip():
            try:
                yield json.loads(line)
            except ValueError:
                # A line torn by podman going away mid-write.
                raise PodmanUnavailable(f"podman sent a malformed line: {line[:100]!r}") from None


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    cause = ""
    try:
        body = response.json()
        message = body.get("message") or body.get("cause") or response.text
        cause = str(body.get("cause") or "")
    except (ValueError, AttributeError):
        message = response.text.strip() or response.reason_phrase
    # A container removed while podman looks it up comes back as a 500 "no such container".
    if response.status_code == 404 or "no such container" in message:
        raise NotFound(response.status_code, message)
    # libpod answers 500 when a container is in the wrong state for the call.
    if response.status_code == 409 or cause == "container state improper":
        raise Conflict(response.status_code, message)
    raise ApiError(response.status_code, message)
