"""OmniTraceLLM: LlamaIndex's LLM interface over the tracer, with citation blocks."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CitableBlock,
    CitationBlock,
    MessageRole,
    TextBlock,
)
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler
from llamaindex_fakes import FakeTracer
from pydantic import Field

from omnitrace_core import ContextLengthError, TextSource, TracedAnswer
from omnitrace_integrations.llama_index import (
    OmniTraceAttributionEndEvent,
    OmniTraceLLM,
    OmniTraceSentenceCitedEvent,
)
from omnitrace_integrations.llama_index.llm import traced_answer


def _messages() -> list[ChatMessage]:
    return [
        ChatMessage(
            role=MessageRole.USER,
            blocks=[
                CitableBlock(source="node-a", title="Alpha", content="Alpha makes filters. Alpha is old."),
                CitableBlock(source="node-b", title="Beta", content="Beta makes motors."),
                TextBlock(text="What do they make?"),
            ],
        )
    ]


def test_chat_returns_text_citation_blocks_and_the_core_result(fake_tracer: FakeTracer) -> None:
    llm = OmniTraceLLM(tracer=fake_tracer)
    response = llm.chat(_messages())
    blocks = response.message.blocks
    assert (
        isinstance(blocks[0], TextBlock)
        and response.message.content == "Alpha makes filters. Beta makes motors."
    )
    cites = [b for b in blocks if isinstance(b, CitationBlock)]
    assert [(c.source, c.title, c.cited_content.text) for c in cites] == [  # type: ignore[union-attr]
        ("node-a", "Alpha", "Alpha makes filters. Alpha is old."),
        ("node-b", "Beta", "Beta makes motors."),
    ]
    assert cites[1].additional_location_info == {
        "sentence_index": 1,
        "start_char_index": 21,
        "end_char_index": 39,
        "source_start_char_index": 0,
        "source_end_char_index": 18,
    }
    payload = response.additional_kwargs["omnitrace"]
    answer = response.raw["omnitrace"]
    assert TracedAnswer.model_validate(json.loads(json.dumps(payload))) == answer == traced_answer(response)
    # usage where LlamaIndex's TokenCountingHandler reads it
    assert response.raw["usage"] == {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.generated_tokens,
        "total_tokens": answer.prompt_tokens + answer.generated_tokens,
    }
    # the model saw short labels, the caller sees its own ids
    assert [s.id for s in fake_tracer.calls[0]["sources"]] == ["doc1", "doc2"]
    assert answer.cited_source_ids == ["node-a", "node-b"]


def test_stream_chat_yields_citations_as_sentences_complete_and_ends_like_chat(
    fake_tracer: FakeTracer,
) -> None:
    llm = OmniTraceLLM(tracer=fake_tracer)
    chunks = list(llm.stream_chat(_messages()))
    deltas = "".join(c.delta or "" for c in chunks)
    assert deltas == "Alpha makes filters. Beta makes motors."
    first_cite = next(
        i for i, c in enumerate(chunks) if any(isinstance(b, CitationBlock) for b in c.message.blocks)
    )
    assert first_cite < len(chunks) - 3  # sentence 0 is cited before the answer ends
    assert "omnitrace_sentence" in chunks[first_cite].additional_kwargs
    assert chunks[-1].message == llm.chat(_messages()).message
    assert chunks[-1].additional_kwargs["omnitrace"] == llm.chat(_messages()).additional_kwargs["omnitrace"]


def test_complete_with_sources_and_split_units(fake_tracer: FakeTracer) -> None:
    llm = OmniTraceLLM(tracer=fake_tracer, split_sources=True)
    out = llm.complete(
        "What is old?", sources=[TextSource(id="a", text="Alpha makes filters. Alpha is old.")]
    )
    assert out.text == "Alpha makes filters."
    cite = out.additional_kwargs["omnitrace"]["sentences"][0]["citations"][0]
    assert (cite["unit_id"], cite["char_start"], cite["char_end"]) == ("a#0", 0, 20)
    assert fake_tracer.calls[0]["config"].split_sources is True


def test_async_forms_match_sync(fake_tracer: FakeTracer) -> None:
    llm = OmniTraceLLM(tracer=fake_tracer)

    async def run() -> tuple[ChatResponse, list[ChatResponse], Any]:
        whole = await llm.achat(_messages())
        parts = [c async for c in await llm.astream_chat(_messages())]
        done = await llm.acomplete("q?", sources=[TextSource(id="a", text="Alpha.")])
        return whole, parts, done

    whole, parts, done = asyncio.run(run())
    assert parts[-1].message == whole.message == llm.chat(_messages()).message
    assert done.text == "Alpha."


def test_metadata_is_the_models_and_loading_waits_for_first_use(fake_tracer: FakeTracer) -> None:
    lazy = OmniTraceLLM(model="not-loaded-yet")
    assert lazy._tracer is None  # constructing never loads weights
    meta = OmniTraceLLM(tracer=fake_tracer, max_new_tokens=32).metadata
    assert (meta.context_window, meta.num_output, meta.is_chat_model, meta.model_name) == (
        2048,
        32,
        True,
        "fake-model",
    )


def test_context_overflow_is_a_clear_error() -> None:
    llm = OmniTraceLLM(tracer=FakeTracer(max_source_chars=10))
    with pytest.raises(ContextLengthError, match="fake window of 10"):
        llm.chat(_messages())


class _Collect(BaseEventHandler):
    events: list[BaseEvent] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "Collect"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)


class _Explode(BaseEventHandler):
    @classmethod
    def class_name(cls) -> str:
        return "Explode"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        raise RuntimeError("handler failure")


def test_instrumentation_sees_a_span_and_an_event_per_sentence(fake_tracer: FakeTracer) -> None:
    root = get_dispatcher()
    collect, explode, spans = _Collect(events=[]), _Explode(), SimpleSpanHandler()
    for h in (explode, collect):
        root.add_event_handler(h)
    root.add_span_handler(spans)
    try:
        response = OmniTraceLLM(tracer=fake_tracer).chat(_messages())  # survives the failing handler
    finally:
        root.event_handlers.remove(explode)
        root.event_handlers.remove(collect)
        root.span_handlers.remove(spans)
    assert response.message.content
    cited = [e for e in collect.events if isinstance(e, OmniTraceSentenceCitedEvent)]
    end = [e for e in collect.events if isinstance(e, OmniTraceAttributionEndEvent)]
    assert [e.citations[0]["source_id"] for e in cited] == ["node-a", "node-b"]
    assert len(end) == 1 and end[0].cited_source_ids == ["node-a", "node-b"]
    span_ids = {e.span_id for e in [*cited, *end]}
    assert len(span_ids) == 1
    (span_id,) = span_ids
    assert span_id is not None and span_id.startswith("OmniTraceLLM.attribute-")
    closed = {s.id_: s for s in spans.completed_spans}
    assert span_id in closed and closed[span_id].parent_id is not None  # nested in the chat span
    assert closed[span_id].parent_id.startswith("OmniTraceLLM.chat-")  # type: ignore[union-attr]


def test_stop_is_accepted_and_trims_the_answer(tiny_tracer):
    """chat(stop=...) ends at the stop string, cuts it, with and without sources."""
    from llama_index.core.base.llms.types import ChatMessage

    from omnitrace_integrations.llama_index import OmniTraceLLM

    llm = OmniTraceLLM(tracer=tiny_tracer, max_new_tokens=20)
    msgs = [ChatMessage(role="user", content="hello there")]
    plain = llm.chat(msgs).message.content
    stop = plain[6:9]
    cut = llm.chat(msgs, stop=[stop])
    assert cut.message.content == plain[: plain.find(stop)]
    assert cut.additional_kwargs["finish_reason"] == "stop"
    traced = llm.chat(msgs, sources=[{"id": "d", "text": "The lighthouse stands 42 metres tall."}])
    text = traced.raw["omnitrace"].text
    stop2 = text[len(text) // 2 : len(text) // 2 + 3]
    cut2 = llm.chat(msgs, sources=[{"id": "d", "text": "The lighthouse stands 42 metres tall."}], stop=stop2)
    assert cut2.raw["omnitrace"].text == text[: text.find(stop2)] and cut2.raw["finish_reason"] == "stop"
