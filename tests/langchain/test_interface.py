"""The rest of the chat-model interface on a tiny random model: token counting with the model's
own tokenizer, the profile, and the citation event on a bare model's stream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.tools import tool

from omnitrace_integrations.langchain import ChatOmniTrace
from omnitrace_integrations.langchain.chat_model import CITATION_EVENT

DOCS = [Document("The lighthouse stands 42 metres tall. It was built in 1901.", id="d1")]


@tool
def lookup(city: str) -> str:
    """Weather in a city."""
    return f"{city}: sunny"


@pytest.fixture(scope="module")
def llm(tiny_tracer: Any) -> ChatOmniTrace:
    return ChatOmniTrace(tracer=tiny_tracer, max_tokens=12)


@pytest.fixture
def no_gpt2(monkeypatch: pytest.MonkeyPatch) -> None:
    """LangChain's fallback tokenizer (GPT-2 from the hub) must never be reached."""

    def refuse(text: str) -> list[int]:
        raise AssertionError("the GPT-2 fallback tokenizer was used")

    monkeypatch.setattr("langchain_core.language_models.base._get_token_ids_default_method", refuse)


def test_token_ids_come_from_the_models_tokenizer(llm: ChatOmniTrace, tiny_tokenizer: Any, no_gpt2: None) -> None:
    text = "The lighthouse stands 42 metres tall."
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert llm.get_token_ids(text) == ids and llm.get_num_tokens(text) == len(ids) > 0


def test_num_tokens_from_messages_is_the_prompt_that_is_sent(llm: ChatOmniTrace, no_gpt2: None) -> None:
    plain = [SystemMessage("Be brief."), HumanMessage("hello there")]
    assert llm.get_num_tokens_from_messages(plain) == llm.invoke(plain).usage_metadata["input_tokens"]
    sourced = [HumanMessage("How tall is the lighthouse?")]
    count = llm.get_num_tokens_from_messages(
        [HumanMessage(content=[{"type": "text-plain", "text": DOCS[0].page_content, "id": "d1"}, "How tall?"])]
    )
    sent = llm.invoke([HumanMessage("How tall?")], sources=DOCS).usage_metadata["input_tokens"]
    assert count == sent
    with_tools = llm.get_num_tokens_from_messages(sourced, tools=[lookup])
    assert with_tools > llm.get_num_tokens_from_messages(sourced)  # the tool listing is counted


def test_profile_of_a_given_tracer(llm: ChatOmniTrace, tiny_model: Any) -> None:
    profile = llm.profile
    assert profile is not None
    assert profile["max_input_tokens"] == tiny_model.config.max_position_embeddings
    assert profile["name"] == "tiny-llama"
    assert profile["tool_calling"] and profile["tool_choice"] and profile["structured_output"]
    assert profile["text_inputs"] and not profile["image_inputs"] and not profile["reasoning_output"]


def test_profile_from_a_folder_without_loading(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 4096}))
    llm = ChatOmniTrace(model=str(tmp_path))
    assert llm.tracer is None  # nothing was loaded
    assert llm.profile is not None and llm.profile["max_input_tokens"] == 4096
    assert llm.profile["audio_inputs"] is False and llm.profile["open_weights"] is True


def test_a_user_profile_is_kept(tiny_tracer: Any) -> None:
    mine = {"max_input_tokens": 10, "tool_calling": False}
    assert ChatOmniTrace(tracer=tiny_tracer, profile=mine).profile == mine


class _Collect(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, UUID]] = []
        self.model_runs: list[UUID] = []

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.model_runs.append(run_id)

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.events.append((name, run_id))


def test_bare_stream_sends_the_citation_event_on_its_own_run(llm: ChatOmniTrace) -> None:
    handler = _Collect()
    answer = None
    for chunk in llm.stream("How tall?", sources=DOCS, config={"callbacks": [handler]}):
        answer = chunk if answer is None else answer + chunk
    sentences = answer.response_metadata["omnitrace"]["sentences"] if answer is not None else []
    assert sentences and len(handler.events) == len(sentences)
    assert {e for e, _ in handler.events} == {CITATION_EVENT}
    assert {r for _, r in handler.events} == set(handler.model_runs)  # the model's run, not a guess


async def test_bare_astream_events_include_the_citation_event(llm: ChatOmniTrace) -> None:
    custom: list[dict[str, Any]] = []
    starts: list[str] = []
    async for event in llm.astream_events("How tall?", version="v2", sources=DOCS):
        if event["event"] == "on_custom_event":
            custom.append(event)
        elif event["event"] == "on_chat_model_start":
            starts.append(event["run_id"])
    assert custom and all(e["name"] == CITATION_EVENT for e in custom)
    assert {e["run_id"] for e in custom} == set(starts)
    assert {"sentence", "annotations", "grounded"} <= set(custom[0]["data"])
