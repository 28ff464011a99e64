"""Tool calling, structured output and stops on ChatOmniTrace (tiny random model: the grammar,
not the model, guarantees the call parses)."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel

from omnitrace_integrations.langchain import ChatOmniTrace, field_citations

pytest.importorskip("llguidance", reason="tool calls are grammar-constrained (structured extra)")


@tool
def lookup(city: Literal["Oslo", "Paris"], metric: bool) -> str:
    """Weather in a city."""
    return f"{city}: sunny"


@tool
def shout(word: Literal["hi", "yo"]) -> str:
    """Shout a word."""
    return word.upper()


class Answer(BaseModel):
    city: Literal["Oslo", "Paris"]
    sunny: bool


@pytest.fixture(scope="module")
def tiny_llm(tiny_tracer: Any) -> ChatOmniTrace:
    return ChatOmniTrace(tracer=tiny_tracer, max_tokens=120)


def _valid_lookup_args(args: dict[str, Any]) -> bool:
    return args.get("city") in ("Oslo", "Paris") and isinstance(args.get("metric"), bool) and len(args) == 2


def test_forced_tool_call_always_parses(tiny_llm: ChatOmniTrace) -> None:
    msg = tiny_llm.bind_tools([lookup, shout], tool_choice="any").invoke("Weather in Oslo?")
    assert isinstance(msg, AIMessage) and msg.tool_calls and not msg.invalid_tool_calls
    for call in msg.tool_calls:
        assert call["name"] in ("lookup", "shout") and call["id"].startswith("call_")
        assert call["type"] == "tool_call"
        if call["name"] == "lookup":
            assert _valid_lookup_args(call["args"])
    assert msg.response_metadata["finish_reason"] == "stop"


def test_named_tool_choice_and_no_parallel(tiny_llm: ChatOmniTrace) -> None:
    bound = tiny_llm.bind_tools([lookup, shout], tool_choice="shout", parallel_tool_calls=False)
    msg = bound.invoke("Say hi")
    assert [c["name"] for c in msg.tool_calls] == ["shout"]
    assert msg.tool_calls[0]["args"]["word"] in ("hi", "yo")
    # an OpenAI-style dict names the same tool
    msg2 = tiny_llm.bind_tools([lookup, shout], tool_choice={"type": "function", "function": {"name": "lookup"}}).invoke("x")
    assert msg2.tool_calls[0]["name"] == "lookup" and _valid_lookup_args(msg2.tool_calls[0]["args"])


def test_tool_choice_none_answers_in_text(tiny_llm: ChatOmniTrace) -> None:
    msg = tiny_llm.bind_tools([lookup], tool_choice="none").invoke("Weather in Oslo?", max_tokens=6)
    assert not msg.tool_calls and isinstance(msg.text, str)


def test_unknown_tool_choice_is_refused(tiny_llm: ChatOmniTrace) -> None:
    with pytest.raises(ValueError, match=r"tool_choice 'nope' is not .*lookup"):
        tiny_llm.bind_tools([lookup], tool_choice="nope")


def test_stream_of_a_tool_turn_equals_invoke(tiny_llm: ChatOmniTrace) -> None:
    bound = tiny_llm.bind_tools([shout], tool_choice="shout", parallel_tool_calls=False)
    msg = bound.invoke("Say hi")
    chunks = list(bound.stream("Say hi"))
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [(c["name"], c["args"]) for c in msg.tool_calls]
    assert total.usage_metadata == msg.usage_metadata


async def test_async_tool_call(tiny_llm: ChatOmniTrace) -> None:
    msg = await tiny_llm.bind_tools([shout], tool_choice="any").ainvoke("Say hi")
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "shout"


def test_tool_results_become_cited_sources(tiny_llm: ChatOmniTrace) -> None:
    history = [
        HumanMessage("How tall is the lighthouse?"),
        AIMessage("", tool_calls=[{"name": "search", "args": {"q": "lighthouse"}, "id": "c1"}]),
        ToolMessage("The lighthouse stands 42 metres tall.", tool_call_id="c1", name="search"),
    ]
    msg = tiny_llm.bind_tools([lookup]).invoke(history, max_tokens=16)  # auto: answers from the results
    assert not msg.tool_calls
    data = msg.response_metadata["omnitrace"]
    assert [s["id"] for s in data["sources"]] == ["search:c1"]
    cited = {a["id"] for a in msg.content[0].get("annotations", [])}
    assert cited <= {"search:c1"}


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output_pydantic(tiny_llm: ChatOmniTrace, method: str) -> None:
    out = tiny_llm.with_structured_output(Answer, method=method).invoke("Oslo weather?")
    assert isinstance(out, Answer)


def test_structured_output_dict_schema_and_include_raw(tiny_llm: ChatOmniTrace) -> None:
    schema = Answer.model_json_schema()
    out = tiny_llm.with_structured_output(schema, include_raw=True).invoke("Oslo weather?")
    assert out["parsing_error"] is None and isinstance(out["raw"], AIMessage)
    assert out["parsed"]["city"] in ("Oslo", "Paris") and json.loads(out["raw"].text) == out["parsed"]


def test_structured_output_with_sources_cites_each_field(tiny_llm: ChatOmniTrace) -> None:
    question = HumanMessage(
        content=[{"type": "text-plain", "text": "Oslo is sunny today.", "id": "weather"}, "Oslo weather?"]
    )
    out = tiny_llm.with_structured_output(Answer, include_raw=True).invoke([question])
    raw = out["raw"]
    assert out["parsing_error"] is None and isinstance(out["parsed"], Answer)
    stored = raw.response_metadata["field_citations"]
    fields = field_citations(raw)
    assert [f.model_dump(mode="json") for f in fields] == stored
    assert [f.path for f in fields] == ["city", "sunny"]
    assert [f.value for f in fields] == [out["parsed"].city, out["parsed"].sunny]
    for f in fields:  # each span is the value as written in the raw JSON text
        assert raw.text[f.char_start : f.char_end] == f.text
        assert set(f.source_ids) <= {"weather"} and f.grounded == bool(f.citations)
    # the same view, computed from the traced answer when the message did not store it
    bare = raw.model_copy(update={"response_metadata": {"omnitrace": raw.response_metadata["omnitrace"]}})
    assert field_citations(bare) == fields


def test_structured_output_without_sources_has_no_field_citations(tiny_llm: ChatOmniTrace) -> None:
    raw = tiny_llm.with_structured_output(Answer, include_raw=True).invoke("Oslo weather?")["raw"]
    assert "field_citations" not in raw.response_metadata and field_citations(raw) == []


def test_json_mode(tiny_llm: ChatOmniTrace) -> None:
    raw = tiny_llm.with_structured_output(method="json_mode", include_raw=True).invoke("json please", max_tokens=60)
    if raw["raw"].response_metadata["finish_reason"] == "stop":  # complete: always an object
        assert isinstance(raw["parsed"], dict)
    else:  # a random model may write until the token limit; then it says so, never fakes it
        assert raw["parsing_error"] is not None


def test_structured_output_refuses_bad_method(tiny_llm: ChatOmniTrace) -> None:
    with pytest.raises(ValueError, match="method 'xml'"):
        tiny_llm.with_structured_output(Answer, method="xml")  # type: ignore[arg-type]


def test_stop_trims_and_reports_stop(tiny_llm: ChatOmniTrace, docs: list[Any]) -> None:
    plain = tiny_llm.invoke("How tall is the lighthouse?", sources=docs, max_tokens=20)
    text = plain.text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    msg = tiny_llm.invoke("How tall is the lighthouse?", sources=docs, max_tokens=20, stop=[stop])
    assert msg.text == text[: text.find(stop)] and msg.response_metadata["finish_reason"] == "stop"
    for ann in msg.content[0].get("annotations", []):
        assert ann["end_index"] <= len(msg.text)
    # without sources too
    plain2 = tiny_llm.invoke("hello", max_tokens=20)
    stop2 = plain2.text[5:8]
    msg2 = tiny_llm.invoke("hello", max_tokens=20, stop=stop2)
    assert msg2.text == plain2.text[: plain2.text.find(stop2)]
    assert msg2.response_metadata["finish_reason"] == "stop"
    with pytest.raises(ValueError, match="is empty"):
        tiny_llm.invoke("hello", stop=[""])
