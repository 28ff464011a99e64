"""Batched serving on the tiny random model: queued requests share one ``generate_batch`` decoding,
each answer equals the request's answer alone, and the queue's guarantees still hold."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from omnitrace_core import TextSource
from tests.serving.conftest import DOCS, QUESTION, chat_body
from tests.serving.fakes import GatedTracer, StuckBatchTracer

# Different questions and document sets, so a mixed-up answer cannot pass for the right one.
VARIANTS = [
    (QUESTION, DOCS),
    ("How tall is the lighthouse?", DOCS[1:]),
    ("When was Valbrook Works founded?", DOCS[:1]),
    ("Where is Valbrook Works?", list(reversed(DOCS))),
]


def _body(k, **extra):
    question, docs = VARIANTS[k]
    return {"messages": [{"role": "user", "content": question}], "documents": docs, "max_tokens": 8, **extra}


def _alone(tracer, k, max_new_tokens=8):
    question, docs = VARIANTS[k]
    sources = [TextSource(id=d["id"], title=d["title"], text=d["text"]) for d in docs]
    return tracer.generate(sources, question, max_new_tokens=max_new_tokens)


def _ann(annotations):
    return [
        (b["sentence_index"], b["start_index"], b["end_index"], b["source_id"], b["unit_id"], b["score"])
        for b in (a["source_citation"] for a in annotations)
    ]


def _cites(answer):
    return [
        (s.index, s.char_start, s.char_end, c.source_id, c.unit_id, pytest.approx(c.score, abs=1e-6))
        for s in answer.sentences
        for c in s.citations
    ]


def _assert_alone(body, expected):
    message = body["choices"][0]["message"]
    assert message["content"] == expected.text
    assert _ann(message["annotations"]) == _cites(expected)
    assert body["choices"][0]["finish_reason"] == expected.finish_reason
    assert body["usage"]["prompt_tokens"] == expected.prompt_tokens
    assert body["usage"]["completion_tokens"] == expected.generated_tokens


def _hold_slot(url, gated):
    """A streamed request (never batched) takes the slot and stops at the gate."""
    out: dict[str, httpx.Response] = {}
    t = threading.Thread(
        target=lambda: out.setdefault(
            "r", httpx.post(f"{url}/v1/chat/completions", json=chat_body(stream=True), timeout=60)
        )
    )
    t.start()
    assert gated.started.wait(30)
    return t, out


def _queue(url, bodies, results, timeout=60.0, start=0):
    """Send ``bodies`` one after the other, each once the previous one is queued (``start``:
    requests already queued; results are keyed from there)."""
    threads = []
    for k, body in enumerate(bodies, start):

        def post(k=k, body=body):
            try:
                results[k] = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=timeout)
            except httpx.HTTPError as exc:
                results[k] = exc

        t = threading.Thread(target=post)
        t.start()
        threads.append(t)
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/health").json()["queue_depth"] != k + 1:
            assert time.monotonic() < deadline, f"request {k} never queued"
            time.sleep(0.02)
    return threads


def test_queued_requests_share_one_batch_and_each_gets_its_answer_alone(tiny_tracer, serve_app):
    gated = GatedTracer(tiny_tracer)
    url = serve_app(gated, queue_size=8, max_batch_size=8)
    holder, held = _hold_slot(url, gated)
    results: dict[int, httpx.Response] = {}
    threads = _queue(url, [_body(k) for k in range(4)], results)
    gated.gate.set()
    for t in [holder, *threads]:
        t.join(60)
    assert held["r"].status_code == 200
    assert gated.batch_sizes == [4] and gated.max_running == 1
    for k in range(4):
        assert results[k].status_code == 200, results[k].text
        _assert_alone(results[k].json(), _alone(tiny_tracer, k))
    metrics = httpx.get(f"{url}/metrics").text
    # the streamed request ran alone (1), the four queued ones together (4)
    assert "omnitrace_batch_size_count 2.0" in metrics and "omnitrace_batch_size_sum 5.0" in metrics
    assert 'omnitrace_batch_size_bucket{le="1.0"} 1.0' in metrics
    assert 'omnitrace_tokens_total{kind="completion"}' in metrics


def test_only_requests_with_the_same_options_batch_and_the_rest_run_alone(tiny_tracer, serve_app):
    gated = GatedTracer(tiny_tracer)
    url = serve_app(gated, queue_size=8, max_batch_size=8)
    holder, _ = _hold_slot(url, gated)
    bodies = [
        _body(0),  # batch A (max_tokens 8)
        _body(1, max_tokens=6),  # batch B (max_tokens 6)
        _body(2, stream=True),  # streamed: alone
        _body(3, stop=["."]),  # stop strings: alone
        _body(1),  # batch A
        _body(0, max_tokens=6),  # batch B
        _body(2, temperature=0.7, seed=3),  # sampled: alone
    ]
    results: dict[int, httpx.Response] = {}
    threads = _queue(url, bodies, results)
    gated.gate.set()
    for t in [holder, *threads]:
        t.join(60)
    assert gated.batch_sizes == [2, 2]
    assert gated.streams == 1 + 3  # the slot holder and the three that cannot batch
    assert all(results[k].status_code == 200 for k in range(len(bodies))), results
    _assert_alone(results[0].json(), _alone(tiny_tracer, 0))
    _assert_alone(results[4].json(), _alone(tiny_tracer, 1))
    _assert_alone(results[1].json(), _alone(tiny_tracer, 1, max_new_tokens=6))
    _assert_alone(results[5].json(), _alone(tiny_tracer, 0, max_new_tokens=6))


def test_max_batch_size_caps_a_batch(tiny_tracer, serve_app):
    gated = GatedTracer(tiny_tracer)
    url = serve_app(gated, queue_size=8, max_batch_size=2)
    holder, _ = _hold_slot(url, gated)
    results: dict[int, httpx.Response] = {}
    threads = _queue(url, [_body(k % 4) for k in range(5)], results)
    gated.gate.set()
    for t in [holder, *threads]:
        t.join(60)
    # 2 + 2 batched; the fifth finds no partner and runs alone on the ordinary path
    assert gated.batch_sizes == [2, 2] and gated.streams == 2
    for k in range(5):
        _assert_alone(results[k].json(), _alone(tiny_tracer, k % 4))


def test_a_client_that_leaves_a_batch_does_not_break_the_others(tiny_tracer, serve_app):
    gated = GatedTracer(tiny_tracer)
    gated.batch_gate.clear()
    url = serve_app(gated, queue_size=8, max_batch_size=8)
    holder, _ = _hold_slot(url, gated)
    results: dict[int, object] = {}
    threads = _queue(url, [_body(0), _body(1)], results)
    leaver = {}

    def leave():
        try:
            httpx.post(f"{url}/v1/chat/completions", json=_body(2), timeout=httpx.Timeout(60, read=3.0))
        except httpx.ReadTimeout as exc:
            leaver["gone"] = exc

    t = threading.Thread(target=leave)
    t.start()
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/health").json()["queue_depth"] != 3:
        assert time.monotonic() < deadline, "the leaving request never queued"
        time.sleep(0.02)
    gated.gate.set()
    assert gated.batch_started.wait(30)
    t.join(30)
    assert "gone" in leaver
    # the server notices the disconnect (it polls every 0.25 s) before the batch may finish
    deadline = time.monotonic() + 10
    while "omnitrace_cancelled_total 1.0" not in httpx.get(f"{url}/metrics").text:
        assert time.monotonic() < deadline, "the server never noticed the client leaving its batch"
        time.sleep(0.05)
    gated.batch_gate.set()
    for th in [holder, *threads]:
        th.join(60)
    assert gated.batch_sizes == [3]
    for k in range(2):
        assert isinstance(results[k], httpx.Response) and results[k].status_code == 200
        _assert_alone(results[k].json(), _alone(tiny_tracer, k))
    after = httpx.post(f"{url}/v1/chat/completions", json=_body(3), timeout=60)
    assert after.status_code == 200
    _assert_alone(after.json(), _alone(tiny_tracer, 3))


def test_a_batch_whose_clients_all_left_stops_and_frees_the_model(tiny_tracer, serve_app):
    stuck = StuckBatchTracer(tiny_tracer)
    gated = GatedTracer(stuck)
    url = serve_app(gated, queue_size=8, max_batch_size=8)
    holder, _ = _hold_slot(url, gated)
    errors: dict[int, object] = {}
    threads = []
    for k in range(2):

        def leave(k=k):
            try:
                httpx.post(f"{url}/v1/chat/completions", json=_body(k), timeout=httpx.Timeout(60, read=3.0))
            except httpx.ReadTimeout as exc:
                errors[k] = exc

        threads.append(threading.Thread(target=leave))
        threads[-1].start()
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/health").json()["queue_depth"] != k + 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    gated.gate.set()
    assert stuck.batch_started.wait(30)
    for t in [holder, *threads]:
        t.join(60)
    assert set(errors) == {0, 1}
    assert stuck.stopped.wait(10), "the batch went on decoding for nobody"
    deadline = time.monotonic() + 10
    while httpx.get(f"{url}/health").json()["busy"]:
        assert time.monotonic() < deadline, "the stopped batch never released the model"
        time.sleep(0.05)
    r = httpx.post(f"{url}/v1/chat/completions", json=_body(3, stream=True), timeout=60)
    assert r.status_code == 200


def test_a_request_the_batch_cannot_take_fails_alone(tiny_tracer, serve_app):
    """One prompt over the context window fails generate_batch's checks: every request is then
    answered alone, the long one with its own 400 and the others with their answers."""
    gated = GatedTracer(tiny_tracer)
    url = serve_app(gated, queue_size=8, max_batch_size=8, max_prompt_tokens=100_000)
    holder, _ = _hold_slot(url, gated)
    long_doc = {"id": "long", "title": "Long", "text": "The lighthouse keeper counted waves. " * 200}
    bodies = [_body(0), {**_body(1), "documents": [long_doc]}, _body(2)]
    results: dict[int, httpx.Response] = {}
    threads = _queue(url, bodies, results)
    gated.gate.set()
    for t in [holder, *threads]:
        t.join(60)
    assert gated.batch_sizes == [3]
    assert results[1].status_code == 400
    assert results[1].json()["error"]["code"] == "context_length_exceeded"
    _assert_alone(results[0].json(), _alone(tiny_tracer, 0))
    _assert_alone(results[2].json(), _alone(tiny_tracer, 2))


def test_max_batch_size_is_a_validated_setting():
    from pydantic import ValidationError

    from omnitrace_integrations.serving.settings import ServeSettings

    assert ServeSettings().max_batch_size == 8
    with pytest.raises(ValidationError, match="max_batch_size"):
        ServeSettings(max_batch_size=0)
    with pytest.raises(ValidationError, match="batch_wait_ms"):
        ServeSettings(batch_wait_ms=-1)


def test_a_batch_decodes_until_its_oldest_requests_deadline(tiny_tracer, serve_app):
    """The batch's ``max_time`` is the time left to its earliest deadline (the oldest request's),
    not a later one; ``test_app`` shows a decoding stopped by ``max_time`` returning what it has."""
    gated = GatedTracer(tiny_tracer)
    timeout = 30.0
    url = serve_app(gated, queue_size=8, max_batch_size=8, request_timeout_s=timeout)
    holder, _ = _hold_slot(url, gated)
    results: dict[int, httpx.Response] = {}
    sent = time.monotonic()
    threads = _queue(url, [_body(0)], results)
    time.sleep(1.0)
    sent_late = time.monotonic()
    threads += _queue(url, [_body(1)], results, start=1)
    gated.gate.set()
    for t in [holder, *threads]:
        t.join(60)
    assert gated.batch_sizes == [2]
    ((called, kwargs),) = gated.batch_calls
    oldest_left = sent + timeout - called  # the server's clock starts a little after ``sent``
    assert oldest_left - 0.05 <= kwargs["max_time"] <= oldest_left + 0.5
    assert kwargs["max_time"] < sent_late + timeout - called - 0.5
    for k in range(2):
        _assert_alone(results[k].json(), _alone(tiny_tracer, k))
