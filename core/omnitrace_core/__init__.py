"""OmniTrace core: generation-time source attribution for local Hugging Face models.

Framework-free: imports torch, transformers, spacy and pydantic only.

    >>> from omnitrace_core import Tracer, TextSource
    >>> tracer = Tracer.from_default()
    >>> answer = tracer.generate(sources=[TextSource(id="doc1", text="...")], question="...")
"""

from omnitrace_core import _moved
from omnitrace_core.config import (
    CurationConfig,
    GenerationConfig,
    MappingConfig,
    RerankConfig,
    TracerConfig,
)
from omnitrace_core.decoding import Grammar
from omnitrace_core.errors import (
    CaptureError,
    ContextLengthError,
    InvalidInputError,
    MediaError,
    MissingDependencyError,
    ModelLoadError,
    OmniTraceError,
    UnknownNameError,
    UnsupportedModalityError,
)
from omnitrace_core.results import (
    Citation,
    FinalEvent,
    SentenceAttribution,
    SentenceEvent,
    SourceInfo,
    StreamEvent,
    TextDelta,
    TokenAttribution,
    TracedAnswer,
)
from omnitrace_core.signals import AttGrads, AttMean, RawAtt, Signal, available_signals, register_signal
from omnitrace_core.sources import MediaSource, SourceUnit, TextSource, TimedSegment
from omnitrace_core.structured import FieldCitation, field_citations
from omnitrace_core.tools import ToolCall, ToolSpec
from omnitrace_core.tracer import Tracer

__version__ = "0.1.0"

_moved.install()  # old module paths (omnitrace_core.metrics, ...) keep importing

__all__ = [
    "AttGrads",
    "AttMean",
    "CaptureError",
    "Citation",
    "ContextLengthError",
    "CurationConfig",
    "FieldCitation",
    "FinalEvent",
    "GenerationConfig",
    "Grammar",
    "InvalidInputError",
    "MappingConfig",
    "MediaError",
    "MediaSource",
    "MissingDependencyError",
    "ModelLoadError",
    "OmniTraceError",
    "RawAtt",
    "RerankConfig",
    "SentenceAttribution",
    "SentenceEvent",
    "Signal",
    "SourceInfo",
    "SourceUnit",
    "StreamEvent",
    "TextDelta",
    "TextSource",
    "TimedSegment",
    "TokenAttribution",
    "ToolCall",
    "ToolSpec",
    "TracedAnswer",
    "Tracer",
    "TracerConfig",
    "UnknownNameError",
    "UnsupportedModalityError",
    "available_signals",
    "field_citations",
    "register_signal",
]
