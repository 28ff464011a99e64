"""Clients against a running server (tiny model): RemoteTracer, ChatOmniTrace / OmniTraceLLM with
``base_url``, plain OpenAI-shaped clients, and the trace context over HTTP."""

from __future__ import annotations

import threading

import httpx
import pytest

from omnitrace_core import FinalEvent, InvalidInputError, SentenceEvent, TextDelta, TextSource, TracerConfig
from tests.serving.conftest import DOCS, QUESTION, chat_body
from tests.serving.fakes import GatedTracer

SOURCES = [TextSource(id=d["id"], title=d["title"], text=d["text"]) for d in DOCS]


def _same(a, b):
    assert a.model_copy(update={"timings": {}}) == b.model_copy(update={"timings": {}})


@pytest.fixture()
def remote(tiny_tracer, serve_app):
    from omnitrace_integrations.serving.client import RemoteTracer

    client = RemoteTracer(serve_app(tiny_tracer))
    yield client
    client.close()


def test_remote_tracer_generate_stream_and_attribute_equal_the_local_tracer(tiny_tracer, remote):
    assert (
        remote.loaded.name == "tiny-llama"
        and remote.loaded.context_window == tiny_tracer.loaded.context_window
    )
    assert remote.config == tiny_tracer.config
    local = tiny_tracer.generate(SOURCES, QUESTION, max_new_tokens=8)
    _same(remote.generate(SOURCES, QUESTION, max_new_tokens=8), local)

    events = list(remote.stream(SOURCES, QUESTION, max_new_tokens=8))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == local.text
    assert [e.sentence for e in events if isinstance(e, SentenceEvent)] == local.sentences
    assert isinstance(events[-1], FinalEvent)
    _same(events[-1].answer, local)

    response = "The lighthouse stands 42 metres tall."
    _same(remote.attribute(SOURCES, QUESTION, response), tiny_tracer.attribute(SOURCES, QUESTION, response))


def test_remote_tracer_sends_per_request_config_and_refuses_the_rest(tiny_tracer, remote):
    cfg = tiny_tracer.config.model_copy(update={"split_sources": True, "system_prompt": "Answer briefly."})
    _same(
        remote.generate(SOURCES, QUESTION, config=cfg, max_new_tokens=6),
        tiny_tracer.generate(SOURCES, QUESTION, config=cfg, max_new_tokens=6),
    )
    with pytest.raises(InvalidInputError, match="signal"):
        remote.generate(SOURCES, QUESTION, config=TracerConfig(signal="rawatt"), max_new_tokens=2)
    with pytest.raises(InvalidInputError, match="num_beams"):
        remote.generate(SOURCES, QUESTION, num_beams=2)


def test_remote_errors_are_named(tiny_tracer, serve_app):
    from omnitrace_integrations.serving.client import RemoteRequestError, RemoteServerError, RemoteTracer

    gated = GatedTracer(tiny_tracer)
    client = RemoteTracer(serve_app(gated, queue_size=0, max_sources=1, retry_after_s=4))
    with pytest.raises(RemoteRequestError, match="max_sources") as info:
        client.generate(SOURCES, QUESTION, max_new_tokens=2)
    assert info.value.status == 400 and info.value.code == "max_sources"
    busy = threading.Thread(
        target=client.generate, args=(SOURCES[:1], QUESTION), kwargs={"max_new_tokens": 2}
    )
    busy.start()
    assert gated.started.wait(30)
    with pytest.raises(RemoteServerError, match="queue_full") as info:
        list(client.stream(SOURCES[:1], QUESTION, max_new_tokens=2))
    assert info.value.status == 429 and info.value.retry_after == 4.0
    gated.gate.set()
    busy.join(60)


def test_chat_omnitrace_with_base_url_matches_the_local_model(tiny_tracer, serve_app):
    pytest.importorskip("langchain_core")
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.documents import Document

    from omnitrace_integrations.langchain import CITATION_EVENT, ChatOmniTrace

    class Events(BaseCallbackHandler):
        def __init__(self):
            self.sentences = []

        def on_custom_event(self, name, data, **kwargs):
            if name == CITATION_EVENT:
                self.sentences.append(data)

    docs = [Document(d["text"], id=d["id"], metadata={"title": d["title"]}) for d in DOCS]
    url = serve_app(tiny_tracer)
    remote = ChatOmniTrace(base_url=url, max_tokens=8)
    local = ChatOmniTrace(tracer=tiny_tracer, max_tokens=8)
    seen_r, seen_l = Events(), Events()
    got = remote.invoke(QUESTION, sources=docs, config={"callbacks": [seen_r]})
    want = local.invoke(QUESTION, sources=docs, config={"callbacks": [seen_l]})
    assert got.content == want.content and got.content[0].get("annotations")
    assert got.usage_metadata == want.usage_metadata
    assert seen_r.sentences == seen_l.sentences and seen_r.sentences

    chunks = list(remote.stream(QUESTION, sources=docs))
    joined = chunks[0]
    for c in chunks[1:]:
        joined = joined + c
    assert joined.text == want.text

    plain_r = remote.invoke("Say hello.")
    plain_l = local.invoke("Say hello.")
    assert plain_r.text == plain_l.text and plain_r.usage_metadata == plain_l.usage_metadata

    response = "The lighthouse stands 42 metres tall."
    assert (
        remote.attribute_message(QUESTION, response, sources=docs).content
        == local.attribute_message(QUESTION, response, sources=docs).content
    )


