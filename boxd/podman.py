"""An async client for podman's libpod REST API over its unix socket.

It knows containers, images and events; it knows nothing about boxes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

API = "/v4.0.0/libpod"


class PodmanError(Exception):
    """Base of every error this client raises."""


class PodmanUnavailable(PodmanError):
    """The socket is missing, refuses connections, or the service did not answer in time."""


class ApiError(PodmanError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"podman answered {status}: {message}")
        self.status = status
        self.message = message


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


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

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                       json_body: Any = None, content: Any = None,
                       timeout: float | None = None) -> httpx.Response:
        try:
            response = await self._http.request(
                method, path, params=params, json=json_body, content=content,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except (httpx.ConnectError, httpx.RemoteProtocolError, FileNotFoundError) as exc:
            raise PodmanUnavailable(f"cannot reach podman at {self.socket_path}: {exc}") from None
        except httpx.TimeoutException:
            raise PodmanUnavailable(
                f"podman at {self.socket_path} did not answer in time") from None
        _raise_for_status(response)
        return response

    # -- service -------------------------------------------------------------------------------
    async def ping(self) -> bool:
        await self._request("GET", "/_ping")
        return True

    async def version(self) -> dict[str, Any]:
        return (await self._request("GET", "/version")).json()

    async def info(self) -> dict[str, Any]:
        return (await self._request("GET", "/info")).json()

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

    async def kill_container(self, name: str, signal: str = "SIGKILL") -> None:
        await self._request("POST", f"/containers/{name}/kill", params={"signal": signal})

    async def remove_container(self, name: str, force: bool = False) -> None:
        params = {"force": str(force).lower(), "v": "true"}
        await self._request("DELETE", f"/containers/{name}", params=params,
                            timeout=self._timeout + 30)

    async def inspect_container(self, name: str) -> dict[str, Any]:
        return (await self._request("GET", f"/containers/{name}/json")).json()

    async def container_exists(self, name: str) -> bool:
        try:
            await self._request("GET", f"/containers/{name}/exists")
        except NotFound:
            return False
        return True

    async def list_containers(self, labels: list[str] | None = None) -> list[dict[str, Any]]:
        params = {"all": "true", **_filters({"label": labels} if labels else None)}
        return (await self._request("GET", "/containers/json", params=params)).json() or []

    async def container_logs(self, name: str, *, since: int | None = None,
                             follow: bool = True) -> AsyncIterator[tuple[int, bytes]]:
        """Yield (stream, line) from a non-tty container's log; stream 1 is stdout, 2 stderr."""
        params: dict[str, Any] = {"follow": str(follow).lower(), "stdout": "true",
                                  "stderr": "true"}
        if since is not None:
            params["since"] = str(since)
        async for stream, payload in self._stream_frames(f"/containers/{name}/logs", params):
            for line in payload.splitlines():
                yield stream, line

    # -- images --------------------------------------------------------------------------------
    async def list_images(self) -> list[dict[str, Any]]:
        return (await self._request("GET", "/images/json")).json() or []

    async def inspect_image(self, ref: str) -> dict[str, Any]:
        return (await self._request("GET", f"/images/{ref}/json")).json()

    async def image_exists(self, ref: str) -> bool:
        try:
            await self._request("GET", f"/images/{ref}/exists")
        except NotFound:
            return False
        return True

    async def import_image(self, reference: str, tarball: AsyncIterator[bytes] | bytes,
                           changes: list[str] | None = None) -> str:
        params: dict[str, Any] = {"reference": reference}
        if changes:
            params["changes"] = changes
        response = await self._request("POST", "/images/import", params=params, content=tarball,
                                       timeout=max(self._timeout, 600))
        return str(response.json().get("Id", ""))

    # -- events --------------------------------------------------------------------------------
    async def events(self, filters: Mapping[str, list[str]] | None = None
                     ) -> AsyncIterator[dict[str, Any]]:
        """Follow podman's event stream; ends (or raises PodmanUnavailable) if podman goes away."""
        params = {"stream": "true", **_filters(filters)}
        try:
            async with self._http.stream("GET", "/events", params=params,
                                         timeout=httpx.Timeout(self._timeout, read=None)) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    _raise_for_status(resp)
                async for line in resp.aiter_lines():
                    if line.strip():
                        yield json.loads(line)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError,
                FileNotFoundError) as exc:
            raise PodmanUnavailable(f"lost podman's event stream: {exc}") from None

    async def _stream_frames(self, path: str, params: Mapping[str, Any]
                             ) -> AsyncIterator[tuple[int, bytes]]:
        """Read podman's multiplexed stream: 8-byte headers [stream, 0, 0, 0, length (BE)]."""
        try:
            async with self._http.stream("GET", path, params=params,
                                         timeout=httpx.Timeout(self._timeout, read=None)) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    _raise_for_status(resp)
                buffer = b""
                async for chunk in resp.aiter_raw():
                    buffer += chunk
                    while len(buffer) >= 8:
                        stream, length = struct.unpack(">BxxxI", buffer[:8])
                        if len(buffer) < 8 + length:
                            break
                        yield stream, buffer[8:8 + length]
                        buffer = buffer[8 + length:]
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError,
                FileNotFoundError) as exc:
            raise PodmanUnavailable(f"lost podman's stream: {exc}") from None


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        message = body.get("message") or body.get("cause") or response.text
    except (ValueError, AttributeError):
        message = response.text.strip() or response.reason_phrase
    if response.status_code == 404:
        raise NotFound(404, message)
    if response.status_code == 409:
        raise Conflict(409, message)
    raise ApiError(response.status_code, message)
