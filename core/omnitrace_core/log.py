"""Library logging: key-value events through structlog, configured by the application only.

``get_logger()`` returns ``structlog.get_logger("omnitrace")`` when structlog is installed
*and* the application configured it (``structlog.is_configured()``); otherwise a stdlib
``logging.getLogger("omnitrace")`` adapter with the same call shape
(``log.warning("input_rejected", reason=...)``) that renders ``event key=value ...`` and puts
the fields in ``record.omnitrace_fields``. The library never configures structlog or logging,
and an application that uses neither sees nothing new on stdout.
"""

from __future__ import annotations

import logging
from typing import Any

LOGGER_NAME = "omnitrace"


class _StdlibEvents:
    """stdlib fallback with structlog's call shape."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _log(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            rendered = " ".join(f"{k}={v!r}" for k, v in fields.items())
            self._logger.log(
                level, "%s %s", event, rendered, extra={"omnitrace_event": event, "omnitrace_fields": fields}
            )

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)


class _EventLogger:
    """Picks structlog or stdlib at each call, so configuring structlog later takes effect."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._stdlib = _StdlibEvents(name)

    def _target(self) -> Any:
        try:
            import structlog
        except ImportError:
            return self._stdlib
        return structlog.get_logger(self._name) if structlog.is_configured() else self._stdlib

    def debug(self, event: str, **fields: Any) -> None:
        self._target().debug(event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self._target().info(event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._target().warning(event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self._target().error(event, **fields)


def get_logger(name: str = LOGGER_NAME) -> _EventLogger:
    """The library's event logger (see module docstring)."""
    return _EventLogger(name)
