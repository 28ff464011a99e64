"""LlamaIndex integration: an attention-cited LLM and a citation query engine.

Requires the ``llama-index`` extra::

    pip install "omnitrace-integrations[llama-index]"

The ``[n]`` markers of :class:`OmniTraceCitationQueryEngine` come from where the answer's
tokens actually looked (OmniTrace attribution), not from markers the model writes, so it
cannot cite a node that was not retrieved or emit a marker without a node.

Names are imported lazily, so ``import omnitrace_integrations.llama_index`` is cheap and the
model weights load only on first use of :class:`OmniTraceLLM`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

try:  # fail early, naming the extra, when LlamaIndex is missing
    import llama_index.core  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "omnitrace_integrations.llama_index needs LlamaIndex: "
        'pip install "omnitrace-integrations[llama-index]"'
    ) from exc

if TYPE_CHECKING:
    from omnitrace_integrations.llama_index.events import (
        OmniTraceAttributionEndEvent,
        OmniTraceSentenceCitedEvent,
    )
    from omnitrace_integrations.llama_index.llm import (
        OmniTraceLLM,
        OmniTraceStructuredLLM,
        field_citations,
        traced_answer,
    )
    from omnitrace_integrations.llama_index.markers import MarkerPlacer
    from omnitrace_integrations.llama_index.query_engine import OmniTraceCitationQueryEngine
    from omnitrace_integrations.llama_index.sources import PreparedSources, prepare_node_sources
    from omnitrace_integrations.llama_index.synthesizer import OmniTraceSynthesizer

_EXPORTS = {
    "OmniTraceLLM": "llm",
    "traced_answer": "llm",
    "field_citations": "llm",
    "OmniTraceStructuredLLM": "llm",
    "OmniTraceSynthesizer": "synthesizer",
    "OmniTraceCitationQueryEngine": "query_engine",
    "OmniTraceSentenceCitedEvent": "events",
    "OmniTraceAttributionEndEvent": "events",
    "MarkerPlacer": "markers",
    "PreparedSources": "sources",
    "prepare_node_sources": "sources",
}

__all__ = [
    "MarkerPlacer",
    "OmniTraceAttributionEndEvent",
    "OmniTraceCitationQueryEngine",
    "OmniTraceLLM",
    "OmniTraceSentenceCitedEvent",
    "OmniTraceStructuredLLM",
    "OmniTraceSynthesizer",
    "PreparedSources",
    "field_citations",
    "prepare_node_sources",
    "traced_answer",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
