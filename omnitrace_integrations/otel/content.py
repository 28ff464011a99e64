"""Whether message and source content goes into spans (off by default, like GenAI conventions).

Ids, scores, character spans and counts are always recorded; the question, the sources' text,
the answer, each sentence and each cited unit's text only when content capture is on: either
the observer's ``capture_content=True`` or one of the environment variables below set to a
true value (``1``, ``true``, ``yes``, ``on``).
"""

from __future__ import annotations

import os
from typing import Final

CAPTURE_CONTENT_ENV: Final = "OMNITRACE_OTEL_CAPTURE_CONTENT"
"""OmniTrace's own switch."""
GENAI_CAPTURE_CONTENT_ENV: Final = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
"""The switch shared by OpenTelemetry's GenAI instrumentations (honoured too)."""

_TRUE = frozenset({"1", "true", "yes", "on"})


def content_capture_enabled(flag: bool | None = None) -> bool:
    """Resolve the content-capture setting.

    Args:
        flag: An explicit choice (wins over the environment); ``None`` reads the environment.

    Returns:
        True when content may be recorded.
    """
    if flag is not None:
        return flag
    return any(
        os.environ.get(name, "").strip().lower() in _TRUE
        for name in (CAPTURE_CONTENT_ENV, GENAI_CAPTURE_CONTENT_ENV)
    )


def truncate(text: str, limit: int | None) -> str:
    """Cut ``text`` to ``limit`` characters (``None``: no limit), marking the cut with an ellipsis."""
    if limit is None or len(text) <= limit:
        return text
    return text[: max(0, limit - 1)] + "…"
