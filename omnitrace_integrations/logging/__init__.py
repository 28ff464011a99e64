"""structlog events for OmniTrace, and a processor linking log records to OpenTelemetry traces.

The library logs through ``structlog.get_logger("omnitrace")`` and never configures structlog
or the root logger. Needs ``pip install "omnitrace-integrations[otel]"`` (structlog).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omnitrace_integrations.logging import events
from omnitrace_integrations.logging.processors import add_otel_context

if TYPE_CHECKING:
    from omnitrace_integrations.logging.observer import StructlogObserver

INSTALL_HINT = 'pip install "omnitrace-integrations[otel]"'

__all__ = ["INSTALL_HINT", "StructlogObserver", "add_otel_context", "events"]


def __getattr__(name: str) -> Any:
    """Import :class:`StructlogObserver` on first use, naming the extra if structlog is missing."""
    if name != "StructlogObserver":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from omnitrace_integrations.logging.observer import StructlogObserver
    except ImportError as exc:
        if exc.name == "structlog":
            raise ImportError(f"StructlogObserver needs structlog: {INSTALL_HINT}", name=exc.name) from exc
        raise
    return StructlogObserver
