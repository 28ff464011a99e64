"""Prometheus metrics of one server process (its own registry, so apps never share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "ServerMetrics"]

_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)


class ServerMetrics:
    """Requests, tokens, latency and queue depth (``GET /metrics``, Prometheus text format).

    - ``omnitrace_requests_total{endpoint, status}``: finished requests by HTTP status.
    - ``omnitrace_rejected_total{reason}``: refusals by the limit or problem named in the error.
    - ``omnitrace_tokens_total{kind}``: ``prompt`` and ``completion`` tokens.
    - ``omnitrace_request_latency_seconds{endpoint}``: arrival to last byte (histogram).
    - ``omnitrace_time_to_first_token_seconds``: arrival to first streamed token (histogram).
    - ``omnitrace_queue_depth``: requests waiting for the model.
    - ``omnitrace_generations_in_progress``: 0 or 1 per worker.
    - ``omnitrace_cancelled_total``: generations stopped because the client went away.
    - ``omnitrace_batch_size``: requests per model run (histogram; 1 for a request run alone,
      more when ``--max-batch-size`` let queued requests share one batched decoding).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("omnitrace_requests", "Finished requests", ["endpoint", "status"], registry=r)
        self.rejected = Counter("omnitrace_rejected", "Refused requests by reason", ["reason"], registry=r)
        self.tokens = Counter("omnitrace_tokens", "Prompt and completion tokens", ["kind"], registry=r)
        self.latency = Histogram(
            "omnitrace_request_latency_seconds",
            "Request latency",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.first_token = Histogram(
            "omnitrace_time_to_first_token_seconds",
            "Time to the first streamed token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("omnitrace_queue_depth", "Requests waiting for the model", registry=r)
        self.in_progress = Gauge("omnitrace_generations_in_progress", "Generations running", registry=r)
        self.cancelled = Counter(
            "omnitrace_cancelled", "Generations stopped by a client disconnect", registry=r
        )
        self.batch_size = Histogram(
            "omnitrace_batch_size", "Requests per model run", buckets=_BATCH_BUCKETS, registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
