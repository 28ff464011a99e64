"""Nodes and chat blocks become text sources with the caller's ids; bad input is named."""

from __future__ import annotations

import pytest
from llama_index.core.base.llms.types import (
    ChatMessage,
    CitableBlock,
    DocumentBlock,
    MessageRole,
    TextBlock,
)
from llama_index.core.schema import ImageNode, NodeWithScore, TextNode

from omnitrace_core import InvalidInputError
from omnitrace_integrations.llama_index.sources import (
    coerce_sources,
    node_source,
    parse_messages,
    prepare_node_sources,
)


def test_node_becomes_source_with_ids_title_and_metadata() -> None:
    node = TextNode(
        id_="n1", text="Alpha makes filters.", metadata={"title": "Alpha", "year": 1905, "obj": {1: 2}}
    )
    src = node_source(NodeWithScore(node=node, score=0.42))
    assert not isinstance(src, str)
    assert (src.id, src.text, src.title) == ("n1", "Alpha makes filters.", "Alpha")
    assert src.metadata["retrieval_score"] == 0.42
    assert src.metadata["node_id"] == "n1"
    assert src.metadata["node_metadata"] == {"title": "Alpha", "year": 1905, "obj": "{1: 2}"}  # JSON-safe


def test_image_node_without_text_is_skipped_with_a_note() -> None:
    prepared = prepare_node_sources(
        [
            NodeWithScore(node=ImageNode(id_="img", image_url="http://x/y.png")),
            TextNode(id_="t", text="Some text."),
        ]
    )
    assert [s.id for s in prepared.sources] == ["t"]
    assert len(prepared.notes) == 1 and "'img'" in prepared.notes[0] and "image" in prepared.notes[0]


def test_repeated_node_id_is_kept_once() -> None:
    node = TextNode(id_="n1", text="Alpha makes filters.")
    prepared = prepare_node_sources(
        [NodeWithScore(node=node, score=0.9), NodeWithScore(node=node, score=0.5)]
    )
    assert [s.id for s in prepared.sources] == ["n1"]
    assert prepared.sources[0].metadata["retrieval_score"] == 0.9
    assert "more than once" in prepared.notes[0]


def test_same_id_different_text_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="'a'"):
        coerce_sources([{"id": "a", "text": "one"}, {"id": "a", "text": "two"}])


def test_messages_give_sources_question_and_system_prompt() -> None:
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
        ChatMessage(role=MessageRole.USER, content="Earlier question?"),
        ChatMessage(role=MessageRole.ASSISTANT, content="Earlier answer."),
        ChatMessage(
            role=MessageRole.USER,
            blocks=[
                CitableBlock(source="n1", title="Alpha", content="Alpha makes filters."),
                DocumentBlock(data=b"Beta makes motors.", document_mimetype="text/plain", title="beta.txt"),
                DocumentBlock(data=b"%PDF-1.4 ...", document_mimetype="application/pdf", title="scan.pdf"),
                TextBlock(text="What does Alpha make?"),
            ],
        ),
    ]
    parsed = parse_messages(messages)
    assert [(s.id, s.text, s.title) for s in parsed.prepared.sources] == [
        ("n1", "Alpha makes filters.", "Alpha"),
        ("beta.txt", "Beta makes motors.", "beta.txt"),
    ]
    assert parsed.system_prompt == "Be brief."
    assert parsed.question.endswith("What does Alpha make?")
    assert "user: Earlier question?" in parsed.question and "assistant: Earlier answer." in parsed.question
    notes = " ".join(parsed.prepared.notes)
    assert "scan.pdf" in notes


def test_conflicting_citable_blocks_are_refused() -> None:
    msg = ChatMessage(
        role=MessageRole.USER,
        blocks=[
            CitableBlock(source="n1", title="A", content="one"),
            CitableBlock(source="n1", title="A", content="two"),
            TextBlock(text="q"),
        ],
    )
    with pytest.raises(InvalidInputError, match="duplicate source id 'n1'"):
        parse_messages([msg])
