"""Test helpers for the LlamaIndex integration: a scripted tracer and a small real embedding.

``FakeTracer`` has the core tracer's interface (``stream`` / ``generate``, ``config``,
``loaded``) and returns hand-built :class:`omnitrace_core.TracedAnswer` objects, so the
integration is tested against real LlamaIndex objects without loading a model. It validates
its inputs with the core's own validation and streams the way the core does: a sentence
event as soon as the next sentence has begun.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding

from omnitrace_core import (
    ContextLengthError,
    FinalEvent,
    InvalidInputError,
    SentenceEvent,
    SourceUnit,
    StreamEvent,
    TextDelta,
    TextSource,
    TracedAnswer,
    TracerConfig,
)
from omnitrace_core.sources import split_into_sentences, validate_sources
from tests.factories import SentenceSpec, make_answer, make_citation, make_source_info, make_unit

# A script maps (sources as the model sees them, question) -> [(sentence, [cited prompt ids])].
Script = Callable[[list[TextSource], str], list[tuple[str, list[str]]]]


def extractive_script(sources: list[TextSource], question: str) -> list[tuple[str, list[str]]]:
    """Answer with the first sentence of the first two sources, each citing its own source."""
    out = []
    for src in sources[:2]:
        a, b = split_into_sentences(src.text.strip())[0]
        out.append((src.text.strip()[a:b], [src.id]))
    return out


@dataclass
class _Loaded:
    name: str = "fake-model"
    context_window: int = 2048


@dataclass
class FakeTracer:
    """A scripted stand-in for :class:`omnitrace_core.Tracer` (no model).

    Args:
        script: Decides the answer sentences and what each cites.
        max_source_chars: Total source length above which ``ContextLengthError`` is raised.
    """

    script: Script = extractive_script
    max_source_chars: int = 100_000
    config: TracerConfig = field(default_factory=TracerConfig)
    loaded: _Loaded = field(default_factory=_Loaded)
    calls: list[dict[str, Any]] = field(default_factory=list)

    def generate(
        self, sources: Any, question: str, *, config: TracerConfig | None = None, **kw: Any
    ) -> TracedAnswer:
        final = None
        for event in self.stream(sources, question, config=config, **kw):
            if isinstance(event, FinalEvent):
                final = event.answer
        assert final is not None
        return final

    def stream(
        self, sources: Any, question: str, *, config: TracerConfig | None = None, **kw: Any
    ) -> Iterator[StreamEvent]:
        cfg = config or self.config
        srcs = validate_sources(sources)
        if not question or not question.strip():
            raise InvalidInputError("question is empty")
        total = sum(len(s.text) for s in srcs)
        if total > self.max_source_chars:
            raise ContextLengthError(
                f"prompt is {total} source chars: > the fake window of {self.max_source_chars}"
            )
        self.calls.append({"sources": srcs, "question": question, "config": cfg, "kwargs": kw})
        units = _units(srcs, cfg.split_sources)
        plan = self.script(srcs, question)
        answer = make_answer(
            [_sentence(sentence, cited, srcs, units) for sentence, cited in plan],
            sources=[
                make_source_info(s.id, title=s.title, url=s.url, metadata=s.metadata, units=units[s.id]) for s in srcs
            ],
            model=self.loaded.name,
            signal=cfg.signal,
            generated_tokens=sum(len(sentence.split()) for sentence, _ in plan),
            config=cfg.model_dump(mode="json"),
        )
        text, sentences = answer.text, answer.sentences
        spans = [(s.char_start, s.char_end) for s in sentences]
        emitted = 0
        done = 0
        for k, m in enumerate(re.finditer(r"\S+\s*", text)):
            yield TextDelta(text=m.group(), token_index=k)
            emitted = m.end()
            # a sentence is complete once the next one has begun
            while done + 1 < len(sentences) and emitted > spans[done + 1][0]:
                yield SentenceEvent(sentence=sentences[done])
                done += 1
        for s in sentences[done:]:
            yield SentenceEvent(sentence=s)
        yield FinalEvent(answer=answer)


def _units(srcs: list[TextSource], split: bool) -> dict[str, list[SourceUnit]]:
    out: dict[str, list[SourceUnit]] = {}
    for s in srcs:
        pieces = split_into_sentences(s.text) if split else [(0, len(s.text))]
        out[s.id] = [
            make_unit(s.id, s.text[a:b], index=k, unit_id=f"{s.id}#{k}" if split else s.id, char_start=a)
            for k, (a, b) in enumerate(pieces)
        ]
    return out


def _sentence(
    text: str, cited: list[str], srcs: list[TextSource], units: dict[str, list[SourceUnit]]
) -> SentenceSpec:
    """A ``make_answer`` sentence citing, of each cited source, the unit sharing most words with it."""
    by_id = {s.id: s for s in srcs}
    citations = []
    for sid in cited:
        src = by_id.get(sid)
        # pick the unit sharing most words with the sentence (last unit when split and tied)
        cands = units.get(sid) or [make_unit(sid, "?")]
        words = set(text.lower().split())
        unit = max(cands, key=lambda u: len(words & set(u.text.lower().split())))
        citations.append(
            make_citation(
                sid,
                1.0 / len(cited),
                unit.text,
                unit_id=unit.unit_id,
                char_start=unit.char_start,
                char_end=unit.char_end,
                title=src.title if src else None,
                url=src.url if src else None,
                metadata=dict(src.metadata) if src else {},
            )
        )
    mass = {s.id: (0.9 if s.id in cited else 0.1) for s in srcs}
    norm = sum(mass.values())
    # every sentence spans token 0..1, as before
    return text, citations, {"token_start": 0, "token_end": 1, "source_mass": {k: v / norm for k, v in mass.items()}}


class HashEmbedding(BaseEmbedding):
    """A small, deterministic bag-of-words embedding (hashed word counts, L2-normalised).

    A real ``BaseEmbedding`` implementation, so indexes and retrievers run for real in unit
    tests without loading a neural embedding model.
    """

    dim: int = 256

    @classmethod
    def class_name(cls) -> str:
        return "HashEmbedding"

    def _embed(self, text: str) -> list[float]:
        vec = [0.0] * self.dim
        for word in re.findall(r"[a-z0-9]+", text.lower()):
            vec[int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        norm = math.sqrt(sum(v * v for v in vec)) or 1.0
        return [v / norm for v in vec]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embed(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embed(text)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._embed(query)


DOCS = [
    (
        "valbrook",
        "Valbrook Works",
        "Valbrook Works was founded in 1905 in Cedar Falls. The company makes water filters and "
        "employs 405 people.",
    ),
    (
        "vorbrook",
        "Vorbrook Labs",
        "Vorbrook Labs was founded in 2009 in Port Ashby. The company makes hearing aids and "
        "employs 3397 people.",
    ),
    (
        "valulon",
        "Valulon Industries",
        "Valulon Industries was founded in 1909 in Mistral Point. The company makes solar batteries.",
    ),
]
