"""Server settings: every limit that protects the process, with its default and its flag."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Environment variable read for the bearer token when ``--api-key`` is not given.
API_KEY_ENV = "OMNITRACE_API_KEY"

_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def is_local_host(host: str) -> bool:
    """True for a loopback bind address (nothing else on the network can reach it)."""
    return host in _LOCAL_HOSTS or host.startswith("127.")


class ServeSettings(BaseModel):
    """How ``omnitrace serve`` runs and what it refuses.

    Every limit is a flag of ``omnitrace serve`` (``--max-body-bytes`` ...); a request over a
    limit gets a 4xx JSON error whose ``error.code`` is the limit's name.

    Attributes:
        model: Packaged model name or local folder (what ``/v1/models`` lists).
        host: Bind address. Anything but loopback requires an API key unless ``auth="off"``.
        port: Bind port.
        api_key: Bearer token clients must send (``Authorization: Bearer ...``); default: the
            ``OMNITRACE_API_KEY`` environment variable.
        auth: ``auto`` (required when ``api_key`` is set; starting on a non-loopback host
            without a key is refused), ``on`` (a key is required), ``off`` (no auth, even on
            the network: only behind your own gateway).
        max_body_bytes: Largest request body (413 ``max_body_bytes``).
        max_sources: Most documents (and tool / media sources) per request (400 ``max_sources``).
        max_prompt_tokens: Most tokens of sources + question + system text (400
            ``max_prompt_tokens``; the chat template adds a few more).
        max_tokens: Largest ``max_tokens`` a request may ask for (400 ``max_tokens``); also the
            default when a request gives none.
        request_timeout_s: Seconds from arrival to the last token: waiting in the queue longer
            answers 408 ``request_timeout``; a generation still running then stops and returns
            what it has (``finish_reason: "length"``).
        queue_size: Requests that may wait for the model while one generates; one more answers
            429 ``queue_full`` with ``Retry-After``.
        retry_after_s: The ``Retry-After`` seconds sent with a 429.
        body_timeout_s: Seconds a client may take between two pieces of its request body (a
            slow-loris body answers 408 ``body_timeout``).
        max_batch_size: Most queued requests decoded together in one batched generation
            (``Tracer.generate_batch``) when the model slot frees; 1 runs every request alone.
            Only non-streaming, greedy requests with text sources and no tools, response_format,
            stop strings or trace context batch, and only with requests of the same options;
            each still gets the answer it gets alone (docs/serving.md, "Batching").
        batch_wait_ms: Milliseconds a request that found the model idle waits for others to
            batch with before decoding (skipped when a full batch already waits). Small: it is
            latency added to a lone request, and under load the queue fills the batch anyway.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = "smollm2-135m"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = None
    auth: Literal["auto", "on", "off"] = "auto"
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_sources: int = Field(32, ge=1)
    max_prompt_tokens: int = Field(4096, ge=16)
    max_tokens: int = Field(512, ge=1)
    request_timeout_s: float = Field(120.0, gt=0)
    queue_size: int = Field(16, ge=0)
    retry_after_s: int = Field(2, ge=1)
    body_timeout_s: float = Field(10.0, gt=0)
    max_batch_size: int = Field(8, ge=1, le=256)
    batch_wait_ms: float = Field(5.0, ge=0, le=1000)

    @model_validator(mode="after")
    def _key_from_env(self) -> ServeSettings:
        if self.api_key is None and os.environ.get(API_KEY_ENV):
            object.__setattr__(self, "api_key", os.environ[API_KEY_ENV])
        return self

    @property
    def requires_key(self) -> bool:
        """Whether requests must carry the bearer token."""
        if self.auth == "off":
            return False
        return self.auth == "on" or self.api_key is not None

    def check_startup(self) -> None:
        """Refuse a configuration that would expose the model without auth.

        Raises:
            ValueError: naming the problem (non-loopback host without a key, or ``auth="on"``
                without a key).
        """
        if self.auth == "on" and not self.api_key:
            raise ValueError(f"auth is on but no API key is set: pass --api-key or set {API_KEY_ENV}")
        if self.auth == "auto" and not self.api_key and not is_local_host(self.host):
            raise ValueError(
                f"binding to {self.host!r} (reachable from the network) needs an API key: pass --api-key "
                f"or set {API_KEY_ENV}, or --auth off if a gateway in front of it authenticates"
            )
