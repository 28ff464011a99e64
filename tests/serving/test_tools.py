"""Tools, tool_choice and response_format over HTTP (tiny random model: the grammar, not the
model, guarantees that a call or a JSON answer parses), their refusals, and the clients on top."""

from __future__ import annotations

import json
from typing import Literal

import httpx
import pytest
from pydantic import BaseModel

from tests.serving.conftest import DOCS, QUESTION

pytest.importorskip("llguidance", reason="tools and response_format are grammar-constrained (structured extra)")

LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Oslo", "Paris"]}, "metric": {"type": "boolean"}},
            "required": ["city", "metric"],
        },
    },
}
SHOUT = {
    "type": "function",
    "function": {
        "name": "shout",
        "description": "Shout a word.",
        "parameters": {"type": "object", "properties": {"word": {"enum": ["hi", "yo"]}}, "required": ["word"]},
    },
}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"enum": ["Oslo", "Paris"]}, "sunny": {"type": "boolean"}},
    "required": ["city", "sunny"],
}
WEATHER = [{"role": "user", "content": "Weather in Oslo?"}]


def _post(url, body):
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _sse(url, body):
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=120) as r:
        assert r.status_code == 200, r.read()
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def _valid_call(call):
    assert call["type"] == "function" and call["id"].startswith("call_")
    args = json.loads(call["function"]["arguments"])
    if call["function"]["name"] == "lookup":
        assert args["city"] in ("Oslo", "Paris") and isinstance(args["metric"], bool) and len(args) == 2
    else:
        assert call["function"]["name"] == "shout" and args == {"word": args["word"]} and args["word"] in ("hi", "yo")
    return call["function"]["name"], args


def test_required_tool_choice_gives_openai_tool_calls(tiny_tracer, serve_app):
    url = serve_app(tiny_tracer)
    body = _post(url, {"messages": WEATHER, "tools": [LOOKUP, SHOUT], "tool_choice": "required", "max_tokens": 120})
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None and choice["message"]["annotations"] == []
    calls = choice["message"]["tool_calls"]
    assert calls and all(_valid_call(c) for c in calls)


def test_a_named_tool_choice_and_no_parallel_calls_give_one_call_of_that_tool(tiny_tracer, serve_app):
    url = serve_app(tiny_tracer)
    body = {
        "messages": WEATHER,
        "tools": [LOOKUP, SHOUT],
        "tool_choice": {"type": "function", "function": {"name": "shout"}},
        "parallel_tool_calls": False,
        "max_tokens": 120,
    }
    calls = _post(url, body)["choices"][0]["message"]["tool_calls"]
    assert len(calls) == 1 and _valid_call(calls[0])[0] == "shout"


def test_a_streamed_tool_turn_sends_the_call_in_one_delta_at_the_end(tiny_tracer, serve_app):
    url = serve_app(tiny_tracer)
    body = {"messages": WEATHER, "tools": [LOOKUP], "tool_choice": "required", "max_tokens": 120}
    whole = _post(url, body)["choices"][0]["message"]["tool_calls"]
    chunks = _sse(url, body)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert not any(d.get("content") for d in deltas), "the raw call text must not stream as content"
    with_calls = [d["tool_calls"] for d in deltas if d.get("tool_calls")]
    assert len(with_calls) == 1
    streamed = with_calls[0]
    assert [c["index"] for c in streamed] == list(range(len(streamed)))
    assert [_valid_call(c) for c in streamed] == [_valid_call(c) for c in whole]  # greedy: the same call
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_choice_none_answers_in_text(tiny_tracer, serve_app):
    url = serve_app(tiny_tracer)
    body = _post(url, {"messages": WEATHER, "tools": [LOOKUP], "tool_choice": "none", "max_tokens": 6})
    message = body["choices"][0]["message"]
    assert "tool_calls" not in message and isinstance(message["content"], str) and message["content"]


def test_tool_results_are_sources_named_by_tool_and_call_id(tiny_tracer, serve_app):
    url = serve_app(tiny_tracer)
    messages = [
        {"role": "user", "content": "How tall is the lighthouse?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "search", "arguments": '{"q": "lighthouse"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": DOCS[1]["text"]},
    ]
    # auto with a result in: answered from it and cited (the in-process rule)
    body = _post(url, {"messages": messages, "tools": [LOOKUP], "max_tokens": 12, "omnitrace": {"include_answer": True}})
    message = body["choices"][0]["message"]
    assert "tool_calls" not in message
    assert [s["id"] for s in body["omnitrace"]["answer"]["sources"]] == ["search:c1"]
    cited = {a["source_citation"]["source_id"] for a in message["annotations"]}
    assert cited == {"search:c1"}
    assert {a["source_citation"]["title"] for a in message["annotations"]} == {"search"}


