"""OmniTraceLLM as a FunctionCallingLLM: tool calls, tool results as cited sources, structured
output and usage for LlamaIndex's token counter.

A tiny random model: the grammar, not the model, guarantees that calls and JSON parse. One test
runs the packaged SmolLM2-135M end to end. (No ``from __future__ import annotations``: FunctionTool
reads the tool functions' annotations at runtime.)"""

import asyncio
from typing import Any, Literal

import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock, ToolCallBlock
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel

from omnitrace_core import TracedAnswer
from omnitrace_integrations.llama_index import OmniTraceLLM
from omnitrace_integrations.llama_index.llm import OmniTraceStructuredLLM, field_citations, traced_answer
from omnitrace_integrations.llama_index.sources import parse_messages

pytest.importorskip("llguidance", reason="tool calls and structured output are grammar-constrained")


def lookup(city: Literal["Oslo", "Paris"], metric: bool) -> str:
    """Weather in a city."""
    return f"{city}: sunny, 21 degrees"


def shout(word: Literal["hi", "yo"]) -> str:
    """Shout a word."""
    return word.upper()


LOOKUP = FunctionTool.from_defaults(fn=lookup)
SHOUT = FunctionTool.from_defaults(fn=shout)


class Weather(BaseModel):
    city: Literal["Oslo", "Paris"]
    sunny: bool


@pytest.fixture(scope="module")
def llm(tiny_tracer: Any) -> OmniTraceLLM:
    return OmniTraceLLM(tracer=tiny_tracer, max_new_tokens=80)


def _valid_lookup(call: ToolSelection) -> bool:
    args = call.tool_kwargs
    return args.get("city") in ("Oslo", "Paris") and isinstance(args.get("metric"), bool) and len(args) == 2


def test_is_a_function_calling_model(llm: OmniTraceLLM) -> None:
    from llama_index.core.llms.function_calling import FunctionCallingLLM

    assert isinstance(llm, FunctionCallingLLM) and llm.metadata.is_function_calling_model


def test_tool_required_always_gives_a_valid_call(llm: OmniTraceLLM) -> None:
    response = llm.chat_with_tools([LOOKUP, SHOUT], "Weather in Oslo?", tool_required=True)
    calls = llm.get_tool_calls_from_response(response)
    assert calls and all(isinstance(c, ToolSelection) for c in calls)
    assert len(calls) == 1  # allow_parallel_tool_calls=False (LlamaIndex's default): one call
    call = calls[0]
    assert call.tool_name in ("lookup", "shout") and call.tool_id.startswith("call_")
    assert _valid_lookup(call) if call.tool_name == "lookup" else call.tool_kwargs["word"] in ("hi", "yo")
    blocks = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
    assert [(b.tool_call_id, b.tool_name) for b in blocks] == [(call.tool_id, call.tool_name)]
    assert response.additional_kwargs["finish_reason"] == "stop"


def test_tool_choice_by_name_and_openai_dict(llm: OmniTraceLLM) -> None:
    response = llm.chat_with_tools([LOOKUP, SHOUT], "Say hi", tool_choice="shout")
    (call,) = llm.get_tool_calls_from_response(response)
    assert call.tool_name == "shout" and call.tool_kwargs["word"] in ("hi", "yo")
    choice = {"type": "function", "function": {"name": "lookup"}}
    response = llm.chat_with_tools([LOOKUP, SHOUT], "x", tool_choice=choice)
    (call,) = llm.get_tool_calls_from_response(response)
    assert call.tool_name == "lookup" and _valid_lookup(call)


def test_tool_choice_none_answers_in_text_and_no_call_is_reported(llm: OmniTraceLLM) -> None:
    response = llm.chat_with_tools([LOOKUP], "Weather in Oslo?", tool_choice="none", max_new_tokens=6)
    assert not any(isinstance(b, ToolCallBlock) for b in response.message.blocks)
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    with pytest.raises(
        ValueError, match="expected at least one tool call, got 0; the model answered in text"
    ):
        llm.get_tool_calls_from_response(response)


def test_unknown_tool_choice_names_the_bound_tools(llm: OmniTraceLLM) -> None:
    with pytest.raises(ValueError, match=r"tool_choice 'nope' is not .*lookup, shout"):
        llm.chat_with_tools([LOOKUP, SHOUT], "x", tool_choice="nope")


def test_a_call_cut_by_the_token_limit_is_not_guessed(llm: OmniTraceLLM) -> None:
    response = llm.chat_with_tools([LOOKUP], "Weather?", tool_required=True, max_new_tokens=4)
    assert response.additional_kwargs["finish_reason"] == "length"
    assert not any(isinstance(b, ToolCallBlock) for b in response.message.blocks)
    invalid = response.message.additional_kwargs["invalid_tool_calls"]
    assert invalid and "token limit" in invalid[0]["error"]
    with pytest.raises(ValueError, match=r"did not complete .*raise max_new_tokens"):
        llm.get_tool_calls_from_response(response)


