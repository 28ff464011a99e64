"""A span-exporter wrapper that logs export failures as structured events and never raises.

The OpenTelemetry SDK already keeps a failing exporter away from the application; wrapping it
in :class:`LoggedSpanExporter` adds one ``exporter_failed`` structlog event (rate-limited) so the
failure is visible in the app's own logs next to the generation events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from omnitrace_integrations.logging.events import EXPORTER_FAILED, LOGGER_NAME

try:
    import structlog
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f'LoggedSpanExporter needs {exc.name}: pip install "omnitrace-integrations[otel]"', name=exc.name
    ) from exc


class LoggedSpanExporter(SpanExporter):
    """Delegates to ``exporter``; on an exception or a FAILURE result logs ``exporter_failed``.

    Args:
        exporter: The real exporter (OTLP, console, in-memory...).
        min_interval_s: Log at most one failure event per this many seconds.
        logger: structlog logger (default ``structlog.get_logger("omnitrace")``).
    """

    def __init__(
        self, exporter: SpanExporter, *, min_interval_s: float = 60.0, logger: Any | None = None
    ) -> None:
        self.exporter = exporter
        self.min_interval_s = min_interval_s
        self._log = logger if logger is not None else structlog.get_logger(LOGGER_NAME)
        self._last = -1e18
        self._suppressed = 0
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.exporter.export(spans)
        except Exception as exc:
            self._failed(len(spans), f"{type(exc).__name__}: {exc}")
            return SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self._failed(len(spans), f"exporter returned {result.name}")
        return result

    def shutdown(self) -> None:
        try:
            self.exporter.shutdown()
        except Exception as exc:
            self._failed(0, f"shutdown failed: {type(exc).__name__}: {exc}")

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        try:
            return bool(self.exporter.force_flush(timeout_millis))
        except Exception as exc:
            self._failed(0, f"force_flush failed: {type(exc).__name__}: {exc}")
            return False

    def _failed(self, dropped: int, reason: str) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.min_interval_s:
                self._suppressed += 1
                return
            self._last, suppressed, self._suppressed = now, self._suppressed, 0
        self._log.error(
            EXPORTER_FAILED,
            exporter=type(self.exporter).__name__,
            spans_dropped=dropped,
            reason=reason,
            suppressed_since_last=suppressed,
        )
