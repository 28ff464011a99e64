"""Run the server: load the model once, then uvicorn (or Ray Serve, see :mod:`.ray_app`).

:class:`ServerThread` runs uvicorn in a background thread on a free port (tests, notebooks).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

from omnitrace_integrations.serving.settings import ServeSettings


def load_tracer(model: str, threads: int | None = None) -> Any:
    """Load ``model`` (packaged name or local folder) with its own defaults."""
    import torch

    from omnitrace_core import Tracer

    if threads:
        torch.set_num_threads(threads)
    return Tracer.from_pretrained(model)


#: Environment variable carrying the settings (JSON) to each uvicorn worker process.
SETTINGS_ENV = "OMNITRACE_SERVE_SETTINGS"
_THREADS_ENV = "OMNITRACE_SERVE_THREADS"


def app_from_env() -> Any:
    """uvicorn app factory for ``--workers N``: each worker process loads its own model."""
    from omnitrace_integrations.serving.app import create_app

    settings = ServeSettings.model_validate_json(os.environ[SETTINGS_ENV])
    threads = int(os.environ.get(_THREADS_ENV) or 0) or None
    return create_app(load_tracer(settings.model, threads), settings)


def serve(
    settings: ServeSettings, *, workers: int = 1, threads: int | None = None, log_level: str = "info"
) -> None:
    """Load the model and serve it with uvicorn until interrupted (``omnitrace serve``).

    One model and one generation at a time per worker process; ``workers > 1`` starts that many
    processes on the same port (each loads the model and has its own queue). Scale out across
    machines with Ray Serve (:mod:`.ray_app`).
    """
    import uvicorn

    settings.check_startup()
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": log_level,
        "timeout_keep_alive": 5,
    }
    if workers > 1:
        os.environ[SETTINGS_ENV] = settings.model_dump_json()
        os.environ[_THREADS_ENV] = str(threads or "")
        uvicorn.run(f"{__name__}:app_from_env", factory=True, workers=workers, **common)
        return
    from omnitrace_integrations.serving.app import create_app

    uvicorn.run(create_app(load_tracer(settings.model, threads), settings), **common)


class ServerThread:
    """uvicorn serving ``app`` in a daemon thread; ``with ServerThread(app) as url: ...``.

    ``port=0`` picks a free port; :attr:`url` is the base URL once started.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        import uvicorn

        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_keep_alive=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="omnitrace-serve", daemon=True)
        self.url = ""

    def start(self, timeout: float = 30.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start within {timeout:g} s")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(RuntimeError):
            self.thread.join(timeout=10)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
