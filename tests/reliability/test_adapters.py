"""LangChain and LlamaIndex arguments are checked before decoding, each refusal named."""

from __future__ import annotations

import pytest

from omnitrace_core import InvalidInputError

pytest.importorskip("langchain_core")

NAN = float("nan")


@pytest.fixture()
def chat(tiny_tracer):
    from omnitrace_integrations.langchain import ChatOmniTrace

    return ChatOmniTrace(tracer=tiny_tracer, max_tokens=2)


DOCS = [{"id": "a", "text": "The lighthouse stands 42 metres tall."}]

BAD_CALLS = [
    ({"stop": [123]}, "stop[0]=123"),
    ({"stop": [""]}, "stop[0]=''"),
    ({"stop": ["ok", None]}, "stop[1]=None"),
    ({"stop": 5}, "stop=5"),
    ({"stop": ["\ud800"]}, "lone surrogate"),
    ({"max_tokens": 0}, "max_tokens=0"),
    ({"max_tokens": -3}, "max_tokens=-3"),
    ({"max_tokens": "16"}, "max_tokens='16'"),
    ({"max_tokens": 1.5}, "max_tokens=1.5"),
    ({"max_tokens": True}, "max_tokens=True"),
    ({"temperature": NAN}, "temperature=nan"),
    ({"temperature": -1.0}, "temperature=-1.0"),
    ({"temperature": "hot"}, "temperature='hot'"),
    ({"top_p": 2.0}, "top_p=2.0"),
    ({"top_p": 0.0}, "top_p=0.0"),
    ({"top_k": -1}, "top_k=-1"),
    ({"repetition_penalty": 0.0}, "repetition_penalty=0.0"),
    ({"seed": -1}, "seed=-1"),
    ({"seed": "x"}, "seed='x'"),
    ({"no_repeat_ngram_size": -2}, "no_repeat_ngram_size=-2"),
]


@pytest.mark.parametrize(("kwargs", "fragment"), BAD_CALLS, ids=[repr(k) for k, _ in BAD_CALLS])
def test_chat_model_call_arguments(chat, kwargs, fragment):
    with pytest.raises(InvalidInputError) as info:
        chat.invoke("How tall is it?", sources=DOCS, **kwargs)
    assert fragment in str(info.value)


@pytest.mark.parametrize(("kwargs", "fragment"), BAD_CALLS[:8], ids=[repr(k) for k, _ in BAD_CALLS[:8]])
def test_chat_model_without_sources_checks_too(chat, kwargs, fragment):
    with pytest.raises(InvalidInputError) as info:
        chat.invoke("Hello?", **kwargs)
    assert fragment in str(info.value)


def test_a_valid_stop_still_works(chat):
    msg = chat.invoke("How tall is it?", sources=DOCS, stop=["."])
    assert isinstance(msg.text, str)


@pytest.mark.parametrize(
    "question", [5, None, [{"role": "robot", "content": "hi"}]], ids=["int", "none", "unknown-role"]
)
def test_chat_model_bad_input_is_named(chat, question):
    with pytest.raises((InvalidInputError, ValueError, TypeError, NotImplementedError)) as info:
        chat.invoke(question, sources=DOCS)
    assert str(info.value)


def test_chat_model_source_with_a_surrogate(chat):
    with pytest.raises(InvalidInputError, match="lone surrogate"):
        chat.invoke("How tall?", sources=[{"id": "a", "text": "bad \udc80 byte"}])


def test_llamaindex_llm_bad_generate_kwargs(tiny_tracer):
    pytest.importorskip("llama_index.core")
    from llama_index.core.base.llms.types import ChatMessage, CitableBlock, MessageRole, TextBlock

    from omnitrace_integrations.llama_index import OmniTraceLLM

    llm = OmniTraceLLM(tracer=tiny_tracer, max_new_tokens=2)
    message = ChatMessage(
        role=MessageRole.USER,
        blocks=[CitableBlock(source="a", title="A", content="The lighthouse is 42 m."), TextBlock(text="How tall?")],
    )
    for kwargs, fragment in (({"top_p": 3.0}, "top_p=3.0"), ({"use_cache": False}, "use_cache=False")):
        with pytest.raises(InvalidInputError, match=fragment):
            llm.chat([message], **kwargs)