def test_predict_and_call_runs_the_tool_with_valid_arguments(llm: OmniTraceLLM) -> None:
    out = llm.predict_and_call([LOOKUP], "Weather in Paris?", tool_required=True)
    assert len(out.sources) == 1 and not out.sources[0].is_error
    assert out.sources[0].tool_name == "lookup"
    assert out.response in ("Oslo: sunny, 21 degrees", "Paris: sunny, 21 degrees")


def _after_tool_call() -> list[ChatMessage]:
    return [
        ChatMessage(role=MessageRole.USER, content="What is the weather in Oslo?"),
        ChatMessage(
            role=MessageRole.ASSISTANT,
            blocks=[
                ToolCallBlock(
                    tool_call_id="call_1", tool_name="lookup", tool_kwargs={"city": "Oslo", "metric": True}
                )
            ],
        ),
        ChatMessage(
            role=MessageRole.TOOL,
            blocks=[TextBlock(text="Oslo: sunny, 21 degrees.")],
            additional_kwargs={"tool_call_id": "call_1"},  # what FunctionAgent writes: no tool name
        ),
    ]


def test_tool_results_become_sources_named_by_tool_and_call() -> None:
    parsed = parse_messages(_after_tool_call())
    (source,) = parsed.prepared.sources
    assert source.id == "lookup:call_1" and source.title == "lookup"
    assert source.metadata == {"tool": "lookup", "tool_call_id": "call_1"}
    assert source.text == "Oslo: sunny, 21 degrees."
    assert parsed.question == "What is the weather in Oslo?"  # the result is a source, not a turn


def test_after_the_results_auto_answers_from_them_and_attributes_to_them(llm: OmniTraceLLM) -> None:
    response = llm.chat_with_tools([LOOKUP], chat_history=_after_tool_call(), max_new_tokens=12)
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    answer = traced_answer(response)
    assert isinstance(answer, TracedAnswer) and [s.id for s in answer.sources] == ["lookup:call_1"]
    assert set(answer.cited_source_ids) <= {"lookup:call_1"}
    # a forced choice calls again instead
    again = llm.chat_with_tools([LOOKUP], chat_history=_after_tool_call(), tool_required=True)
    assert llm.get_tool_calls_from_response(again)[0].tool_name == "lookup"


def test_stream_chat_with_tools_ends_with_the_whole_call(llm: OmniTraceLLM) -> None:
    responses = list(llm.stream_chat_with_tools([SHOUT], "Say hi", tool_required=True))
    assert all(not r.delta for r in responses)  # the call text is never streamed as content
    (call,) = llm.get_tool_calls_from_response(responses[-1])
    assert call.tool_name == "shout"


def test_function_agent_calls_the_tool_and_cites_its_result(llm: OmniTraceLLM) -> None:
    from llama_index.core.agent.workflow import FunctionAgent

    agent = FunctionAgent(tools=[LOOKUP], llm=llm, initial_tool_choice="lookup")

    async def run() -> Any:
        return await agent.run("What is the weather in Oslo?", max_iterations=4)

    result = asyncio.run(run())
    assert [c.tool_name for c in result.tool_calls] == ["lookup"]
    call = result.tool_calls[0]
    assert call.tool_output.content in ("Oslo: sunny, 21 degrees", "Paris: sunny, 21 degrees")
    answer = result.raw["omnitrace"]  # FunctionAgent keeps raw; the final turn was attributed
    assert [s.id for s in answer.sources] == [f"lookup:{call.tool_id}"]


# -- structured output ---------------------------------------------------------------------------
PROMPT = PromptTemplate("Describe the weather in {city} as JSON.")


def test_structured_predict_returns_the_model(llm: OmniTraceLLM) -> None:
    out = llm.structured_predict(Weather, PROMPT, city="Oslo")
    assert isinstance(out, Weather)


def test_structured_predict_async_and_streamed(llm: OmniTraceLLM) -> None:
    out = asyncio.run(llm.astructured_predict(Weather, PROMPT, city="Oslo"))
    assert isinstance(out, Weather)
    items = list(llm.stream_structured_predict(Weather, PROMPT, city="Oslo"))
    assert isinstance(items[-1], Weather) and items[-1] == out  # greedy: the same object
    assert all(not isinstance(i, Weather) for i in items[:-1])  # partial FlexibleModels first


def test_as_structured_llm_chat(llm: OmniTraceLLM) -> None:
    sllm = llm.as_structured_llm(Weather)
    response = sllm.chat([ChatMessage(role=MessageRole.USER, content="Weather in Paris?")])
    assert isinstance(response.raw, Weather)
    assert Weather.model_validate_json(response.message.content or "") == response.raw


def test_structured_predict_with_sources_is_attributed(llm: OmniTraceLLM) -> None:
    responses: list[Any] = []
    orig = llm._chat

    def spy(messages: Any, **kwargs: Any) -> Any:
        responses.append(orig(messages, **kwargs))
        return responses[-1]

    object.__setattr__(llm, "_chat", spy)
    try:
        out = llm.structured_predict(
            Weather,
            PROMPT,
            llm_kwargs={"sources": [{"id": "w", "text": "Oslo is sunny today."}]},
            city="Oslo",
        )
    finally:
        object.__delattr__(llm, "_chat")
    assert isinstance(out, Weather)
    answer = traced_answer(responses[-1])
    assert answer is not None and [s.id for s in answer.sources] == ["w"]
    assert Weather.model_validate_json(answer.text) == out


