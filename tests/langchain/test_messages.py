"""Reading sources and the question from LangChain messages: the good and the bad input."""

from __future__ import annotations

import base64

import pytest
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.messages.content import create_plaintext_block, create_text_block

from omnitrace_integrations.langchain import UnsupportedContentError
from omnitrace_integrations.langchain.messages import (
    coerce_sources,
    document_source_id,
    read_messages,
)


def test_document_ids_follow_id_then_source_then_position() -> None:
    docs = [
        Document("a text", id="doc-a"),
        Document("b text", metadata={"source": "b.txt"}),
        Document("c text"),
    ]
    assert [document_source_id(d, i) for i, d in enumerate(docs)] == ["doc-a", "b.txt", "2"]
    sources = coerce_sources(docs)
    assert [s.id for s in sources] == ["doc-a", "b.txt", "2"]
    assert sources[1].metadata == {"source": "b.txt"}


def test_plaintext_and_file_blocks_are_sources() -> None:
    data = base64.b64encode(b"Notes: the lighthouse is 42 metres tall.").decode()
    msg = HumanMessage(
        content_blocks=[
            create_text_block("How tall is it?"),
            create_plaintext_block(
                "Valbrook Works was founded in 1905.", id="vw", title="Valbrook", url="u://vw"
            ),
            {"type": "file", "id": "notes", "mime_type": "text/markdown", "base64": data},
        ]
    )
    req = read_messages([msg])
    assert [s.id for s in req.sources] == ["vw", "notes"]
    assert req.sources[0].title == "Valbrook" and req.sources[0].url == "u://vw"
    assert req.sources[1].text.startswith("Notes:")
    assert req.question == "How tall is it?"


def test_tool_messages_supply_sources() -> None:
    docs = [Document("Fiora Moreau is mayor.", id="town")]
    msgs = [
        HumanMessage("Who is mayor?"),
        AIMessage("", tool_calls=[{"name": "search", "args": {"q": "x"}, "id": "c1"}]),
        ToolMessage("Fiora Moreau is mayor.", tool_call_id="c1", artifact=docs),
        ToolMessage("The river is long.", tool_call_id="c2", name="lookup"),
    ]
    req = read_messages(msgs)
    assert [s.id for s in req.sources] == ["town", "lookup:c2"]  # named after the tool and call
    assert req.sources[1].title == "lookup"
    assert req.sources[1].metadata == {"tool": "lookup", "tool_call_id": "c2"}
    assert req.sources[0].metadata["tool_call_id"] == "c1"
    assert req.question == "Who is mayor?"


def test_conversation_history_and_system_text() -> None:
    req = read_messages(
        [
            SystemMessage("Be brief."),
            HumanMessage("hello"),
            AIMessage("hi there"),
            HumanMessage("how are you"),
        ],
        [Document("x", id="d")],
    )
    assert req.system == "Be brief."
    assert req.question.startswith("how are you")
    assert "User: hello" in req.question and "Assistant: hi there" in req.question
    assert req.turns[0] == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize(
    ("block", "match"),
    [
        ({"type": "image", "url": "http://x/y.png"}, "'image' is not supported"),
        ({"type": "video", "url": "http://x/v.mp4"}, "'video' is not supported"),
        ({"type": "mystery"}, "'mystery' is not supported"),
        (
            {"type": "file", "id": "p", "mime_type": "application/pdf", "base64": "AAAA"},
            "application/pdf",
        ),
        (
            {"type": "text-plain", "id": "u", "mime_type": "text/plain", "url": "http://x"},
            "nothing is fetched",
        ),
    ],
)
def test_unsupported_blocks_name_the_problem(block: dict, match: str) -> None:
    with pytest.raises(UnsupportedContentError, match=match):
        read_messages([HumanMessage(content=[{"type": "text", "text": "q"}, block])])


def test_bad_ids_and_content() -> None:
    with pytest.raises(ValueError, match="empty id"):
        read_messages(
            [
                HumanMessage(
                    content=[
                        "q",
                        {"type": "text-plain", "id": "", "text": "t", "mime_type": "text/plain"},
                    ]
                )
            ]
        )
    with pytest.raises(ValueError, match="duplicate source id 'a'"):
        read_messages([HumanMessage("q")], [Document("x", id="a"), Document("y", id="a")])
    with pytest.raises(ValueError, match="duplicate source id 'a'"):
        read_messages(
            [
                HumanMessage(
                    content=[
                        "q",
                        {"type": "text-plain", "id": "a", "text": "t", "mime_type": "text/plain"},
                    ]
                )
            ],
            [Document("y", id="a")],
        )
    with pytest.raises(ValueError, match="must be a str or dict, got int"):
        # LangChain validates content on construction; model_construct skips that, as custom code may
        read_messages([HumanMessage.model_construct(content=["q", 5], type="human")])
    with pytest.raises(ValueError, match="must be a str or a list of content blocks, got int"):
        read_messages([HumanMessage.model_construct(content=5, type="human")])
    with pytest.raises(ValueError, match="no question"):
        read_messages([SystemMessage("only a system message")])
    with pytest.raises(ValueError, match="has no text"):
        coerce_sources([Document("   ", id="blank")])
    with pytest.raises(ValueError, match="must be a Document"):
        coerce_sources([3.5])
