"""``RemoteTracer``: the :class:`~omnitrace_core.Tracer` API over HTTP, against ``omnitrace serve``.

``stream`` / ``generate`` / ``attribute`` send the sources and question to the server and rebuild
the server's own result objects (``TextDelta``, ``SentenceEvent``, ``FinalEvent``,
``TracedAnswer``) from its response (``omnitrace.include_answer``), so code written for an
in-process tracer (``ChatOmniTrace``, ``OmniTraceLLM``, observers of their callbacks) gets the
same citations from a server. The caller's OpenTelemetry trace context goes along in the
``traceparent`` header, so the server's spans join the caller's trace.

Only ``httpx`` is needed (``serve`` extra); nothing here imports a web framework.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnitrace_core import (
    ContextLengthError,
    FinalEvent,
    InvalidInputError,
    MediaSource,
    OmniTraceError,
    SentenceAttribution,
    SentenceEvent,
    StreamEvent,
    TextDelta,
    TextSource,
    TracedAnswer,
    TracerConfig,
)
from omnitrace_core.decoding import Grammar
from omnitrace_core.sources import validate_sources
from omnitrace_core.tools import ToolCall, ToolSpec, resolve_choice
from omnitrace_integrations.serving.plain import PlainFinal

#: Config fields a request may change on the server (the rest are fixed by the server's tracer).
PER_REQUEST_CONFIG = frozenset({"system_prompt", "split_sources"})

#: ``model.generate`` kwargs that have no remote meaning and are dropped: cancellation happens
#: by closing the stream, the stop strings are matched by the server's own tokenizer.
_DROPPED = frozenset({"stopping_criteria", "tokenizer", "streamer"})


class RemoteRequestError(InvalidInputError):
    """The server refused the request (4xx): ``status`` and ``code`` name the limit or problem."""

    def __init__(self, message: str, status: int, code: str | None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class RemoteServerError(OmniTraceError):
    """The server failed, is busy (429, ``retry_after`` seconds) or cannot be reached."""

    def __init__(self, message: str, status: int | None, code: str | None, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.code, self.retry_after = status, code, retry_after


@dataclass(frozen=True)
class RemoteModel:
    """What ``GET /v1/models`` says about the served model (the ``Tracer.loaded`` stand-in)."""

    name: str
    context_window: int
    config: TracerConfig


class RemoteTracer:
    """A tracer whose model runs in ``omnitrace serve`` at ``base_url``.

    Args:
        base_url: The server, e.g. ``http://127.0.0.1:8000`` (``/v1`` is added).
        api_key: Bearer token, if the server requires one.
        timeout: Seconds to wait for a whole answer (and for each streamed piece).
        headers: Extra headers sent with every request.
    """

    tokenizer = None
    model = None

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 300.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        import httpx

        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self._headers = {**(headers or {}), **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, headers=self._headers)
        self._info: RemoteModel | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RemoteTracer({self.base_url!r})"

    def close(self) -> None:
        self._client.close()

    # -- what the server serves ---------------------------------------------------------------
    @property
    def loaded(self) -> RemoteModel:
        """The served model's name, context window and tracer config (fetched once)."""
        if self._info is None:
            with self._lock:
                if self._info is None:
                    card = self._json("GET", "/v1/models")["data"][0]
                    extra = card.get("omnitrace") or {}
                    self._info = RemoteModel(
                        name=str(card["id"]),
                        context_window=int(extra.get("context_window") or 0),
                        config=TracerConfig.model_validate(extra.get("config") or {}),
                    )
        return self._info

    @property
    def config(self) -> TracerConfig:
        return self.loaded.config

    # -- the Tracer API -------------------------------------------------------------------------
    def stream(
        self,
        sources: Sequence[Any],
        question: str,
        *,
        config: TracerConfig | None = None,
        **generation_kwargs: Any,
    ) -> Iterator[StreamEvent]:
        """Like :meth:`Tracer.stream`: text deltas, a sentence event per cited sentence, the result.

        Closing the iterator early closes the connection, which stops the server's generation.
        """
        body = self._chat_body(sources, question, config, generation_kwargs, stream=True)
        return self._stream_events(body)

    def generate(
        self,
        sources: Sequence[Any],
        question: str,
        *,
        config: TracerConfig | None = None,
        **generation_kwargs: Any,
    ) -> TracedAnswer:
        """Like :meth:`Tracer.generate` (one non-streaming request)."""
        body = self._chat_body(sources, question, config, generation_kwargs, stream=False)
        return TracedAnswer.model_validate(
            self._json("POST", "/v1/chat/completions", body)["omnitrace"]["answer"]
        )

    def attribute(
        self, sources: Sequence[Any], question: str, response: str, *, config: TracerConfig | None = None
    ) -> TracedAnswer:
        """Like :meth:`Tracer.attribute`: the server attributes ``response`` teacher-forced."""
        body = {
            "messages": [{"role": "user", "content": question}],
            "documents": documents(sources),
            "response": response,
            "omnitrace": {**self._options(config), "include_answer": True},
        }
        return TracedAnswer.model_validate(self._json("POST", "/v1/attribute", body)["omnitrace"]["answer"])

    def chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        tools: Sequence[ToolSpec] = (),
        tool_choice: Any = None,
        parallel_tool_calls: bool = True,
        config: TracerConfig | None = None,
        stop: str | Sequence[str] | None = None,
        grammar: Grammar | None = None,
        threaded: bool = True,
        **generation_kwargs: Any,
    ) -> Iterator[StreamEvent]:
        """Like :meth:`Tracer.chat`: a conversation without sources, tools and tool choice
        included, decoded on the server (which builds the same tool-call grammar).

        ``messages`` are chat-template turns (assistant ``tool_calls`` as ``{"id", "name",
        "arguments"}``, ``tool`` turns with ``tool_call_id`` / ``name``); they are sent in
        OpenAI's shape. Yields the streamed text deltas, then a :class:`FinalEvent` whose answer
        is the server's own (``text`` is the model's raw reply, tool-call blocks included, so
        the adapters parse it exactly as in-process). ``grammar``: a JSON-schema grammar, sent
        as ``response_format``.
        """
        del threaded  # the server decides how it decodes
        self._options(config)  # a config the server cannot honour is refused by name
        gen = dict(generation_kwargs)
        if stop is not None:
            gen["stop"] = stop
        body: dict[str, Any] = {
            "messages": [_openai_turn(m) for m in messages],
            "stream": True,
            "omnitrace": {"include_answer": True, "format_instruction": ""},
            **_sampling(gen),
            **_response_format(grammar),
        }
        if tools:
            body["tools"] = [t.openai() for t in tools]
            body["parallel_tool_calls"] = bool(parallel_tool_calls)
            if tool_choice is not None:
                choice = resolve_choice(tools, tool_choice)
                body["tool_choice"] = (
                    choice
                    if choice in ("auto", "required", "none")
                    else {"type": "function", "function": {"name": choice}}
                )
        return self._chat_events(body)

    def chat_stream(
        self, turns: list[dict[str, str]], **generation_kwargs: Any
    ) -> Iterator[TextDelta | PlainFinal]:
        """A conversation without sources (no citations): text deltas, then :class:`PlainFinal`."""
        body: dict[str, Any] = {
            "messages": turns,
            "stream": True,
            "stream_options": {"include_usage": True},
            **_sampling(generation_kwargs),
        }
        return self._plain_events(body)

    # -- internals ---------------------------------------------------------------------------------
    def _options(self, config: TracerConfig | None) -> dict[str, Any]:
        if config is None:
            return {}
        server = self.config.model_dump(mode="json")
        wanted = config.model_dump(mode="json")
        fixed = sorted(k for k in wanted if k not in PER_REQUEST_CONFIG and wanted[k] != server.get(k))
        if fixed:
            raise InvalidInputError(
                f"the server's tracer config is fixed; this request changes {', '.join(fixed)} "
                f"(per request only {', '.join(sorted(PER_REQUEST_CONFIG))} may change). "
                "Start the server with the config you need."
            )
        return {k: wanted[k] for k in PER_REQUEST_CONFIG if wanted[k] != server.get(k)}

    def _chat_body(
        self,
        sources: Sequence[Any],
        question: str,
        config: TracerConfig | None,
        gen: dict[str, Any],
        stream: bool,
    ) -> dict[str, Any]:
        gen = dict(gen)
        options = self._options(config)
        if "no_repeat_ngram_size" in gen:
            options["no_repeat_ngram_size"] = int(gen.pop("no_repeat_ngram_size"))
        grammar = gen.pop("grammar", None)
        if grammar is not None:
            # The caller's prompt already says what to write (as in-process): no second instruction.
            options["format_instruction"] = ""
        return {
            "messages": [{"role": "user", "content": question}],
            "documents": documents(sources),
            "stream": stream,
            "omnitrace": {**options, "include_answer": True},
            **_sampling(gen),
            **_response_format(grammar),
        }

    def _headers_with_trace(self) -> dict[str, str]:
        carrier: dict[str, str] = {}
        try:
            from opentelemetry.propagate import inject
        except ImportError:
            return carrier
        inject(carrier)
        return carrier

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import httpx

        try:
            r = self._client.request(method, path, json=body, headers=self._headers_with_trace())
        except httpx.HTTPError as exc:
            raise RemoteServerError(f"{method} {self.base_url}{path} failed: {exc!r}", None, None) from exc
        if r.status_code >= 400:
            raise _error(r.status_code, r.content, r.headers.get("retry-after"))
        return r.json()

    def _sse(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        import httpx

        try:
            with self._client.stream(
                "POST", "/v1/chat/completions", json=body, headers=self._headers_with_trace()
            ) as r:
                if r.status_code >= 400:
                    raise _error(r.status_code, r.read(), r.headers.get("retry-after"))
                for line in r.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise _error(500, json.dumps(chunk).encode(), None)
                    yield chunk
        except httpx.HTTPError as exc:
            raise RemoteServerError(f"streaming from {self.base_url} failed: {exc!r}", None, None) from exc

    def _stream_events(self, body: dict[str, Any]) -> Iterator[StreamEvent]:
        n = 0
        for chunk in self._sse(body):
            choice = chunk["choices"][0] if chunk.get("choices") else None
            extra = chunk.get("omnitrace") or {}
            if choice is not None and choice["delta"].get("content"):
                yield TextDelta(text=choice["delta"]["content"], token_index=n)
                n += 1
            if "sentence" in extra:
                yield SentenceEvent(
                    sentence=SentenceAttribution.model_validate(extra["sentence"]["attribution"])
                )
            if extra.get("answer") is not None:
                yield FinalEvent(answer=TracedAnswer.model_validate(extra["answer"]))

    def _chat_events(self, body: dict[str, Any]) -> Iterator[StreamEvent]:
        n = 0
        for chunk in self._sse(body):
            choice = chunk["choices"][0] if chunk.get("choices") else None
            if choice is not None and choice["delta"].get("content"):
                yield TextDelta(text=choice["delta"]["content"], token_index=n)
                n += 1
            answer = (chunk.get("omnitrace") or {}).get("answer")
            if answer is not None:
                yield FinalEvent(answer=TracedAnswer.model_validate(answer))

    def _plain_events(self, body: dict[str, Any]) -> Iterator[TextDelta | PlainFinal]:
        n, text, finish, used = 0, "", "stop", {"prompt_tokens": 0, "completion_tokens": 0}
        for chunk in self._sse(body):
            if chunk.get("usage"):
                used = chunk["usage"]
            if not chunk.get("choices"):
                continue
            choice = chunk["choices"][0]
            if choice["delta"].get("content"):
                text += choice["delta"]["content"]
                yield TextDelta(text=choice["delta"]["content"], token_index=n)
                n += 1
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
        yield PlainFinal(
            text, int(used["prompt_tokens"]), int(used["completion_tokens"]), finish, self.loaded.name
        )


def _openai_turn(turn: dict[str, Any]) -> dict[str, Any]:
    """A chat-template turn in OpenAI's message shape (tool calls with JSON-string arguments)."""
    out: dict[str, Any] = {"role": turn["role"], "content": turn.get("content") or ""}
    if turn.get("tool_calls"):
        out["tool_calls"] = [
            ToolCall(
                name=c["name"], arguments=c.get("arguments", c.get("args", {})), id=str(c.get("id") or "")
            ).openai()
            for c in turn["tool_calls"]
        ]
    if turn["role"] == "tool":
        out["tool_call_id"] = turn.get("tool_call_id")
        if turn.get("name"):
            out["name"] = turn["name"]
    return out


def _response_format(grammar: Grammar | None) -> dict[str, Any]:
    """A grammar as the request's ``response_format`` (only JSON-schema grammars travel: the
    server builds the grammar itself, never from caller-supplied grammar text)."""
    if grammar is None:
        return {}
    if not isinstance(grammar, Grammar) or grammar.kind != "json_schema":
        kind = grammar.kind if isinstance(grammar, Grammar) else type(grammar).__name__
        raise InvalidInputError(
            f"a {kind} grammar cannot be sent to an omnitrace server: only JSON schemas "
            "(response_format) and tools are served"
        )
    schema = json.loads(grammar.text)
    return {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": str(schema.get("title") or "output"), "schema": schema, "strict": True},
        }
    }