def test_response_format_json_schema_answer_parses_and_is_cited(tiny_tracer, serve_app):
    url = serve_app(tiny_tracer)
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA, "strict": True}}
    plain = _post(url, {"messages": WEATHER, "response_format": fmt, "max_tokens": 120})
    assert plain["choices"][0]["finish_reason"] == "stop"
    data = json.loads(plain["choices"][0]["message"]["content"])
    assert set(data) == {"city", "sunny"} and data["city"] in ("Oslo", "Paris")

    cited = _post(
        url,
        {"messages": [{"role": "user", "content": QUESTION}], "documents": DOCS, "response_format": fmt, "max_tokens": 120},
    )
    assert set(json.loads(cited["choices"][0]["message"]["content"])) == {"city", "sunny"}
    assert cited["choices"][0]["message"]["annotations"], "a JSON answer is attributed like any other"


def test_response_format_json_object_streams_an_object(tiny_tracer, serve_app):
    url = serve_app(tiny_tracer)
    chunks = _sse(url, {"messages": WEATHER, "response_format": {"type": "json_object"}, "max_tokens": 60})
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    if chunks[-1]["choices"][0]["finish_reason"] == "stop":  # complete: always an object
        assert isinstance(json.loads(text), dict)
    else:  # a random model may write until the token limit: then it says so
        assert chunks[-1]["choices"][0]["finish_reason"] == "length" and text.startswith("{")


BAD = [
    (
        "tool message answering an unknown call",
        {
            "messages": [
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}],
                },
                {"role": "tool", "tool_call_id": "call_9", "content": "x"},
            ]
        },
        "unknown_tool_call_id",
        "'call_9'",
    ),
    (
        "malformed tool schema",
        {
            "messages": WEATHER,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": 5}}}],
        },
        "invalid_tools",
        "tools[0] ('f')",
    ),
    (
        "tool parameters of an unknown type",
        {
            "messages": WEATHER,
            "tools": [
                LOOKUP,
                {
                    "type": "function",
                    "function": {"name": "g", "parameters": {"type": "object", "properties": {"x": {"type": "nonsense"}}}},
                },
            ],
        },
        "invalid_tools",
        "nonsense",
    ),
    ("a tool that is not a function", {"messages": WEATHER, "tools": [{"type": "retrieval"}]}, "invalid_tools", "'retrieval'"),
    ("two tools with one name", {"messages": WEATHER, "tools": [LOOKUP, LOOKUP]}, "invalid_tools", "'lookup'"),
    (
        "tool_choice naming an absent tool",
        {"messages": WEATHER, "tools": [LOOKUP], "tool_choice": {"type": "function", "function": {"name": "fly"}}},
        "invalid_tool_choice",
        "'fly'",
    ),
    ("tool_choice without tools", {"messages": WEATHER, "tool_choice": "required"}, "invalid_tool_choice", "needs tools"),
    ("response_format of an unknown type", {"messages": WEATHER, "response_format": {"type": "xml"}}, "invalid_response_format", "'xml'"),
    (
        "json_schema without a schema",
        {"messages": WEATHER, "response_format": {"type": "json_schema", "json_schema": {"name": "a"}}},
        "invalid_response_format",
        "schema",
    ),
    (
        "json_schema that does not compile",
        {
            "messages": WEATHER,
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "nonsense"}}},
        },
        "invalid_response_format",
        "nonsense",
    ),
    (
        "tool call arguments that are not JSON",
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]},
                {"role": "tool", "tool_call_id": "c", "content": "x"},
            ]
        },
        "invalid_message",
        "arguments is not JSON",
    ),
    (
        "response_format on a forced tool call",
        {"messages": WEATHER, "tools": [LOOKUP], "tool_choice": "required", "response_format": {"type": "json_object"}},
        "unsupported_combination",
        "'required'",
    ),
]


