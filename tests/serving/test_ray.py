"""The server on a local Ray Serve instance with 2 replicas (tiny model, one per replica)."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from omnitrace_core import TextSource
from tests.serving.conftest import DOCS, QUESTION, chat_body
from tests.serving.fakes import tiny_tracer_factory

try:
    from ray import serve
except ImportError as exc:  # ray[serve] pulls grpcio-reflection etc.
    pytest.skip(f"Ray Serve is not importable ({exc}): pip install 'ray[serve]'", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_url():
    import ray

    from omnitrace_integrations.serving.ray_app import deploy
    from omnitrace_integrations.serving.settings import ServeSettings

    settings = ServeSettings(host="127.0.0.1", port=_free_port(), queue_size=4)
    url = deploy(settings, replicas=2, num_cpus=0.5, threads=1, make_tracer=tiny_tracer_factory)
    yield url
    serve.shutdown()
    ray.shutdown()


def test_two_replicas_answer_with_the_same_citations(ray_url, tiny_tracer):
    sources = [TextSource(**d) for d in DOCS]
    expected = tiny_tracer.generate(sources, QUESTION, max_new_tokens=8)
    pids = set()
    deadline = time.monotonic() + 60
    while len(pids) < 2:
        assert time.monotonic() < deadline, f"only replica(s) {pids} answered"
        pids.add(httpx.get(f"{ray_url}/health", timeout=30).json()["pid"])
    for _ in range(3):
        r = httpx.post(f"{ray_url}/v1/chat/completions", json=chat_body(), timeout=120)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["message"]["content"] == expected.text
        got = [
            (a["source_citation"]["source_id"], a["source_citation"]["start_index"])
            for a in body["choices"][0]["message"]["annotations"]
        ]
        assert got == [(c.source_id, s.char_start) for s in expected.sentences for c in s.citations]


def test_streaming_through_the_ray_proxy(ray_url, tiny_tracer):
    sources = [TextSource(**d) for d in DOCS]
    expected = tiny_tracer.generate(sources, QUESTION, max_new_tokens=8)
    with httpx.stream(
        "POST", f"{ray_url}/v1/chat/completions", json=chat_body(stream=True), timeout=120
    ) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert (
        "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == expected.text
    )


def test_refusals_come_from_the_app_on_ray_too(ray_url):
    r = httpx.post(f"{ray_url}/v1/chat/completions", content=b"{", timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