def _sampling(gen: dict[str, Any]) -> dict[str, Any]:
    """``model.generate`` kwargs -> OpenAI request fields; an unknown kwarg is refused by name."""
    gen = {k: v for k, v in gen.items() if k not in _DROPPED}
    out: dict[str, Any] = {}
    if "max_new_tokens" in gen:
        out["max_tokens"] = int(gen.pop("max_new_tokens"))
    do_sample = bool(gen.pop("do_sample", False))
    temperature = gen.pop("temperature", None)
    top_p = gen.pop("top_p", None)
    if do_sample:
        out["temperature"] = float(temperature) if temperature else 1.0
        if top_p is not None:
            out["top_p"] = float(top_p)
    for key in ("stop", "stop_strings"):  # ``stop`` (Tracer.generate / chat) or transformers' name
        stops = gen.pop(key, None)
        if stops:
            out["stop"] = [stops] if isinstance(stops, str) else list(stops)
    if gen.get("seed") is not None:
        out["seed"] = int(gen.pop("seed"))
    gen.pop("seed", None)
    gen.pop("max_time", None)  # the client's own timeout bounds the request
    if gen:
        raise InvalidInputError(
            f"generation option(s) {', '.join(sorted(gen))} cannot be sent to an omnitrace server "
            "(supported: max_new_tokens, do_sample, temperature, top_p, stop, seed, "
            "no_repeat_ngram_size)"
        )
    return out


