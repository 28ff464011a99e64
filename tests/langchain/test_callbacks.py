"""OmniTraceCallbackHandler collects citations per run, in chains, sync and async."""

from __future__ import annotations

from typing import Any

from langchain_core.runnables import RunnableLambda

from omnitrace_integrations.langchain import ChatOmniTrace, OmniTraceCallbackHandler
from tests.langchain.conftest import FakeTracer


def test_collects_by_chain_run(fake_tracer: FakeTracer, docs: list[Any]) -> None:
    llm = ChatOmniTrace(tracer=fake_tracer).bind(sources=docs)
    chain = RunnableLambda(lambda q: q) | llm
    handler = OmniTraceCallbackHandler()
    chain.invoke("q1", config={"callbacks": [handler]})
    chain.invoke("q2", config={"callbacks": [handler]})
    roots = handler.root_run_ids
    assert len(roots) == 2
    runs = handler.runs_under(roots[0])
    assert len(runs) == 1
    run = runs[0]
    assert run.root_run_id == roots[0] and run.parent_run_id is not None
    assert [s["sentence"]["index"] for s in run.sentences] == [0, 1]
    assert run.answer is not None and run.answer.text == run.message.text  # type: ignore[union-attr]
    assert [[a["id"] for a in c["citations"]] for c in run.citations] == [
        ["valbrook"],
        ["lighthouse", "valbrook"],
    ]
    assert handler.last() is handler.runs_under(roots[1])[0]


def test_streaming_without_parent_still_collects(fake_tracer: FakeTracer, docs: list[Any]) -> None:
    handler = OmniTraceCallbackHandler()
    list(
        ChatOmniTrace(tracer=fake_tracer).stream("q", sources=docs, config={"callbacks": [handler]})
    )
    run = handler.last()
    assert run is not None
    assert [s["sentence"]["index"] for s in run.sentences] == [0, 1]  # from the annotation chunks
    assert len(run.citations) == 2


async def test_async_chain(fake_tracer: FakeTracer, docs: list[Any]) -> None:
    chain = RunnableLambda(lambda q: q) | ChatOmniTrace(tracer=fake_tracer).bind(sources=docs)
    handler = OmniTraceCallbackHandler()
    chunks = [c async for c in chain.astream("q", config={"callbacks": [handler]})]
    assert chunks
    run = handler.runs_under(handler.root_run_ids[0])[0]
    assert len(run.sentences) == 2 and run.message is not None
    handler.clear()
    assert handler.runs == {}
