"""ChatOmniTrace on a scripted fake tracer (exact content) and on a tiny random Llama (real decode)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableLambda

from omnitrace_integrations.langchain import CITATION_EVENT, ChatOmniTrace
from omnitrace_integrations.langchain import chat_model as chat_module
from tests.langchain.conftest import FakeTracer


def _sum(chunks: list[Any]) -> Any:
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    return full


def _same(streamed: Any, invoked: AIMessage) -> None:
    assert streamed.content == invoked.content
    assert streamed.usage_metadata == invoked.usage_metadata
    a, b = dict(streamed.response_metadata), dict(invoked.response_metadata)
    if "omnitrace" in a:  # wall-clock timings differ between two runs, nothing else may
        a["omnitrace"] = {k: v for k, v in a["omnitrace"].items() if k != "timings"}
        b["omnitrace"] = {k: v for k, v in b["omnitrace"].items() if k != "timings"}
    assert a == b


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any, float]] = []
        self.tokens: list[float] = []

    def on_custom_event(self, name: str, data: Any, **kw: Any) -> None:
        self.events.append((name, data, time.perf_counter()))

    def on_llm_new_token(self, token: Any, **kw: Any) -> None:
        self.tokens.append(time.perf_counter())


class Exploding(BaseCallbackHandler):
    def on_custom_event(self, *a: Any, **kw: Any) -> None:
        raise RuntimeError("handler bug")

    def on_llm_new_token(self, *a: Any, **kw: Any) -> None:
        raise RuntimeError("handler bug")

    def on_llm_end(self, *a: Any, **kw: Any) -> None:
        raise RuntimeError("handler bug")


# -- construction ---------------------------------------------------------------------------


def test_construction_loads_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[str] = []
    fake = FakeTracer([[("x", [])]])

    def load(name: str, **kw: Any) -> Any:
        loads.append(name)
        time.sleep(0.05)
        return fake

    monkeypatch.setattr(chat_module, "shared_tracer", load)
    llm = ChatOmniTrace(model="some-model", max_tokens=5, temperature=0)
    assert llm.tracer is None and loads == []
    threads = [threading.Thread(target=llm.get_tracer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == ["some-model"]  # once, thread-safe
    assert llm.get_tracer() is fake


def test_loaded_model_pair_is_wrapped_lazily(
    tiny_model: Any, tiny_tokenizer: Any, docs: list[Any]
) -> None:
    llm = ChatOmniTrace(hf_model=tiny_model, hf_tokenizer=tiny_tokenizer, max_tokens=4)
    assert llm.tracer is None
    msg = llm.invoke("q", sources=docs)
    assert llm.tracer is not None and msg.usage_metadata["output_tokens"] >= 1
    with pytest.raises(ValueError, match="hf_tokenizer"):
        ChatOmniTrace(hf_model=tiny_model).get_tracer()


def test_import_without_langchain_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['langchain_core'] = None\n"
        "try:\n    import omnitrace_integrations.langchain\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert 'pip install "omnitrace-integrations[langchain]"' in out


def test_ls_params_and_identity(fake_tracer: FakeTracer) -> None:
    llm = ChatOmniTrace(tracer=fake_tracer, max_tokens=10, stop=["x"], temperature=0.0)
    params = llm._get_ls_params()
    assert params["ls_provider"] == "omnitrace"
    assert params["ls_model_name"] == "smollm2-135m"
    assert params["ls_max_tokens"] == 10 and params["ls_stop"] == ["x"]
    assert llm._get_ls_params(model="other")["ls_model_name"] == "other"


# -- invoke: content blocks, annotations, metadata --------------------------------------------


def test_invoke_returns_standard_citations(fake_tracer: FakeTracer, docs: list[Any]) -> None:
    llm = ChatOmniTrace(tracer=fake_tracer)
    msg = llm.invoke("When was Valbrook founded?", sources=docs)
    assert isinstance(msg, AIMessage)
    (block,) = msg.content
    assert block["type"] == "text"
    text = block["text"]
    assert text == "Valbrook Works was founded in 1905. The lighthouse is 42 metres tall."
    anns = block["annotations"]
    assert [a["id"] for a in anns] == ["valbrook", "lighthouse", "valbrook"]
    first = anns[0]
    assert first["type"] == "citation"
    assert text[first["start_index"] : first["end_index"]] == "Valbrook Works was founded in 1905."
    assert first["cited_text"] == docs[0].page_content
    assert first["title"] == "Valbrook Works" and first["url"] == "https://example.org/valbrook"
    assert first["extras"]["source_id"] == "valbrook"
    assert first["extras"]["score"] == pytest.approx(0.9)
    assert first["extras"]["unit_id"] == "valbrook" and first["extras"]["modality"] == "text"
    assert "url" not in anns[1]  # the lighthouse document has no url
    assert (
        text[anns[1]["start_index"] : anns[1]["end_index"]] == "The lighthouse is 42 metres tall."
    )
    # the content blocks LangChain reads back are the same standard blocks
    assert msg.content_blocks[0]["annotations"] == anns  # type: ignore[typeddict-item]
    assert msg.usage_metadata == {"input_tokens": 50, "output_tokens": 12, "total_tokens": 62}
    assert msg.response_metadata["model_name"] == "fake-model"
    assert msg.response_metadata["finish_reason"] == "stop"
    core = msg.response_metadata["omnitrace"]
    json.dumps(core)  # JSON-safe
    assert [s["id"] for s in core["sources"]] == ["valbrook", "lighthouse"]
    # sources reached the tracer unchanged
    sent = fake_tracer.calls[0]["sources"]
    assert [s.id for s in sent] == ["valbrook", "lighthouse"]
    assert sent[0].text == docs[0].page_content and sent[0].metadata["title"] == "Valbrook Works"
    assert fake_tracer.calls[0]["question"] == "When was Valbrook founded?"


def test_bind_sources_and_generation_kwargs(fake_tracer: FakeTracer, docs: list[Any]) -> None:
    llm = ChatOmniTrace(tracer=fake_tracer, max_tokens=7, timeout=3.0)
    msg = llm.bind(sources=docs).invoke("q", stop=["\n\n"])
    assert msg.content[0]["annotations"]
    gen = fake_tracer.calls[0]["gen"]
    assert gen["max_new_tokens"] == 7 and gen["max_time"] == 3.0
    assert gen["stop"] == ["\n\n"]  # the tracer validates, stops at and trims it
    assert "stopping_criteria" in gen  # cancellation hook


def test_system_message_extends_the_tracer_prompt(fake_tracer: FakeTracer, docs: list[Any]) -> None:
    from langchain_core.messages import SystemMessage

    ChatOmniTrace(tracer=fake_tracer).invoke(
        [SystemMessage("Be brief."), HumanMessage("q")], sources=docs
    )
    cfg = fake_tracer.calls[0]["config"]
    assert cfg.system_prompt.endswith("\nBe brief.")


def test_unknown_kwargs_and_model_override_are_refused(
    fake_tracer: FakeTracer, docs: list[Any]
) -> None:
    llm = ChatOmniTrace(tracer=fake_tracer)
    with pytest.raises(ValueError, match="frobnicate"):
        llm.invoke("q", sources=docs, frobnicate=1)
    with pytest.raises(ValueError, match=r"tool_choice 'lookup' is not .* \(x\)"):
        llm.invoke("q", sources=docs, tools=[{"name": "x"}], tool_choice="lookup")
    with pytest.raises(ValueError, match="model override"):
        llm.invoke("q", sources=docs, model="qwen2.5-0.5b")


# -- streaming ----------------------------------------------------------------------------------


def test_stream_sums_to_invoke_with_annotations(fake_tracer: FakeTracer, docs: list[Any]) -> None:
    llm = ChatOmniTrace(tracer=fake_tracer)
    chunks = list(llm.stream("q", sources=docs))
    assert chunks[-1].chunk_position == "last"
    # the first sentence's citations arrive before the second sentence's text
    texts = ["".join(b.get("text", "") for b in c.content) for c in chunks]
    first_ann = next(
        i for i, c in enumerate(chunks) if any(b.get("annotations") for b in c.content)
    )
    assert "".join(texts[:first_ann]) == "Valbrook Works was founded in 1905."
    _same(_sum(chunks), llm.invoke("q", sources=docs))


async def test_astream_and_ainvoke_match(fake_tracer: FakeTracer, docs: list[Any]) -> None:
    llm = ChatOmniTrace(tracer=fake_tracer)
    chunks = [c async for c in llm.astream("q", sources=docs)]
    _same(_sum(chunks), await llm.ainvoke("q", sources=docs))
    results = await llm.abatch(["a", "b"], sources=docs)
    assert len(results) == 2 and all(r.content[0]["annotations"] for r in results)


def test_batch(fake_tracer: FakeTracer, docs: list[Any]) -> None:
    results = ChatOmniTrace(tracer=fake_tracer).batch(["a", "b", "c"], sources=docs)
    assert [r.text for r in results] == [results[0].text] * 3


def test_v1_output_version_stream_matches_invoke(fake_tracer: FakeTracer, docs: list[Any]) -> None:
    llm = ChatOmniTrace(tracer=fake_tracer, output_version="v1")
    full = _sum(list(llm.stream("q", sources=docs)))
    msg = llm.invoke("q", sources=docs)
    assert full.content_blocks[0]["annotations"] == msg.content_blocks[0]["annotations"]  # type: ignore[typeddict-item]
    assert full.text == msg.text


# -- citation events ----------------------------------------------------------------------------


def test_invoke_announces_each_sentence(fake_tracer: FakeTracer, docs: list[Any]) -> None:
    rec = Recorder()
    ChatOmniTrace(tracer=fake_tracer).invoke("q", sources=docs, config={"callbacks": [rec]})
    names = [n for n, _, _ in rec.events]
    assert names == [CITATION_EVENT, CITATION_EVENT]
    data = rec.events[0][1]
    assert data["sentence"]["text"] == "Valbrook Works was founded in 1905."
    assert [a["id"] for a in data["annotations"]] == ["valbrook"]
    json.dumps(data)


def test_stream_inside_a_chain_announces_citations(
    fake_tracer: FakeTracer, docs: list[Any]
) -> None:
    llm = ChatOmniTrace(tracer=fake_tracer)
    chain = RunnableLambda(lambda q: q) | llm.bind(sources=docs)
    rec = Recorder()
    chunks = list(chain.stream("q", config={"callbacks": [rec]}))
    assert [n for n, _, _ in rec.events] == [CITATION_EVENT, CITATION_EVENT]
    assert _sum(chunks).content[0]["annotations"]


async def test_astream_events_sees_citation_events(
    fake_tracer: FakeTracer, docs: list[Any]
) -> None:
    llm = ChatOmniTrace(tracer=fake_tracer).bind(sources=docs)
    chain = RunnableLambda(lambda q: q) | llm
    kinds = [e["event"] async for e in chain.astream_events("q", version="v2")]
    custom = [e for e in kinds if e == "on_custom_event"]
    assert len(custom) == 2
    assert "on_chat_model_stream" in kinds


def test_raising_handlers_never_lose_the_answer(fake_tracer: FakeTracer, docs: list[Any]) -> None:
    llm = ChatOmniTrace(tracer=fake_tracer)
    msg = llm.invoke("q", sources=docs, config={"callbacks": [Exploding()]})
    assert msg.content[0]["annotations"]
    chunks = list(llm.stream("q", sources=docs, config={"callbacks": [Exploding()]}))
    assert _sum(chunks).text == msg.text


def test_strict_handler_in_citation_event_does_not_lose_the_answer(
    fake_tracer: FakeTracer, docs: list[Any]
) -> None:
    class StrictEvents(BaseCallbackHandler):
        raise_error = True

        def on_custom_event(self, *a: Any, **kw: Any) -> None:
            raise RuntimeError("strict handler bug")

    msg = ChatOmniTrace(tracer=fake_tracer).invoke(
        "q", sources=docs, config={"callbacks": [StrictEvents()]}
    )
    assert msg.content[0]["annotations"]


# -- real decoding on a tiny random model --------------------------------------------------------


@pytest.fixture()
def tiny_llm(tiny_tracer: Any) -> ChatOmniTrace:
    return ChatOmniTrace(tracer=tiny_tracer, max_tokens=24)


def test_tiny_model_stream_equals_invoke(tiny_llm: ChatOmniTrace, docs: list[Any]) -> None:
    msg = tiny_llm.invoke("How tall is the lighthouse?", sources=docs)
    assert (
        msg.response_metadata["omnitrace"]["generated_tokens"]
        == msg.usage_metadata["output_tokens"]
    )
    _same(_sum(list(tiny_llm.stream("How tall is the lighthouse?", sources=docs))), msg)


def test_no_sources_answers_without_citations(
    tiny_llm: ChatOmniTrace, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="omnitrace.langchain"):
        msg = tiny_llm.invoke([HumanMessage("hello"), AIMessage("hi"), HumanMessage("how are you")])
    assert "no sources" in caplog.text
    (block,) = msg.content
    assert "annotations" not in block and "omnitrace" not in msg.response_metadata
    assert msg.usage_metadata["output_tokens"] > 0
    assert msg.response_metadata["finish_reason"] in ("stop", "length")
    _same(
        _sum(
            list(
                tiny_llm.stream(
                    [HumanMessage("hello"), AIMessage("hi"), HumanMessage("how are you")]
                )
            )
        ),
        msg,
    )


def _decode_threads() -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith(("omnitrace-decode", "omnitrace-async", "omnitrace-plain"))
    ]


async def test_cancelled_astream_leaks_no_thread(tiny_tracer: Any, docs: list[Any]) -> None:
    llm = ChatOmniTrace(tracer=tiny_tracer, max_tokens=400)

    async def consume() -> None:
        async for _ in llm.astream("q", sources=docs):
            await asyncio.sleep(0)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if not _decode_threads():
            break
        await asyncio.sleep(0.05)
    assert _decode_threads() == []
    msg = await ChatOmniTrace(tracer=tiny_tracer, max_tokens=5).ainvoke(
        "q", sources=docs
    )  # model still usable
    assert msg.usage_metadata["output_tokens"] >= 1


def test_breaking_out_of_stream_stops_decoding(tiny_tracer: Any, docs: list[Any]) -> None:
    llm = ChatOmniTrace(tracer=tiny_tracer, max_tokens=400)
    stream = llm.stream("q", sources=docs)
    next(stream)
    t0 = time.perf_counter()
    stream.close()
    assert time.perf_counter() - t0 < 5
    for _ in range(100):
        if not _decode_threads():
            break
        time.sleep(0.05)
    assert _decode_threads() == []


async def test_async_paths_do_not_block_the_loop(tiny_tracer: Any, docs: list[Any]) -> None:
    llm = ChatOmniTrace(tracer=tiny_tracer, max_tokens=40)
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0.005)

    tick_task = asyncio.create_task(ticker())
    await llm.ainvoke("q", sources=docs)
    done = True
    await tick_task
    assert ticks > 3
