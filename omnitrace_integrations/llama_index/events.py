"""LlamaIndex instrumentation: a span around attribution and an event per cited sentence.

Anything attached to LlamaIndex's dispatcher (event handlers, span handlers and the
OpenTelemetry integrations built on them) sees OmniTrace citations without extra code:

- a span ``OmniTraceLLM.attribute-<uuid>`` (child of the LLM call's span) around decoding
  and attribution, closed when the answer is complete (or dropped on error);
- one :class:`OmniTraceSentenceCitedEvent` per answer sentence, as soon as it is complete;
- one :class:`OmniTraceAttributionEndEvent` with the summary.

LlamaIndex's dispatcher isolates handlers: one that raises never breaks the answer.
"""

from __future__ import annotations

import inspect
import uuid
from typing import Any

import llama_index.core.instrumentation as instrument
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.span import active_span_id
from llama_index_instrumentation.dispatcher import active_instrument_tags

from omnitrace_core import SentenceAttribution, TracedAnswer

dispatcher = instrument.get_dispatcher(__name__)


class OmniTraceSentenceCitedEvent(BaseEvent):
    """One answer sentence and the sources it was attributed to.

    Attributes:
        run_id: Shared by every event of one generation.
        sentence_index: Position of the sentence in the answer.
        text: The sentence.
        char_start: Start of the sentence in the answer text.
        char_end: End of the sentence in the answer text.
        grounded: False when no source is cited.
        citations: ``source_id``, ``unit_id``, ``score``, ``title``, ``char_start``,
            ``char_end`` (in the source) of each citation, best first.
    """

    run_id: str
    sentence_index: int
    text: str
    char_start: int
    char_end: int
    grounded: bool
    citations: list[dict[str, Any]]

    @classmethod
    def class_name(cls) -> str:
        return "OmniTraceSentenceCitedEvent"

    @classmethod
    def from_sentence(
        cls, run_id: str, sentence: SentenceAttribution, span_id: str
    ) -> OmniTraceSentenceCitedEvent:
        return cls(
            run_id=run_id,
            span_id=span_id,
            sentence_index=sentence.index,
            text=sentence.text,
            char_start=sentence.char_start,
            char_end=sentence.char_end,
            grounded=sentence.grounded,
            citations=[
                {
                    "source_id": c.source_id,
                    "unit_id": c.unit_id,
                    "score": c.score,
                    "title": c.title,
                    "char_start": c.char_start,
                    "char_end": c.char_end,
                }
                for c in sentence.citations
            ],
        )


class OmniTraceAttributionEndEvent(BaseEvent):
    """Summary of one attributed answer.

    Attributes:
        run_id: Shared by every event of one generation.
        model: Model name.
        signal: Attribution signal.
        cited_source_ids: Cited sources, in order of first citation.
        sentences: Number of sentences.
        grounded_sentences: Sentences with at least one citation.
        finish_reason: ``stop`` or ``length``.
        errors: Failures recorded by the tracer (the answer is still complete).
    """

    run_id: str
    model: str
    signal: str
    cited_source_ids: list[str]
    sentences: int
    grounded_sentences: int
    finish_reason: str | None = None
    errors: list[str]

    @classmethod
    def class_name(cls) -> str:
        return "OmniTraceAttributionEndEvent"


def _attribute_signature(model: str, source_ids: list[str], question: str) -> None:
    """Signature reported to span handlers for the attribution span."""


class AttributionSpan:
    """A dispatcher span that can stay open across a stream.

    ``dispatcher.span`` closes when the decorated function returns, which for a generator is
    before the first token; this span is entered and exited explicitly instead, and events
    carry its id explicitly, so they attach to it whichever thread or task consumes the stream.

    Args:
        instance: The object the span belongs to (the LLM).
        model: Model name.
        source_ids: Source ids in prompt order.
        question: The question.
    """

    def __init__(self, instance: Any, model: str, source_ids: list[str], question: str) -> None:
        self.id_ = f"{type(instance).__name__}.attribute-{uuid.uuid4()}"
        self.run_id = uuid.uuid4().hex
        self.instance = instance
        self.bound_args = inspect.signature(_attribute_signature).bind(model, source_ids, question)
        self.parent_id = active_span_id.get()
        self._open = False

    def enter(self) -> None:
        dispatcher.span_enter(
            id_=self.id_,
            bound_args=self.bound_args,
            instance=self.instance,
            parent_id=self.parent_id,
            tags=active_instrument_tags.get(),
        )
        self._open = True

    def sentence(self, sentence: SentenceAttribution) -> None:
        dispatcher.event(OmniTraceSentenceCitedEvent.from_sentence(self.run_id, sentence, self.id_))

    def finish(self, answer: TracedAnswer) -> None:
        dispatcher.event(
            OmniTraceAttributionEndEvent(
                span_id=self.id_,
                run_id=self.run_id,
                model=answer.model,
                signal=answer.signal,
                cited_source_ids=answer.cited_source_ids,
                sentences=len(answer.sentences),
                grounded_sentences=sum(1 for s in answer.sentences if s.grounded),
                finish_reason=answer.finish_reason,
                errors=list(answer.errors),
            )
        )
        if self._open:
            self._open = False
            dispatcher.span_exit(
                id_=self.id_, bound_args=self.bound_args, instance=self.instance, result=answer
            )

    def drop(self, err: BaseException | None) -> None:
        if self._open:
            self._open = False
            dispatcher.span_drop(id_=self.id_, bound_args=self.bound_args, instance=self.instance, err=err)
