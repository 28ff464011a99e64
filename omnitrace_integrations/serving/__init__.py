"""An OpenAI-compatible HTTP server with per-sentence citations, and clients for it.

Requires the ``serve`` extra::

    pip install "omnitrace-integrations[serve]"

- :func:`create_app` (``omnitrace_integrations.serving.app``): the FastAPI app over one tracer.
- :class:`ServeSettings`: every limit, with its ``omnitrace serve`` flag.
- :func:`serve` (``omnitrace_integrations.serving.runner``): load a model and run uvicorn, or
  deploy on Ray Serve (``omnitrace_integrations.serving.ray_app``).
- :class:`RemoteTracer` (``omnitrace_integrations.serving.client``): the ``Tracer`` API over
  HTTP; ``ChatOmniTrace(base_url=...)`` and ``OmniTraceLLM(base_url=...)`` use it.

Names are imported lazily; a missing framework raises an ImportError naming the extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omnitrace_integrations.serving.app import create_app
    from omnitrace_integrations.serving.client import RemoteTracer
    from omnitrace_integrations.serving.runner import serve
    from omnitrace_integrations.serving.settings import ServeSettings

SERVE_EXTRA_HINT = 'pip install "omnitrace-integrations[serve]"'

_EXPORTS = {
    "create_app": "app",
    "RemoteTracer": "client",
    "serve": "runner",
    "ServeSettings": "settings",
}

__all__ = ["SERVE_EXTRA_HINT", "RemoteTracer", "ServeSettings", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    except ImportError as exc:
        if exc.name and exc.name.startswith(__name__):
            raise
        raise ImportError(
            f"omnitrace_integrations.serving.{name} needs {exc.name}: {SERVE_EXTRA_HINT}"
        ) from exc
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
