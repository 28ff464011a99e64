"""LangChain integration: a chat model that cites, a callback handler, helpers and grounding checks.

Requires the ``langchain`` extra::

    pip install "omnitrace-integrations[langchain]"

Names are imported lazily, so ``import omnitrace_integrations.langchain`` is cheap and the
model weights load only on first use of :class:`ChatOmniTrace`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

try:  # fail early, naming the extra, when LangChain is missing
    import langchain_core  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        'omnitrace_integrations.langchain needs LangChain: pip install "omnitrace-integrations[langchain]"'
    ) from exc

if TYPE_CHECKING:
    from omnitrace_core.grounding import (
        GroundingThresholds,
        GroundingVerdict,
        SentenceVerdict,
        assess_grounding,
    )
    from omnitrace_integrations.langchain.callbacks import CitedRun, OmniTraceCallbackHandler
    from omnitrace_integrations.langchain.chat_model import CITATION_EVENT, ChatOmniTrace
    from omnitrace_integrations.langchain.citations import (
        citations_by_sentence,
        cited_documents,
        cited_documents_by_sentence,
        field_citations,
        render_cited_answer,
        traced_answer,
    )
    from omnitrace_integrations.langchain.grounding import GroundingCheck, UngroundedAnswerError
    from omnitrace_integrations.langchain.messages import UnsupportedContentError

_EXPORTS: dict[str, str] = {
    "ChatOmniTrace": "chat_model",
    "CITATION_EVENT": "chat_model",
    "OmniTraceCallbackHandler": "callbacks",
    "CitedRun": "callbacks",
    "cited_documents": "citations",
    "cited_documents_by_sentence": "citations",
    "citations_by_sentence": "citations",
    "field_citations": "citations",
    "render_cited_answer": "citations",
    "traced_answer": "citations",
    "GroundingCheck": "grounding",
    "UngroundedAnswerError": "grounding",
    "UnsupportedContentError": "messages",
    "GroundingThresholds": "omnitrace_core.grounding",
    "GroundingVerdict": "omnitrace_core.grounding",
    "SentenceVerdict": "omnitrace_core.grounding",
    "assess_grounding": "omnitrace_core.grounding",
}

__all__ = [
    "CITATION_EVENT",
    "ChatOmniTrace",
    "CitedRun",
    "GroundingCheck",
    "GroundingThresholds",
    "GroundingVerdict",
    "OmniTraceCallbackHandler",
    "SentenceVerdict",
    "UngroundedAnswerError",
    "UnsupportedContentError",
    "assess_grounding",
    "citations_by_sentence",
    "cited_documents",
    "cited_documents_by_sentence",
    "field_citations",
    "render_cited_answer",
    "traced_answer",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module if "." in module else f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
