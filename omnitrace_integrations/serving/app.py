"""The HTTP app: OpenAI-compatible chat completions with per-sentence citations.

``create_app(tracer, settings)`` builds a FastAPI app over one loaded :class:`Tracer`:

- ``POST /v1/chat/completions``: OpenAI request + ``documents``; citations as message
  ``annotations``; ``stream: true`` answers over SSE (content deltas, a citation chunk per
  completed sentence, a final chunk, ``[DONE]``).
- ``POST /v1/attribute``: attribute a given response (teacher-forced).
- ``GET /v1/models``, ``GET /health`` (no auth), ``GET /metrics`` (Prometheus text).

One generation runs at a time (:mod:`.scheduler`), or one batched generation of several queued
requests that ``Tracer.generate_batch`` can take together (``max_batch_size``); every refusal
is a JSON error in OpenAI's shape whose ``code`` names the limit or the problem
(``docs/serving.md`` lists them).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Hashable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omnitrace_core import (
    ContextLengthError,
    FinalEvent,
    InvalidInputError,
    OmniTraceError,
    SentenceEvent,
    TextDelta,
    TextSource,
    TracedAnswer,
    UnknownNameError,
)
from omnitrace_core.decoding import cancel_kwargs
from omnitrace_core.sources import encode_plain
from omnitrace_core.tools import ParsedToolCalls, parse_tool_calls
from omnitrace_integrations.serving.convert import (
    ApiError,
    Conversation,
    count_prompt_tokens,
    generation_kwargs,
    read_constraints,
    read_conversation,
    tracer_config,
)
from omnitrace_integrations.serving.metrics import CONTENT_TYPE_LATEST, ServerMetrics
from omnitrace_integrations.serving.scheduler import (
    Batch,
    BatchJob,
    QueueFull,
    QueueTimeout,
    Scheduler,
    pump,
)
from omnitrace_integrations.serving.schemas import (
    AttributeRequest,
    ChatCompletionRequest,
    answer_annotations,
    error_body,
    omnitrace_block,
    sentence_annotations,
    sentence_record,
    usage,
)
from omnitrace_integrations.serving.settings import ServeSettings

#: Model ids a request may name besides the served model's own name.
MODEL_ALIASES = ("omnitrace", "default")


class _BodyError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class BodyLimits:
    """ASGI middleware: refuse oversized bodies (413) and bodies that trickle in (408).

    ``Content-Length`` over the limit is refused before a byte is read; a chunked body is
    counted as it arrives. Each wait for the next body piece is bounded by ``body_timeout_s``
    (a slow-loris client cannot hold the connection).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                await _send_error(
                    send, 400, "invalid_content_length", f"Content-Length {length!r} is not a number"
                )
                return
            if too_big:
                await _send_error(
                    send,
                    413,
                    "max_body_bytes",
                    f"request body of {int(length)} bytes > max_body_bytes {self.max_bytes}",
                )
                return
        seen = 0
        body_done = False

        async def limited() -> Message:
            nonlocal seen, body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except TimeoutError as exc:
                raise _BodyError(
                    408, "body_timeout", f"no request body data for {self.timeout_s:g} s (body_timeout_s)"
                ) from exc
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyError(413, "max_body_bytes", f"request body > max_body_bytes {self.max_bytes}")
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, limited, send)