@pytest.mark.asyncio
async def test_chat_omnitrace_async_with_base_url(tiny_tracer, serve_app):
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from omnitrace_integrations.langchain import ChatOmniTrace

    docs = [Document(d["text"], id=d["id"]) for d in DOCS]
    remote = ChatOmniTrace(base_url=serve_app(tiny_tracer), max_tokens=6)
    got = await remote.ainvoke(QUESTION, sources=docs)
    want = await ChatOmniTrace(tracer=tiny_tracer, max_tokens=6).ainvoke(QUESTION, sources=docs)
    assert got.content == want.content


def test_omnitrace_llm_with_base_url_matches_the_local_model(tiny_tracer, serve_app):
    pytest.importorskip("llama_index.core")
    from llama_index.core.base.llms.types import ChatMessage, MessageRole
    from llama_index.core.schema import TextNode

    from omnitrace_integrations.llama_index import OmniTraceLLM

    nodes = [TextNode(text=d["text"], id_=d["id"]) for d in DOCS]
    url = serve_app(tiny_tracer)
    remote = OmniTraceLLM(base_url=url, max_new_tokens=8)
    local = OmniTraceLLM(tracer=tiny_tracer, max_new_tokens=8)
    msg = [ChatMessage(role=MessageRole.USER, content=QUESTION)]
    got, want = remote.chat(msg, sources=nodes), local.chat(msg, sources=nodes)
    assert got.message.blocks == want.message.blocks
    assert len(got.message.blocks) > 1  # text + citation blocks
    _same_dict = got.additional_kwargs["omnitrace"], want.additional_kwargs["omnitrace"]
    assert _same_dict[0]["sentences"] == _same_dict[1]["sentences"]
    streamed = list(remote.stream_chat(msg, sources=nodes))
    assert streamed[-1].message.blocks == want.message.blocks
    assert remote.metadata.model_name == "tiny-llama"
    plain = remote.chat([ChatMessage(role=MessageRole.USER, content="Say hello.")])
    assert (
        plain.message.content
        == local.chat([ChatMessage(role=MessageRole.USER, content="Say hello.")]).message.content
    )


def test_plain_openai_shaped_clients_get_the_text(tiny_tracer, serve_app):
    url = serve_app(tiny_tracer)
    local = tiny_tracer.generate(SOURCES, QUESTION, max_new_tokens=8)
    r = httpx.post(
        f"{url}/v1/chat/completions", json={"model": "tiny-llama", **chat_body()}, timeout=60
    ).json()
    assert r["choices"][0]["message"]["content"] == local.text
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    completion = client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=8,
        extra_body={"documents": DOCS},
    )
    assert completion.choices[0].message.content == local.text
    assert completion.usage.completion_tokens == local.generated_tokens
    stream = client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=8,
        stream=True,
        extra_body={"documents": DOCS},
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == local.text


def test_trace_context_goes_over_http(tiny_model, tiny_tokenizer, serve_app):
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from omnitrace_core import Tracer
    from omnitrace_integrations.otel import OTelObserver
    from omnitrace_integrations.serving.client import RemoteTracer

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    server_tracer = Tracer(
        tiny_model, tiny_tokenizer, model_name="tiny-llama", observers=[OTelObserver(provider)]
    )
    client = RemoteTracer(serve_app(server_tracer))
    with provider.get_tracer("app").start_as_current_span("app request") as app:
        answer = client.generate(SOURCES, QUESTION, max_new_tokens=6)
    assert server_tracer.flush_observers(10)
    spans = exporter.get_finished_spans()
    (chat,) = [s for s in spans if s.name == f"chat {answer.model}"]
    assert chat.context.trace_id == app.get_span_context().trace_id
    assert chat.parent is not None and chat.parent.span_id == app.get_span_context().span_id
    provider.shutdown()


def test_closing_a_remote_stream_stops_the_servers_generation(tiny_tracer, serve_app):
    from omnitrace_integrations.serving.client import RemoteTracer
    from tests.serving.fakes import EndlessTracer

    endless = EndlessTracer(tiny_tracer)
    client = RemoteTracer(serve_app(endless))
    events = client.stream(SOURCES, QUESTION, max_new_tokens=8)
    for _, event in zip(range(5), events, strict=False):
        assert isinstance(event, TextDelta)
    events.close()
    assert endless.closed.wait(10), "the server kept generating after the client closed its stream"