@pytest.mark.parametrize(("body", "code", "named"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_tool_requests_get_a_named_json_error(tiny_tracer, serve_app, body, code, named):
    url = serve_app(tiny_tracer)
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == code and named in error["message"], error
    ok = httpx.post(f"{url}/v1/chat/completions", json={"messages": WEATHER, "max_tokens": 2}, timeout=60)
    assert ok.status_code == 200, ok.text


def test_a_plain_openai_client_reads_the_tool_calls(tiny_tracer, serve_app):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{serve_app(tiny_tracer)}/v1", api_key="unused")
    resp = client.chat.completions.create(
        model="tiny-llama", messages=WEATHER, tools=[LOOKUP], tool_choice="required", max_tokens=120
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "lookup" and json.loads(call.function.arguments)["city"] in ("Oslo", "Paris")
    stream = client.chat.completions.create(
        model="tiny-llama", messages=WEATHER, tools=[LOOKUP], tool_choice="required", max_tokens=120, stream=True
    )
    streamed = [tc for chunk in stream if chunk.choices for tc in chunk.choices[0].delta.tool_calls or []]
    assert [(t.function.name, json.loads(t.function.arguments)) for t in streamed] == [
        (c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls
    ]


# -- the Python clients ---------------------------------------------------------------------------


def test_langchain_remote_tools_equal_in_process(tiny_tracer, serve_app):
    pytest.importorskip("langchain_core")
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_core.tools import tool

    from omnitrace_integrations.langchain import ChatOmniTrace

    @tool
    def lookup(city: Literal["Oslo", "Paris"], metric: bool) -> str:
        """Weather in a city."""
        return f"{city}: sunny"

    remote = ChatOmniTrace(base_url=serve_app(tiny_tracer), max_tokens=120)
    local = ChatOmniTrace(tracer=tiny_tracer, max_tokens=120)
    calls = [
        [(c["name"], c["args"]) for c in m.bind_tools([lookup], tool_choice="any").invoke("Weather in Oslo?").tool_calls]
        for m in (remote, local)
    ]
    assert calls[0] and calls[0] == calls[1]
    chunks = list(remote.bind_tools([lookup], tool_choice="lookup").stream("Weather in Oslo?"))
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert [(c["name"], c["args"]) for c in total.tool_calls] == calls[0][:1] or total.tool_calls

    history = [
        HumanMessage("How tall is the lighthouse?"),
        AIMessage("", tool_calls=[{"name": "search", "args": {"q": "lighthouse"}, "id": "c1"}]),
        ToolMessage(DOCS[1]["text"], tool_call_id="c1", name="search"),
    ]
    answers = [m.bind_tools([lookup]).invoke(history, max_tokens=12) for m in (remote, local)]
    assert answers[0].text == answers[1].text
    assert answers[0].content[0]["annotations"] == answers[1].content[0]["annotations"]
    assert {a["id"] for a in answers[0].content[0]["annotations"]} == {"search:c1"}


def test_langchain_remote_structured_output_equals_in_process(tiny_tracer, serve_app):
    pytest.importorskip("langchain_core")
    from langchain_core.messages import HumanMessage
    from pydantic import BaseModel

    from omnitrace_integrations.langchain import ChatOmniTrace

    class Answer(BaseModel):
        city: Literal["Oslo", "Paris"]
        sunny: bool

    remote = ChatOmniTrace(base_url=serve_app(tiny_tracer), max_tokens=120)
    local = ChatOmniTrace(tracer=tiny_tracer, max_tokens=120)
    for method in ("json_schema", "function_calling"):
        outs = [m.with_structured_output(Answer, method=method).invoke("Oslo weather?") for m in (remote, local)]
        assert isinstance(outs[0], Answer) and outs[0] == outs[1], method
    cited_input = [
        HumanMessage(
            content=[*({"type": "text-plain", "text": d["text"], "id": d["id"]} for d in DOCS), QUESTION]
        )
    ]
    raw = [m.with_structured_output(Answer, include_raw=True).invoke(cited_input)["raw"] for m in (remote, local)]
    assert raw[0].text == raw[1].text and raw[0].content == raw[1].content
    traced = [r.response_metadata["omnitrace"] for r in raw]
    assert [s["id"] for s in traced[0]["sources"]] == [d["id"] for d in DOCS]  # attributed like any answer
    assert traced[0]["sentences"] == traced[1]["sentences"]


class ShoutArgs(BaseModel):
    word: Literal["hi", "yo"]


def shout(word: str) -> str:
    """Shout a word."""
    return word.upper()


def test_llama_index_remote_tools_and_structured_predict(tiny_tracer, serve_app):
    pytest.importorskip("llama_index.core")
    from llama_index.core.prompts import PromptTemplate
    from llama_index.core.tools import FunctionTool
    from pydantic import BaseModel

    from omnitrace_integrations.llama_index import OmniTraceLLM

    class Answer(BaseModel):
        sunny: bool

    tool = FunctionTool.from_defaults(fn=shout, fn_schema=ShoutArgs)
    remote = OmniTraceLLM(base_url=serve_app(tiny_tracer), max_new_tokens=120)
    local = OmniTraceLLM(tracer=tiny_tracer, max_new_tokens=120)
    picks = []
    for llm in (remote, local):
        response = llm.chat_with_tools([tool], "Shout hi", tool_required=True)
        picks.append([(s.tool_name, s.tool_kwargs) for s in llm.get_tool_calls_from_response(response)])
    assert picks[0] and picks[0] == picks[1]
    prompt = PromptTemplate("Is it sunny in {city}?")
    outs = [llm.structured_predict(Answer, prompt, city="Oslo") for llm in (remote, local)]
    assert isinstance(outs[0], Answer) and outs[0] == outs[1]


def test_remote_tracer_sends_only_json_schema_grammars(tiny_tracer, serve_app):
    from omnitrace_core import Grammar, InvalidInputError
    from omnitrace_core.decoding import close_objects
    from omnitrace_integrations.serving.client import RemoteTracer

    remote = RemoteTracer(serve_app(tiny_tracer))
    try:
        with pytest.raises(InvalidInputError, match="a lark grammar cannot be sent"):
            list(remote.chat(WEATHER, grammar=Grammar.lark('start: "x"')))
        grammar = Grammar.json_schema(close_objects(ANSWER_SCHEMA))  # closed, as the adapters build it
        events = list(remote.chat(WEATHER, grammar=grammar, max_new_tokens=120))
        local = list(tiny_tracer.chat(WEATHER, grammar=grammar, max_new_tokens=120))
        assert events[-1].answer.text == local[-1].answer.text
        assert set(json.loads(events[-1].answer.text)) == {"city", "sunny"}
    finally:
        remote.close()
