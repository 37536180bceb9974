"""Run a real emolive server (uvicorn, websockets backend) in a background thread: for tests
and for embedding. Listens on 127.0.0.1 on a free port unless told otherwise, on plain asyncio
or on uvloop (what ``emolive serve`` picks when it is installed)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import uvicorn

from emolive.server.config import Settings

LOOPS = ("asyncio", "uvloop")


class BackgroundServer:
    """``with BackgroundServer(settings) as srv: srv.url`` -> ``http://127.0.0.1:PORT``."""

    def __init__(self, settings: Settings, port: int = 0, log_level: str = "warning", loop: str = "asyncio") -> None:
        from emolive.server.app import create_app

        self.settings = settings
        self.app = create_app(settings)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((settings.host if settings.host not in ("", "0.0.0.0") else "127.0.0.1", port))
        self.host, self.port = self._sock.getsockname()[:2]
        config = uvicorn.Config(self.app, ws="websockets-sansio", log_level=log_level, lifespan="on")
        self._server = uvicorn.Server(config)
        if loop not in LOOPS:
            raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
        self._loop_name = loop
        self._thread = threading.Thread(target=self._run, name="emolive-server", daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            await self._server.serve(sockets=[self._sock])

        factory = None
        if self._loop_name == "uvloop":
            import uvloop

            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())

    def start(self, timeout: float = 60.0) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("emolive server thread exited during startup")
            if time.monotonic() > deadline:
                raise TimeoutError(f"emolive server did not start in {timeout:.0f} s")
            time.sleep(0.05)
        return self

    def call(self, coro, timeout: float = 10.0):
        """Run ``coro`` on the server's event loop (to inspect its state) and return the result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, timeout: float = 15.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
