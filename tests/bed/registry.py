"""A real container registry on loopback (Debian's docker-registry), and a throttling TCP proxy in
front of it so that pulls last long enough for podman to report progress (it does once a
second)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bed import wait_for

CONFIG = """\
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: {root}/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""
# A registry that wants credentials: every anonymous request gets a 401.
AUTH = """\
auth:
  htpasswd:
    realm: boxd-test
    path: {root}/htpasswd
"""


@dataclass
class Registry:
    root: Path
    port: int = 5055
    proc: subprocess.Popen | None = None
    needs_login: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.yml"
        text = CONFIG.format(root=self.root, port=self.port)
        if self.needs_login:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import crypt  # bcrypt through libxcrypt; the registry takes nothing else

            secret = crypt.crypt("secret", crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 5))
            (self.root / "htpasswd").write_text(f"boxd:{secret}\n")
            text += AUTH.format(root=self.root)
        config.write_text(text)
        self.proc = subprocess.Popen(["docker-registry", "serve", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_for(self._up, 20, "docker-registry")

    def _up(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=1) as response:
                return response.status == 200
        except urllib.error.HTTPError as exc:
            return exc.code == 401 and self.needs_login
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class ThrottledProxy:
    """Forwards 127.0.0.1:`port` to `target`, sending the answers at `rate` bytes per second."""

    def __init__(self, port: int, target: tuple[str, int], rate: int) -> None:
        self.port = port
        self.target = target
        self.rate = rate
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
                     ) -> None:
        try:
            upstream_r, upstream_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return

        async def pipe(reader, writer, throttle: bool) -> None:
            try:
                while data := await reader.read(16384):
                    writer.write(data)
                    await writer.drain()
                    if throttle:
                        await asyncio.sleep(len(data) / self.rate)
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        await asyncio.gather(pipe(client_r, upstream_w, False), pipe(upstream_r, client_w, True))


def push_random_image(podman, registry: Registry, name: str, megabytes: int) -> str:
    """An image with one layer of random bytes (incompressible), pushed and then removed here."""
    safe = name.replace("/", "-").replace(":", "-")
    work = registry.root / f"layer-{safe}"
    work.mkdir(parents=True, exist_ok=True)
    (work / "blob").write_bytes(os.urandom(megabytes << 20))
    tarball = registry.root / f"{safe}.tar"
    subprocess.run(["tar", "-C", str(work), "-cf", str(tarball), "."], check=True)
    local = f"localhost/{name}"
    remote = f"{registry.address}/{name}"
    podman.run_cli("import", "-q", str(tarball), local)
    podman.run_cli("push", "-q", "--tls-verify=false", local, remote)
    podman.run_cli("rmi", "-f", local, remote)
    tarball.unlink()
    (work / "blob").unlink()
    return remote
