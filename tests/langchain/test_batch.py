"""ChatOmniTrace.batch / abatch: inputs with sources decode together, each message as invoke's."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.documents import Document

from omnitrace_integrations.langchain import ChatOmniTrace, OmniTraceCallbackHandler

QUESTIONS = ["How tall is the lighthouse?", "When was Valbrook Works founded?", "Who lit the lamp?"]


@pytest.fixture()
def docs() -> list[Document]:
    return [
        Document("Valbrook Works was founded in 1905 in Cedar Falls.", id="valbrook"),
        Document("The lighthouse stands 42 metres tall. Its keeper lit the lamp every night.", id="lighthouse"),
    ]


@pytest.fixture()
def decodings(tiny_tracer: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The batch size of every model.generate call the tracer makes."""
    sizes: list[int] = []
    model = tiny_tracer.model
    real = model.generate

    def counted(*args: Any, **kwargs: Any) -> Any:
        sizes.append(int(kwargs["input_ids"].shape[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", counted)
    return sizes


def _shape(message: Any) -> dict[str, Any]:
    """What must equal between batch and invoke: text, citations (scores to 1e-5), usage."""
    (block,) = message.content
    return {
        "text": block["text"],
        "annotations": [
            (a["id"], a["start_index"], a["end_index"], round(a["extras"]["score"], 5))
            for a in block.get("annotations", [])
        ],
        "usage": message.usage_metadata,
        "finish_reason": message.response_metadata["finish_reason"],
    }


def test_batch_equals_invoke_one_by_one_in_one_decoding(tiny_tracer, docs, decodings) -> None:
    llm = ChatOmniTrace(tracer=tiny_tracer, max_tokens=24).bind(sources=docs)
    alone = [llm.invoke(q) for q in QUESTIONS]
    assert decodings == [1, 1, 1]
    decodings.clear()
    handler = OmniTraceCallbackHandler()
    batched = llm.batch(QUESTIONS, config={"callbacks": [handler]})
    assert decodings == [3]  # the three inputs shared one decoding
    assert [_shape(m) for m in batched] == [_shape(m) for m in alone]
    assert any(_shape(m)["annotations"] for m in batched)
    # one run per input, each with its own start / end callbacks and citation events
    assert len(handler.runs) == 3
    by_text = {run.message.text: run for run in handler.runs.values()}  # type: ignore[union-attr]
    for message in batched:
        run = by_text[message.text]
        assert len(run.sentences) == len(message.response_metadata["omnitrace"]["sentences"])


def test_max_concurrency_caps_the_batch(tiny_tracer, docs, decodings) -> None:
    llm = ChatOmniTrace(tracer=tiny_tracer, max_tokens=12).bind(sources=docs)
    out = llm.batch(QUESTIONS, config={"max_concurrency": 2})
    assert decodings == [2, 1] and len(out) == 3


def test_a_failing_input_does_not_hold_up_or_lose_the_others(tiny_tracer, docs, decodings) -> None:
    """An empty question fails before the decoding: the others still decode together."""
    llm = ChatOmniTrace(tracer=tiny_tracer, max_tokens=12).bind(sources=docs)
    out = llm.batch([QUESTIONS[0], "", QUESTIONS[1]], return_exceptions=True)
    assert isinstance(out[1], Exception) and "no question" in str(out[1])
    assert decodings == [2]
    assert [_shape(out[0]), _shape(out[2])] == [_shape(llm.invoke(QUESTIONS[0])), _shape(llm.invoke(QUESTIONS[1]))]
    with pytest.raises(Exception, match="no question"):
        llm.batch([QUESTIONS[0], ""])


async def test_abatch_equals_ainvoke(tiny_tracer, docs, decodings) -> None:
    llm = ChatOmniTrace(tracer=tiny_tracer, max_tokens=16).bind(sources=docs)
    alone = [await llm.ainvoke(q) for q in QUESTIONS]
    decodings.clear()
    batched = await llm.abatch(QUESTIONS)
    assert decodings == [3]
    assert [_shape(m) for m in batched] == [_shape(m) for m in alone]


def test_inputs_without_sources_answer_alone(tiny_tracer, docs, decodings) -> None:
    """No sources: no citations to batch; each input is the plain answer invoke gives."""
    llm = ChatOmniTrace(tracer=tiny_tracer, max_tokens=8)
    out = llm.batch(QUESTIONS[:2])
    assert [m.text for m in out] == [llm.invoke(q).text for q in QUESTIONS[:2]]
    assert decodings == [1, 1, 1, 1]
