"""structlog processors an application can add to its own configuration."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

TRACE_ID_KEY = "trace_id"
SPAN_ID_KEY = "span_id"


def add_otel_context(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Put the current OpenTelemetry ``trace_id`` / ``span_id`` (hex) in each record.

    Add it to *your* processors, e.g.
    ``structlog.configure(processors=[add_otel_context, structlog.processors.JSONRenderer()])``.
    Records outside a valid span, or without OpenTelemetry installed, pass unchanged; keys
    already present are kept. Observer events run in a copy of the caller's context, so they
    carry the span that was current when ``generate`` was called.
    """
    try:
        from opentelemetry import trace
    except ImportError:  # OpenTelemetry is optional for logging
        return event_dict
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict.setdefault(TRACE_ID_KEY, trace.format_trace_id(ctx.trace_id))
        event_dict.setdefault(SPAN_ID_KEY, trace.format_span_id(ctx.span_id))
    return event_dict