def documents(sources: Sequence[Any]) -> list[dict[str, Any]]:
    """Sources as the request's ``documents``; media become ``data:`` URLs (a local path is read here)."""
    out: list[dict[str, Any]] = []
    for src in validate_sources(list(sources)):
        if isinstance(src, TextSource):
            if src.segments:
                raise InvalidInputError(f"source {src.id!r}: timed segments cannot be sent to a server yet")
            doc: dict[str, Any] = {"id": src.id, "text": src.text}
        else:
            assert isinstance(src, MediaSource)
            data = src.data if src.data is not None else Path(str(src.path)).read_bytes()
            mime = src.mime_type or (mimetypes.guess_type(str(src.path))[0] if src.path else None)
            mime = mime or f"{src.modality}/octet-stream"
            doc = {
                "id": src.id,
                "modality": src.modality,
                "data": f"data:{mime};base64,{base64.b64encode(data).decode()}",
            }
        for key in ("title", "url", "label"):
            if getattr(src, key, None) is not None:
                doc[key] = getattr(src, key)
        if src.metadata:
            doc["metadata"] = json.loads(json.dumps(src.metadata, default=str))
        out.append(doc)
    return out


def _error(status: int, content: bytes, retry_after: str | None) -> OmniTraceError:
    try:
        err = json.loads(content)["error"]
        message, code = str(err.get("message")), err.get("code")
    except (ValueError, KeyError, TypeError):
        message, code = content[:300].decode("utf-8", "replace"), None
    text = f"omnitrace server answered {status} ({code}): {message}"
    if code == "context_length_exceeded":
        return ContextLengthError(text)
    if 400 <= status < 500 and status not in (408, 429):
        return RemoteRequestError(text, status, code)
    return RemoteServerError(text, status, code, float(retry_after) if retry_after else None)
