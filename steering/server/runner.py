"""Running the app: in the foreground (`serve`, drains on SIGTERM) or on a background thread (`BackgroundServer`).

`BackgroundServer` binds ``127.0.0.1`` on a free port (port 0) and reports
the port the OS chose; tests and the benchmark use it, and it stops the
server, engine included, on exit.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

import uvicorn
from fastapi import FastAPI
from torch import nn

from .app import EngineFactory, create_app
from .config import ServerConfig


def serve(
    model: nn.Module,
    tokenizer: Any,
    config: ServerConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    engine: EngineFactory | None = None,
) -> None:
    """Serve ``model`` until SIGTERM or Ctrl-C (blocking), then drain and return.

    The first signal drains (see `steering.server.app`): new completions get
    503, calls in flight get ``config.drain_timeout_s`` to finish and are then
    ended with an error event; the process then returns normally (exit 0). A
    second Ctrl-C forces the exit.

    Example:
        >>> serve(model, tok, ServerConfig(model_name="smollm2-135m-instruct"), port=8000)  # doctest: +SKIP
    """
    app = create_app(model, tokenizer, config, engine=engine)
    # uvicorn's own wait is the backstop: the drain ends every call before it runs out.
    uv_config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=math.ceil(config.drain_timeout_s) + 3
    )
    server = _DrainingServer(uv_config, app.state.serving.drain_soon)
    # uvicorn re-raises the signal it caught once it has shut down, so that the
    # process dies of it; after a clean drain we exit 0 instead.
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)


class _DrainingServer(uvicorn.Server):
    """A uvicorn server that starts the app's drain when a shutdown signal arrives."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], None]) -> None:
        super().__init__(config)
        self._drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._drain()
        super().handle_exit(sig, frame)


class BackgroundServer:
    """A uvicorn server on a daemon thread, for tests and benchmarks.

    Example:
        >>> with BackgroundServer(create_app(model, tok, cfg)) as server:  # doctest: +SKIP
        ...     client = OpenAI(base_url=server.url + "/v1", api_key="x")
    """

    def __init__(self, app: FastAPI, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        self.app = app
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on", timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="steering-http", daemon=True)
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> BackgroundServer:
        """Start and wait until the socket listens (raises on failure or timeout)."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread exited during startup (see its log)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not start within {timeout} s")
            time.sleep(0.02)
        sockets = [s for server in self._server.servers for s in server.sockets]
        self.port = int(sockets[0].getsockname()[1])
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Ask uvicorn to exit, and wait for it (runs the app's shutdown: the engine stops)."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