def test_as_structured_llm_keeps_per_field_citations(llm: OmniTraceLLM) -> None:
    sllm = llm.as_structured_llm(Weather)
    assert isinstance(sllm, OmniTraceStructuredLLM)
    sources = [{"id": "w", "text": "Oslo is sunny today."}]
    response = sllm.chat([ChatMessage(role=MessageRole.USER, content="Weather in Oslo?")], sources=sources)
    assert isinstance(response.raw, Weather)  # raw stays the parsed object, as in LlamaIndex
    answer = traced_answer(response)
    assert answer is not None and [s.id for s in answer.sources] == ["w"]
    fields = field_citations(response)
    assert [f.model_dump(mode="json") for f in fields] == response.additional_kwargs["field_citations"]
    assert [(f.path, f.value) for f in fields] == [("city", response.raw.city), ("sunny", response.raw.sunny)]
    for f in fields:
        assert answer.text[f.char_start : f.char_end] == f.text and set(f.source_ids) <= {"w"}
    async_response = asyncio.run(sllm.achat([ChatMessage(role=MessageRole.USER, content="Weather in Oslo?")], sources=sources))
    assert field_citations(async_response) == fields  # greedy: the same reply
    plain = sllm.chat([ChatMessage(role=MessageRole.USER, content="Weather in Oslo?")])
    assert "field_citations" not in plain.additional_kwargs and field_citations(plain) == []


def test_structured_reply_cut_by_the_token_limit_is_refused(llm: OmniTraceLLM) -> None:
    with pytest.raises(ValueError, match=r"cut by the token limit .*raise max_new_tokens"):
        llm.structured_predict(Weather, PROMPT, llm_kwargs={"max_new_tokens": 3}, city="Oslo")


def test_function_program_mode_goes_through_the_tool_grammar(tiny_tracer: Any) -> None:
    from llama_index.core.types import PydanticProgramMode

    llm = OmniTraceLLM(
        tracer=tiny_tracer, max_new_tokens=80, pydantic_program_mode=PydanticProgramMode.FUNCTION
    )
    assert isinstance(llm.structured_predict(Weather, PROMPT, city="Oslo"), Weather)


# -- usage -----------------------------------------------------------------------------------------
def test_token_counting_handler_sees_the_models_token_counts(tiny_tracer: Any) -> None:
    counter = TokenCountingHandler(tokenizer=lambda text: [0])  # one "token" per string if it estimated
    llm = OmniTraceLLM(tracer=tiny_tracer, max_new_tokens=7, callback_manager=CallbackManager([counter]))
    plain = llm.chat([ChatMessage(role=MessageRole.USER, content="hello there")])
    traced = llm.chat(
        [ChatMessage(role=MessageRole.USER, content="hello there")],
        sources=[{"id": "d", "text": "The lighthouse stands 42 metres tall."}],
    )
    tool = llm.chat_with_tools([SHOUT], "Say hi", tool_required=True, max_new_tokens=40)
    events = counter.llm_token_counts
    assert len(events) == 3
    for event, response in zip(events, (plain, traced, tool), strict=True):
        usage = response.raw["usage"]
        assert event.prompt_token_count == usage["prompt_tokens"] > 1
        assert event.completion_token_count == usage["completion_tokens"] > 1
    assert plain.raw["omnitrace"] is None and isinstance(traced.raw["omnitrace"], TracedAnswer)


# -- the packaged model ------------------------------------------------------------------------------
@pytest.mark.model
def test_smollm2_agent_round_trip(default_tracer: Any) -> None:
    """SmolLM2-135M: a forced call parses with valid arguments, the tool runs, and the answer
    from its result is attributed to that tool call."""
    llm = OmniTraceLLM(tracer=default_tracer, max_new_tokens=48)
    messages = [ChatMessage(role=MessageRole.USER, content="What is the weather in Oslo?")]
    response = llm.chat_with_tools([LOOKUP], chat_history=messages, tool_required=True)
    (call,) = llm.get_tool_calls_from_response(response)
    assert call.tool_name == "lookup" and _valid_lookup(call) and call.tool_kwargs["city"] == "Oslo"
    result = lookup(**call.tool_kwargs)
    history = [
        *messages,
        response.message,
        ChatMessage(role=MessageRole.TOOL, content=result, additional_kwargs={"tool_call_id": call.tool_id}),
    ]
    final = llm.chat_with_tools([LOOKUP], chat_history=history)
    answer = traced_answer(final)
    assert answer is not None and answer.text.strip()
    assert [s.id for s in answer.sources] == [f"lookup:{call.tool_id}"]
    assert answer.cited_source_ids == [f"lookup:{call.tool_id}"]
    out = llm.structured_predict(
        Weather, PromptTemplate("It is sunny in Paris. Give the city and whether it is sunny.")
    )
    assert isinstance(out, Weather)
