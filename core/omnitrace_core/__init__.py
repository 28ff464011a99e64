"""OmniTrace core: generation-time source attribution for local Hugging Face models.

Framework-free: imports torch, transformers, spacy and pydantic only.

    >>> from omnitrace_core import Tracer, TextSource
    >>> tracer = Tracer.from_default()
    >>> answer = tracer.generate(sources=[TextSource(id="doc1", text="...")], question="...")
"""

from omnitrace_core.config import CurationConfig, GenerationConfig, MappingConfig, TracerConfig
from omnitrace_core.errors import (
    CaptureError,
    ContextLengthError,
    InvalidInputError,
    ModelLoadError,
    OmniTraceError,
    UnknownNameError,
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
from omnitrace_core.sources import SourceUnit, TextSource
from omnitrace_core.tracer import Tracer

__version__ = "0.1.0"

__all__ = [
    "AttGrads",
    "AttMean",
    "CaptureError",
    "Citation",
    "ContextLengthError",
    "CurationConfig",
    "FinalEvent",
    "GenerationConfig",
    "InvalidInputError",
    "MappingConfig",
    "ModelLoadError",
    "OmniTraceError",
    "RawAtt",
    "SentenceAttribution",
    "SentenceEvent",
    "Signal",
    "SourceInfo",
    "SourceUnit",
    "StreamEvent",
    "TextDelta",
    "TextSource",
    "TokenAttribution",
    "TracedAnswer",
    "Tracer",
    "TracerConfig",
    "UnknownNameError",
    "available_signals",
    "register_signal",
]
