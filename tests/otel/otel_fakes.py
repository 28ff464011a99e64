"""Test doubles for the OpenTelemetry and logging tests: hand-built answers and a fake tracer.

The fake tracer is a real :class:`omnitrace_core.Tracer` subclass without a model: its
``stream`` / ``attribute`` replay scripted events through the core's own observer delivery
(``Tracer._observed``), so observers see exactly what a real generation sends them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from omnitrace_core import TracedAnswer, Tracer
from omnitrace_core.config import TracerConfig
from omnitrace_core.models import LoadedModel
from omnitrace_core.observers import GenerationInfo, ObserverHub, TraceObserver, new_run_id
from omnitrace_core.results import FinalEvent, SentenceEvent, StreamEvent, TextDelta
from tests import factories
from tests.factories import make_citation

SOURCES = {
    "doc1": "The Eiffel Tower is in Paris. It was completed in 1889.",
    "doc2": "Mount Fuji is the highest mountain in Japan.",
}
MODEL = "fake-135m"


def make_answer(mode: str = "generate") -> TracedAnswer:
    """A two-sentence answer: the first cites two units, the second cites nothing."""
    s0_text = "The Eiffel Tower is in Paris and was finished in 1889."
    s1_text = " I am not sure about the rest."
    cit = [
        make_citation(
            "doc1", 0.75, "The Eiffel Tower is in Paris.", unit_id="doc1#0",
            title="Eiffel", url="https://example.org/eiffel", metadata={"lang": "en"},
        ),
        make_citation("doc1", 0.25, "It was completed in 1889.", unit_id="doc1#1", char_start=30),
    ]  # fmt: skip
    return factories.make_answer(
        [
            (s0_text, cit, {"token_end": 14, "source_mass": {"doc1": 0.9, "doc2": 0.1}}),
            (s1_text, [], {"token_end": 22, "source_mass": {"doc1": 0.5, "doc2": 0.5}}),
        ],
        text=s0_text + s1_text,
        sources=SOURCES,
        model=MODEL,
        mode=mode,  # type: ignore[arg-type]
        prompt_tokens=120,
        timings={"total_s": 1.5, "first_token_s": 0.2},
    )


class FakeTracer(Tracer):
    """A model-free Tracer that replays ``answer`` through the core's observer delivery.

    Args:
        answer: What every call returns.
        fail_after: Raise ``RuntimeError`` after this many sentence events (None: never).
        sentence_delay_s: Sleep between sentences (to look like decoding).
    """

    def __init__(
        self,
        answer: TracedAnswer | None = None,
        *,
        observers: Sequence[TraceObserver] = (),
        fail_after: int | None = None,
        sentence_delay_s: float = 0.0,
    ) -> None:
        self.loaded = LoadedModel(model=None, tokenizer=None, name=MODEL)
        self.config = TracerConfig()
        self.observers = ObserverHub()
        for obs in observers:
            self.observers.add(obs)
        self.answer = answer or make_answer()
        self.fail_after = fail_after
        self.sentence_delay_s = sentence_delay_s

    def _info(self, operation: str, question: str, request: dict[str, Any]) -> GenerationInfo:  # type: ignore[override]
        return GenerationInfo(
            run_id=new_run_id(),
            operation=operation,
            model=MODEL,
            signal="attmean",
            source_ids=tuple(SOURCES),
            question=question,
            prompt_tokens=self.answer.prompt_tokens,
            request=request,
            sources=dict(SOURCES),
        )

    def _events(self, answer: TracedAnswer) -> Iterator[StreamEvent]:
        for k, sentence in enumerate(answer.sentences):
            if self.fail_after is not None and k >= self.fail_after:
                raise RuntimeError("decoder exploded")
            if self.sentence_delay_s:
                time.sleep(self.sentence_delay_s)
            yield TextDelta(text=sentence.text, token_index=sentence.token_end - 1)
            yield SentenceEvent(sentence=sentence)
        yield FinalEvent(answer=answer)

    def stream(
        self, sources: Any, question: str, *, config: Any = None, **kwargs: Any
    ) -> Iterator[StreamEvent]:
        request = {"max_new_tokens": 64, "no_repeat_ngram_size": 3, "do_sample": False, **kwargs}
        info = self._info("chat", question, request)
        yield from self._observed(info, self._events(self.answer))

    def _run_events(  # type: ignore[override]
        self, sources: Any, question: str, config: Any, generation_kwargs: dict[str, Any], threaded: bool
    ) -> Iterator[StreamEvent]:
        # Tracer.generate() runs the event pipeline directly (no worker thread); replay instead.
        return self.stream(sources, question, config=config, **generation_kwargs)

    def attribute(self, sources: Any, question: str, response: str, *, config: Any = None) -> TracedAnswer:
        answer = make_answer(mode="attribute")
        final = None
        for event in self._observed(self._info("attribute", question, {}), self._events(answer)):
            if isinstance(event, FinalEvent):
                final = event.answer
        assert final is not None
        return final