class AuthAndCount:
    """ASGI middleware: bearer-token auth (``/health`` is open), request counts and latency.

    Latency runs to the last body byte, so a streamed answer counts its whole stream; a client
    that disconnects before the end is counted with status ``499``.
    """

    OPEN_PATHS = frozenset({"/health"})

    def __init__(self, app: ASGIApp, settings: ServeSettings, metrics: ServerMetrics) -> None:
        self.app, self.settings, self.metrics = app, settings, metrics
        self.key = str(settings.api_key or "").encode()

    def _authorized(self, scope: Scope) -> bool:
        if not self.settings.requires_key or scope["path"] in self.OPEN_PATHS:
            return True
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.monotonic()
        path = scope["path"]
        endpoint = path if path in _ENDPOINTS else "other"
        if not self._authorized(scope):
            self.metrics.rejected.labels("invalid_api_key").inc()
            self.metrics.requests.labels(endpoint, "401").inc()
            await _send_error(
                send,
                401,
                "invalid_api_key",
                "missing or wrong API key: send Authorization: Bearer <key>",
                kind="authentication_error",
                extra_headers=[(b"www-authenticate", b"Bearer")],
            )
            return
        status = ["499"]
        done = [False]

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = str(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                done[0] = True
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.requests.labels(endpoint, status[0] if done[0] else "499").inc()
            self.metrics.latency.labels(endpoint).observe(time.monotonic() - t0)


_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/attribute", "/v1/models", "/health", "/metrics"})


async def _send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    kind: str = "invalid_request_error",
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps(error_body(message, code, kind)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *([(b"connection", b"close")] if status in (408, 413) else []),
                *(extra_headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _error(
    status: int, code: str, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error"
    )
    return JSONResponse(error_body(message, code, kind, param), status_code=status, headers=headers)


def _otel_context(request: Request) -> contextvars.Context:
    """A context carrying the caller's trace context (W3C ``traceparent``), if OTel is installed."""
    ctx = contextvars.copy_context()
    try:
        from opentelemetry import context as otel_context
        from opentelemetry.propagate import extract
    except ImportError:
        return ctx
    carrier = {k.lower(): v for k, v in request.headers.items()}
    ctx.run(otel_context.attach, extract(carrier))
    return ctx


async def _read_json(request: Request, model: type[BaseModel]) -> Any:
    body = await request.body()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400, "invalid_encoding", f"the request body is not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(
            400,
            "invalid_json",
            f"the request body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        ) from exc
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(
            400, "invalid_request", f"{where}: {first['msg']} ({exc.error_count()} error(s))", where
        ) from exc


def create_app(tracer: Any, settings: ServeSettings | None = None) -> FastAPI:
    """The server app over one loaded tracer (``Tracer`` or any object with its API)."""
    settings = settings or ServeSettings()
    settings.check_startup()
    metrics = ServerMetrics()
    scheduler = Scheduler(settings.queue_size, metrics)
    model_name = str(tracer.loaded.name)
    created = int(time.time())

    app = FastAPI(title="OmniTrace", version="1", docs_url=None, redoc_url=None)
    app.state.tracer, app.state.settings, app.state.metrics, app.state.scheduler = (
        tracer,
        settings,
        metrics,
        scheduler,
    )
    app.add_middleware(BodyLimits, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    # Added last = outermost: auth is checked before a body byte is read; latency covers streaming.
    app.add_middleware(AuthAndCount, settings=settings, metrics=metrics)

    # -- errors -----------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        metrics.rejected.labels(exc.code).inc()
        headers = {"Retry-After": str(settings.retry_after_s)} if exc.status == 429 else None
        if exc.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return _error(exc.status, exc.code, exc.message, exc.param, headers)

    @app.exception_handler(_BodyError)
    async def _body_error(request: Request, exc: _BodyError) -> JSONResponse:
        metrics.rejected.labels(exc.code).inc()
        return _error(exc.status, exc.code, exc.message, headers={"Connection": "close"})

    @app.exception_handler(ValidationError)
    async def _invalid(request: Request, exc: ValidationError) -> JSONResponse:
        # A source the core refuses (blank id, empty media data, ...).
        first = exc.errors()[0]
        metrics.rejected.labels("invalid_input").inc()
        return _error(400, "invalid_input", f"{exc.title}: {first['msg']}")

    @app.exception_handler(OmniTraceError)
    async def _omnitrace_error(request: Request, exc: OmniTraceError) -> JSONResponse:
        return await _api_error(request, map_failure(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        metrics.rejected.labels("internal_error").inc()
        return _error(500, "internal_error", f"{type(exc).__name__}: {exc}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}")

    # -- shared request steps -----------------------------------------------------------------
    def check_model(name: str | None) -> None:
        if name not in (None, "", model_name, *MODEL_ALIASES):
            raise ApiError(
                404,
                "model_not_found",
                f"model {name!r} is not served here; this server serves {model_name!r} (GET /v1/models)",
                "model",
            )

    def check_prompt(conv: Conversation, cfg: Any) -> int:
        if conv.sources:
            n = count_prompt_tokens(tracer.tokenizer, conv, cfg)
        else:  # each message as the model will see it: plain text, control tokens as characters
            n = sum(len(encode_plain(tracer.tokenizer, t["content"])[0]) for t in conv.turns)
        if n > settings.max_prompt_tokens:
            raise ApiError(
                400,
                "max_prompt_tokens",
                f"the prompt's text is {n} tokens > max_prompt_tokens {settings.max_prompt_tokens}",
                "messages",
            )
        return n

    async def take_slot(deadline: float, job: BatchJob | None = None) -> bool:
        try:
            return await scheduler.acquire(deadline, job)
        except QueueFull as exc:
            raise ApiError(
                429,
                "queue_full",
                f"the server is busy: {settings.queue_size} requests already wait "
                f"(queue_size); retry after {settings.retry_after_s} s",
            ) from exc
        except QueueTimeout as exc:
            raise ApiError(
                408,
                "request_timeout",
                f"waited longer than request_timeout_s {settings.request_timeout_s:g} s for the model",
            ) from exc

    def map_failure(exc: BaseException) -> ApiError:
        if isinstance(exc, ApiError):
            return exc
        if isinstance(exc, ContextLengthError):
            return ApiError(400, "context_length_exceeded", str(exc), "messages")
        if isinstance(exc, (InvalidInputError, UnknownNameError, ValueError)):
            return ApiError(400, "invalid_input", str(exc))
        if isinstance(exc, OmniTraceError):
            return ApiError(400, type(exc).__name__, str(exc))
        return ApiError(500, "internal_error", f"generation failed: {type(exc).__name__}: {exc}")

    async def queue_for_model(request: Request, deadline: float, job: BatchJob | None = None) -> bool:
        """Wait for the slot (see :meth:`Scheduler.acquire`: True = the slot is ours, False =
        ``job`` joined another request's batch). A client that disconnects while its request
        waits leaves the queue (499)."""
        acquire = asyncio.ensure_future(take_slot(deadline, job))
        gone = asyncio.ensure_future(wait_gone(request))
        try:
            await asyncio.wait({acquire, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not acquire.done():
                acquire.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await acquire
        if acquire.cancelled():
            metrics.cancelled.inc()
            raise ApiError(499, "client_closed", "the client closed the connection while its request waited")
        return acquire.result()  # 429 / 408 as ApiError

    async def start(
        make: Callable[[], Iterator[Any]],
        request: Request,
        deadline: float,
        cancel: threading.Event,
        holding: bool = False,
    ) -> tuple[Any, AsyncGenerator[Any, None]]:
        """Take the slot (unless ``holding`` it already), start the worker, return its first
        event and the rest. The worker releases the slot when it has finished."""
        if not holding:
            await queue_for_model(request, deadline)
        metrics.batch_size.observe(1)
        events = pump(make, cancel, scheduler.release, _otel_context(request))
        try:
            first = await events.__anext__()
        except StopAsyncIteration as exc:
            raise ApiError(500, "internal_error", "the generation ended without a result") from exc
        except BaseException as exc:
            raise map_failure(exc) from exc
        return first, events

    def batch_key(
        request: Request,
        req: ChatCompletionRequest,
        conv: Conversation,
        batchable_path: bool,
        cfg: Any,
        gen: dict[str, Any],
    ) -> Hashable | None:
        """What a request shares with the requests it may be decoded with, or None when it
        runs alone.

        ``generate_batch`` takes one config and one set of generation options for the whole
        batch, returns finished answers (no stream) and decodes greedily the rows it gives the
        answers alone would have; so only non-streaming, greedy requests with text sources on
        the plain cited path (no tool turn, response_format grammar or stop strings) batch,
        keyed by config and options. Media sources and gradient signals would be run one by one
        inside ``generate_batch`` anyway, and a request carrying a W3C trace context runs alone
        so its spans join the caller's trace (a batch runs all its rows in one context).
        """
        if settings.max_batch_size < 2 or req.stream or not batchable_path:
            return None
        if not conv.sources or not all(isinstance(s, TextSource) for s in conv.sources):
            return None
        if gen.get("do_sample") or gen.get("stop_strings") or "traceparent" in request.headers:
            return None
        if tracer.signal_for(cfg.signal).needs_gradients:
            return None
        return (cfg.model_dump_json(), tuple(sorted((k, repr(v)) for k, v in gen.items())))

    def batch_work(cfg: Any, gen: dict[str, Any]) -> Callable[[Batch], list[Any]]:
        """The worker-thread function decoding a batch (every job shares ``cfg`` and ``gen``).

        The batch stops at its earliest deadline (the oldest request's, the queue being FIFO),
        or when every client has gone. If ``generate_batch`` raises (one request over the
        context window fails the whole batch's checks), each request is run alone, so each gets
        its own answer or its own error and nothing is lost.
        """

        def remaining(jobs: list[BatchJob]) -> float:
            live = [j.deadline for j in jobs if not j.gone] or [j.deadline for j in jobs]
            return max(0.05, min(live) - time.monotonic())

        def work(batch: Batch) -> list[Any]:
            payloads = [job.payload for job in batch.jobs]
            kwargs = {**gen, **cancel_kwargs(batch.cancel)}
            try:
                return list(
                    tracer.generate_batch(
                        payloads,
                        config=cfg,
                        batch_size=len(payloads),
                        max_time=remaining(batch.jobs),
                        **kwargs,
                    )
                )
            except Exception as exc:  # answer each alone: its own answer or its own error
                if batch.cancel.is_set():
                    return [exc] * len(batch.jobs)
                results: list[Any] = []
                for job, (sources, question) in zip(batch.jobs, payloads, strict=True):
                    if job.gone:
                        results.append(exc)
                        continue
                    try:
                        results.append(
                            tracer.generate(
                                sources, question, config=cfg, max_time=remaining([job]), **kwargs
                            )
                        )
                    except Exception as alone:
                        results.append(alone)
                return results

        return work

    async def batch_answer(job: BatchJob, request: Request) -> TracedAnswer:
        """``job``'s answer from its batch; a client that disconnects first leaves the batch
        (its answer is dropped, the others' decoding goes on) and gets 499."""
        watcher = asyncio.ensure_future(wait_gone(request))
        try:
            await asyncio.wait({job.answer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not job.answer.done() and job.batch is not None:
                job.batch.leave(job)
        if not job.answer.done() or job.answer.cancelled():
            metrics.cancelled.inc()
            raise ApiError(499, "client_closed", "the client closed the connection while its batch decoded")
        try:
            answer = job.answer.result()
        except BaseException as exc:
            raise map_failure(exc) from exc
        assert isinstance(answer, TracedAnswer)
        return answer

    async def wait_gone(request: Request) -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(0.25)

    async def watch_disconnect(request: Request, cancel: threading.Event) -> None:
        while not cancel.is_set():
            if await request.is_disconnected():
                metrics.cancelled.inc()
                cancel.set()
                return
            await asyncio.sleep(0.25)

    # -- endpoints ------------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "pid": os.getpid(),
            "model": model_name,
            "busy": scheduler.busy,
            "queue_depth": scheduler.waiting,
            "queue_size": settings.queue_size,
            "max_batch_size": settings.max_batch_size,
        }

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        cfg = tracer.config
        return {
            "object": "list",
            "data": [
                {
                    "id": model_name,
                    "object": "model",
                    "created": created,
                    "owned_by": "omnitrace",
                    "omnitrace": {
                        "context_window": int(tracer.loaded.context_window),
                        "signal": cfg.signal,
                        "config": cfg.model_dump(mode="json"),
                        "limits": settings.model_dump(
                            include={
                                "max_sources",
                                "max_prompt_tokens",
                                "max_tokens",
                                "max_body_bytes",
                                "request_timeout_s",
                                "queue_size",
                                "max_batch_size",
                            }
                        ),
                    },
                }
            ],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        t0 = time.monotonic()
        deadline = t0 + settings.request_timeout_s
        req: ChatCompletionRequest = await _read_json(request, ChatCompletionRequest)
        check_model(req.model)
        conv = read_conversation(req.messages, req.documents, settings)
        rules = read_constraints(req, conv)
        tool_turn = rules.tool_turn(conv)
        if tool_turn and conv.sources:
            conv.notes.append(
                f"tool_choice {rules.choice!r} forces a tool call: the documents are not shown to "
                "the model in this turn"
            )
        cfg = tracer_config(tracer.config, conv, req.omnitrace, rules.instruction if rules.grammar else "")
        gen = generation_kwargs(
            settings,
            max_tokens=req.max_completion_tokens or req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            stop=req.stop,
            no_repeat_ngram_size=req.omnitrace.no_repeat_ngram_size,
            tokenizer=tracer.tokenizer,
            default_max_tokens=tracer.config.generation.max_new_tokens,
        )
        check_prompt(conv, cfg)
        cited_path = bool(conv.sources) and not tool_turn and rules.grammar is None
        key = batch_key(request, req, conv, cited_path, cfg, gen)
        base_gen = dict(gen)
        cancel = threading.Event()
        gen.update(cancel_kwargs(cancel))

        def make() -> Iterator[Any]:
            gen["max_time"] = max(0.05, deadline - time.monotonic())
            if req.seed is not None:
                import torch

                torch.manual_seed(req.seed)
            if tool_turn:  # the core builds the tool-call grammar for this choice
                return tracer.chat(
                    conv.chat_turns,
                    tools=rules.tools,
                    tool_choice=rules.choice,
                    parallel_tool_calls=rules.parallel,
                    **gen,
                )
            if conv.sources:
                return tracer.stream(conv.sources, conv.question, config=cfg, grammar=rules.grammar, **gen)
            # Nothing to cite: the core's chat path, which encodes each message as plain text
            # (a control token typed in a message stays characters and cannot open a turn).
            turns = _with_system(conv.turns, rules.instruction) if rules.grammar is not None else conv.turns
            return tracer.chat(turns, grammar=rules.grammar, **gen)

        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        holding = False
        if key is not None:
            loop = asyncio.get_running_loop()
            job = BatchJob(key, (conv.sources, conv.question), deadline, loop.create_future())
            holding = await queue_for_model(request, deadline, job)
            if holding:
                jobs = await scheduler.gather(job, settings.max_batch_size, settings.batch_wait_ms / 1000)
                if len(jobs) > 1:
                    assert job.batch is not None
                    scheduler.launch(job.batch, batch_work(cfg, base_gen))
                    holding = False
                else:
                    job.batch = None  # alone after all: the ordinary path (cancellable per token)
            if not holding:
                answer = await batch_answer(job, request)
                return JSONResponse(_completion(completion_id, FinalEvent(answer=answer), req, conv, False))
        first, events = await start(make, request, deadline, cancel, holding)
        if req.stream:
            body = _sse(completion_id, first, events, req, conv, cancel, t0, tool_turn)
            return StreamingResponse(
                body,
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        watcher = asyncio.create_task(watch_disconnect(request, cancel))
        try:
            final = first
            with contextlib.suppress(StopAsyncIteration):
                while not isinstance(final, FinalEvent):
                    final = await events.__anext__()
        except BaseException as exc:
            raise map_failure(exc) from exc
        finally:
            watcher.cancel()
            await events.aclose()
        return JSONResponse(_completion(completion_id, final, req, conv, tool_turn))

    def _completion(
        cid: str, final: Any, req: ChatCompletionRequest, conv: Conversation, tool_turn: bool
    ) -> dict[str, Any]:
        answer = final.answer
        text, prompt_n, gen_n, finish = _final_fields(final)
        metrics.tokens.labels("prompt").inc(prompt_n)
        metrics.tokens.labels("completion").inc(gen_n)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text,
            "refusal": None,
            "annotations": answer_annotations(answer) if answer is not None else [],
        }
        block = omnitrace_block(answer, req.omnitrace.include_answer, _notes(conv))
        if tool_turn:
            calls = parse_tool_calls(text)
            message["content"] = calls.text or (None if calls.calls else "")
            finish = _tool_fields(calls, message, block, finish)
        return {
            "id": cid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": usage(prompt_n, gen_n),
            "omnitrace": block,
        }

    async def _sse(
        cid: str,
        first: Any,
        events: AsyncGenerator[Any, None],
        req: ChatCompletionRequest,
        conv: Conversation,
        cancel: threading.Event,
        t0: float,
        tool_turn: bool = False,
    ) -> AsyncIterator[bytes]:
        """The SSE body. In a tool turn, a reply that starts with ``<`` is a call (the grammar
        allows plain text only when it does not): it is held back and sent parsed, as
        ``delta.tool_calls``, at the end; a text reply streams as it decodes."""
        created_at = int(time.time())
        mode: str | None = None if tool_turn else "text"  # a tool turn: "text" or "call" once known
        pending = ""

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            body = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created_at,
                "model": model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
                **extra,
            }
            return b"data: " + json.dumps(body).encode() + b"\n\n"

        finished = False
        try:
            yield chunk({"role": "assistant", "content": ""})
            event: Any = first
            first_token = True
            while True:
                if isinstance(event, TextDelta):
                    if first_token:
                        metrics.first_token.observe(time.monotonic() - t0)
                        first_token = False
                    if mode == "text":
                        yield chunk({"content": event.text})
                    elif mode is None:
                        pending += event.text
                        if pending.strip():
                            mode = "call" if pending.lstrip().startswith("<") else "text"
                            if mode == "text":
                                yield chunk({"content": pending})
                elif isinstance(event, SentenceEvent):
                    yield chunk(
                        {"annotations": sentence_annotations(event.sentence)},
                        omnitrace={"sentence": sentence_record(event.sentence, req.omnitrace.include_answer)},
                    )
                elif isinstance(event, FinalEvent):
                    answer = event.answer
                    text, prompt_n, gen_n, finish = _final_fields(event)
                    metrics.tokens.labels("prompt").inc(prompt_n)
                    metrics.tokens.labels("completion").inc(gen_n)
                    block = omnitrace_block(answer, req.omnitrace.include_answer, _notes(conv))
                    if tool_turn:
                        calls = parse_tool_calls(text)
                        if mode != "text" and calls.text:
                            yield chunk({"content": calls.text})
                        message: dict[str, Any] = {}
                        finish = _tool_fields(calls, message, block, finish)
                        if message.get("tool_calls"):
                            delta = [{"index": k, **c} for k, c in enumerate(message["tool_calls"])]
                            yield chunk({"tool_calls": delta})
                    yield chunk({}, finish, omnitrace=block)
                    if req.stream_options is not None and req.stream_options.include_usage:
                        body = {
                            "id": cid,
                            "object": "chat.completion.chunk",
                            "created": created_at,
                            "model": model_name,
                            "choices": [],
                            "usage": usage(prompt_n, gen_n),
                        }
                        yield b"data: " + json.dumps(body).encode() + b"\n\n"
                    finished = True
                try:
                    event = await events.__anext__()
                except StopAsyncIteration:
                    break
            yield b"data: [DONE]\n\n"
        except (asyncio.CancelledError, GeneratorExit):
            if not finished:
                metrics.cancelled.inc()
            cancel.set()
            raise
        except Exception as exc:
            err = map_failure(exc)
            metrics.rejected.labels(err.code).inc()
            yield b"data: " + json.dumps(error_body(err.message, err.code)).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            cancel.set()
            with contextlib.suppress(BaseException):
                await events.aclose()

    @app.post("/v1/attribute")
    async def attribute(request: Request) -> Response:
        deadline = time.monotonic() + settings.request_timeout_s
        req: AttributeRequest = await _read_json(request, AttributeRequest)
        check_model(req.model)
        conv = read_conversation(req.messages, req.documents, settings)
        if not conv.sources:
            raise ApiError(
                400,
                "no_sources",
                "attribute needs sources: documents, tool messages or media parts",
                "documents",
            )
        cfg = tracer_config(tracer.config, conv, req.omnitrace)
        check_prompt(conv, cfg)
        cancel = threading.Event()

        def make() -> Iterator[Any]:
            yield tracer.attribute(conv.sources, conv.question, req.response, config=cfg)

        answer, events = await start(make, request, deadline, cancel)
        await events.aclose()
        assert isinstance(answer, TracedAnswer)
        metrics.tokens.labels("prompt").inc(answer.prompt_tokens)
        return JSONResponse(
            {
                "object": "omnitrace.attribution",
                "created": int(time.time()),
                "model": model_name,
                "text": answer.text,
                "annotations": answer_annotations(answer),
                "usage": usage(answer.prompt_tokens, answer.generated_tokens),
                "omnitrace": omnitrace_block(answer, req.omnitrace.include_answer, _notes(conv)),
            }
        )

    return app


def _with_system(turns: list[dict[str, str]], text: str) -> list[dict[str, str]]:
    """``turns`` with ``text`` added to the system turn (one is made if there is none), as the
    in-process adapters add a ``response_format`` instruction."""
    if not text:
        return turns
    if turns and turns[0]["role"] == "system":
        return [{**turns[0], "content": f"{turns[0]['content']}\n{text}"}, *turns[1:]]
    return [{"role": "system", "content": text}, *turns]


def _tool_fields(calls: ParsedToolCalls, message: dict[str, Any], block: dict[str, Any], finish: str) -> str:
    """Fill a tool turn's ``message.tool_calls`` (OpenAI's shape) and
    ``omnitrace.invalid_tool_calls`` (calls the token limit cut: reported, never guessed);
    return the finish reason (``tool_calls`` when there is a call)."""
    if calls.calls:
        message["tool_calls"] = [c.openai() for c in calls.calls]
    if calls.invalid:
        block["invalid_tool_calls"] = [{"raw": raw, "error": error} for raw, error in calls.invalid]
    return "tool_calls" if calls.calls else finish


def _final_fields(final: FinalEvent) -> tuple[str, int, int, str]:
    a = final.answer
    return a.text, a.prompt_tokens, a.generated_tokens, a.finish_reason or "stop"


def _notes(conv: Conversation) -> list[str]:
    return [*conv.notes, *([] if conv.sources else ["no sources in the request: answered without citations"])]
