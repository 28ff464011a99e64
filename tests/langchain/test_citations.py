"""Helpers over cited messages: per-sentence documents, the union, rendering."""

from __future__ import annotations

from typing import Any

from omnitrace_integrations.langchain import (
    ChatOmniTrace,
    citations_by_sentence,
    cited_documents,
    cited_documents_by_sentence,
    render_cited_answer,
    traced_answer,
)
from tests.langchain.conftest import FakeTracer


def _message(fake_tracer: FakeTracer, docs: list[Any]) -> Any:
    return ChatOmniTrace(tracer=fake_tracer).invoke("q", sources=docs)


def test_citations_and_documents_by_sentence(fake_tracer: FakeTracer, docs: list[Any]) -> None:
    msg = _message(fake_tracer, docs)
    spans = citations_by_sentence(msg)
    assert [s["text"] for s in spans] == [
        "Valbrook Works was founded in 1905.",
        "The lighthouse is 42 metres tall.",
    ]
    per = cited_documents_by_sentence(msg)
    assert [[d.id for d in s["documents"]] for s in per] == [
        ["valbrook"],
        ["lighthouse", "valbrook"],
    ]
    first = per[0]["documents"][0]
    assert first.page_content == docs[0].page_content
    assert (
        first.metadata["url"] == "https://example.org/valbrook"
        and first.metadata["citation_score"] == 0.9
    )
    assert [d.id for d in cited_documents(msg)] == ["valbrook", "lighthouse"]
    answer = traced_answer(msg)
    assert answer is not None and answer.text == msg.text


def test_render_plain_and_markdown(fake_tracer: FakeTracer, docs: list[Any]) -> None:
    msg = _message(fake_tracer, docs)
    plain = render_cited_answer(msg)
    assert (
        plain.splitlines()[0]
        == "Valbrook Works was founded in 1905.[1] The lighthouse is 42 metres tall.[1][2]"
    )
    assert "[1] Valbrook Works (valbrook) <https://example.org/valbrook>" in plain
    assert "[2] Lighthouse (lighthouse)" in plain
    md = render_cited_answer(msg, "markdown")
    assert "1. [Valbrook Works](https://example.org/valbrook) (`valbrook`)" in md
    assert "2. Lighthouse (`lighthouse`)" in md


def test_helpers_on_a_message_without_citations() -> None:
    from langchain_core.messages import AIMessage

    msg = AIMessage("Just text.")
    assert render_cited_answer(msg) == "Just text."
    assert cited_documents(msg) == [] and citations_by_sentence(msg) == []
    assert traced_answer(msg) is None
