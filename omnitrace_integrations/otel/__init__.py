"""OpenTelemetry for OmniTrace: a span per generation and a child span per cited sentence.

Two ways in:

- :class:`OmniTraceInstrumentor` (OpenInference style) traces every ``Tracer``:
  ``OmniTraceInstrumentor().instrument(tracer_provider=provider)``.
- :class:`OTelObserver`, a plain observer: ``Tracer(..., observers=[OTelObserver()])``.

Attribute names are in :mod:`omnitrace_integrations.otel.attributes` and documented in
``docs/observability.md``. Needs ``pip install "omnitrace-integrations[otel]"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omnitrace_integrations.otel.content import (
    CAPTURE_CONTENT_ENV,
    GENAI_CAPTURE_CONTENT_ENV,
    content_capture_enabled,
)

if TYPE_CHECKING:
    from omnitrace_integrations.otel.instrumentor import OmniTraceInstrumentor
    from omnitrace_integrations.otel.observer import OTelObserver

INSTALL_HINT = 'pip install "omnitrace-integrations[otel]"'

__all__ = [
    "CAPTURE_CONTENT_ENV",
    "GENAI_CAPTURE_CONTENT_ENV",
    "INSTALL_HINT",
    "OTelObserver",
    "OmniTraceInstrumentor",
    "content_capture_enabled",
]

_LAZY = {
    "OTelObserver": "omnitrace_integrations.otel.observer",
    "OmniTraceInstrumentor": "omnitrace_integrations.otel.instrumentor",
}


def __getattr__(name: str) -> Any:
    """Import the OpenTelemetry-dependent classes on first use, naming the extra if missing."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] in {"opentelemetry", "wrapt"}:
            raise ImportError(
                f"{name} needs OpenTelemetry ({exc.name} is missing): {INSTALL_HINT}", name=exc.name
            ) from exc
        raise
    return getattr(module, name)
