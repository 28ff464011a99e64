"""Prompt builders: how a model is shown the sources, and which media it reads natively.

The tracer asks its builder for a :class:`~omnitrace_core.sources.PromptLayout` (token ids,
every unit's token span, extra model inputs). Text models use :class:`TextPromptBuilder`;
omni / vision-language models use a builder that runs their processor and finds the media
tokens (the media room's, reached through :mod:`omnitrace_core.plugins`). Sources a model
cannot read are either rejected by name or, for audio with ``audio_fallback="asr"``,
transcribed first (:func:`prepare_sources`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from omnitrace_core import plugins
from omnitrace_core.config import TracerConfig
from omnitrace_core.errors import UnsupportedModalityError
from omnitrace_core.sources import MediaSource, PromptLayout, Source, build_prompt


class PromptBuilder(Protocol):
    """Lays sources and a question out for one model."""

    modalities: frozenset[str]
    """Media modalities (``image``, ``audio``, ``video``) the model reads natively."""

    def build(self, sources: Sequence[Source], question: str, config: TracerConfig) -> PromptLayout: ...


class TextPromptBuilder:
    """The chat-template text layout of :func:`~omnitrace_core.sources.build_prompt`."""

    modalities: frozenset[str] = frozenset()

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def build(self, sources: Sequence[Source], question: str, config: TracerConfig) -> PromptLayout:
        return build_prompt(self.tokenizer, sources, question, config.system_prompt, config.split_sources)


def prepare_sources(
    sources: Sequence[Source], builder: PromptBuilder, config: TracerConfig, model_name: str
) -> list[Source]:
    """Keep what the model reads natively; transcribe audio when asked; reject the rest by name.

    Raises:
        UnsupportedModalityError: naming the model, the source and its modality.
    """
    out: list[Source] = []
    for src in sources:
        if not isinstance(src, MediaSource) or src.modality in builder.modalities:
            out.append(src)
            continue
        if src.modality == "audio" and config.audio_fallback == "asr":
            out.append(plugins.transcribe(src, "asr", config.asr_model))
            continue
        hint = (
            " Set audio_fallback='asr' (CLI: --asr) to transcribe it offline and cite its seconds."
            if src.modality == "audio"
            else " Load a vision-language / omni model (e.g. a local Qwen2.5-VL or Qwen2.5-Omni folder)."
        )
        reads = ", ".join(sorted(builder.modalities)) or "text only"
        raise UnsupportedModalityError(
            f"model {model_name!r} cannot take {src.modality} sources (source {src.id!r}); "
            f"it reads {reads}.{hint}"
        )
    return out
