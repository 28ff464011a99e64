"""Batched traced generation: every row's answer equals the answer of the request alone."""

from __future__ import annotations

import json

import pytest

from omnitrace_core import InvalidInputError, TextSource, TracerConfig
from omnitrace_core.batch import BatchRequest
from tests.conftest import shared_bench_dir


def _requests(sources):
    extra = TextSource(
        id="doc4", title="Mill", text="The old mill on the river grinds flour for the whole valley."
    )
    return [
        (sources, "How tall is the lighthouse?"),
        {"sources": sources[:2], "question": "When was Valbrook Works founded?"},
        BatchRequest([*sources, extra], "What does the mill grind, and who lit the lamp?"),
        (sources[1:], "Who kept the lighthouse?"),
        ([extra], "Where is the mill?"),
    ]


def _comparable(answer):
    return {
        "text": answer.text,
        "generated_tokens": answer.generated_tokens,
        "finish_reason": answer.finish_reason,
        "sentences": [
            (
                s.text,
                s.char_start,
                s.char_end,
                s.token_start,
                s.token_end,
                [(c.source_id, c.unit_id) for c in s.citations],
            )
            for s in answer.sentences
        ],
        "token_units": [(t.token, t.char_start, t.char_end, t.unit_id) for t in answer.tokens],
    }


def _assert_close_scores(a, b):
    for sa, sb in zip(a.sentences, b.sentences, strict=True):
        for ca, cb in zip(sa.citations, sb.citations, strict=True):
            assert ca.score == pytest.approx(cb.score, abs=1e-4)
    for ta, tb in zip(a.tokens, b.tokens, strict=True):
        assert ta.confidence == pytest.approx(tb.confidence, abs=1e-4)


@pytest.mark.parametrize("capture", ["fused", "exact"])
def test_batch_rows_equal_batch_of_one(tiny_tracer, sources, capture):
    cfg = TracerConfig(capture=capture)
    reqs = _requests(sources)
    batched = tiny_tracer.generate_batch(reqs, config=cfg, batch_size=3, max_new_tokens=40)
    assert len(batched) == len(reqs)
    for req, got in zip(reqs, batched, strict=True):
        req = (
            req
            if isinstance(req, BatchRequest)
            else BatchRequest(*(req.values() if isinstance(req, dict) else req))
        )
        alone = tiny_tracer.generate(req.sources, req.question, config=cfg, max_new_tokens=40)
        assert _comparable(got) == _comparable(alone)
        _assert_close_scores(got, alone)
        assert got.timings["batch_size"] in (3.0, 2.0)


def test_rows_that_stop_early_are_cut_where_a_lone_decoding_stops(tiny_tracer, sources):
    """40 stop ids: rows end at different steps; a finished row's padding is never read."""
    reqs = _requests(sources)
    gen = {"max_new_tokens": 60, "eos_token_id": list(range(100, 140))}
    batched = tiny_tracer.generate_batch(reqs, batch_size=5, **gen)
    lone = []
    for r in reqs:
        req = r if isinstance(r, BatchRequest) else BatchRequest(*(r.values() if isinstance(r, dict) else r))
        lone.append(tiny_tracer.generate(req.sources, req.question, **gen))
    lengths = [a.generated_tokens for a in lone]
    assert min(lengths) < 60 and len(set(lengths)) > 1
    assert [_comparable(a) for a in batched] == [_comparable(a) for a in lone]


def _alone(tracer, req, **kwargs):
    if isinstance(req, dict):
        req = BatchRequest(req["sources"], req["question"])
    elif not isinstance(req, BatchRequest):
        req = BatchRequest(*req)
    return tracer.generate(req.sources, req.question, **kwargs)


def test_stop_strings_end_each_row_where_it_ends_alone(tiny_tracer, sources):
    """Rows stop at their own stop string, at different steps; the others decode on."""
    reqs = _requests(sources)
    free = [_alone(tiny_tracer, r, max_new_tokens=30) for r in reqs]
    # Two stop strings cut from the middle of two answers: rows meet them at different steps.
    stops = [free[0].text[12:15], free[1].text[-8:-5]]
    gen = {"max_new_tokens": 30, "stop": stops}
    lone = [_alone(tiny_tracer, r, **gen) for r in reqs]
    assert {a.finish_reason for a in lone} >= {"stop"}
    assert len({a.generated_tokens for a in lone}) > 1
    batched = tiny_tracer.generate_batch(reqs, batch_size=5, **gen)
    assert [_comparable(a) for a in batched] == [_comparable(a) for a in lone]
    for got in batched:
        assert not any(s in got.text for s in stops)
    # stop_strings= (the transformers name) acts the same
    again = tiny_tracer.generate_batch(reqs, batch_size=5, max_new_tokens=30, stop_strings=stops)
    assert [_comparable(a) for a in again] == [_comparable(a) for a in lone]


def test_callers_stopping_criteria_end_rows_one_by_one(tiny_tracer, sources):
    """A criterion that ends each row at its own length: the replay reads exactly those tokens."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class EndsAtAToken(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return input_ids[:, -1] % 7 == 0

    reqs = _requests(sources)
    gen = {"max_new_tokens": 30}
    lone = [
        _alone(tiny_tracer, r, stopping_criteria=StoppingCriteriaList([EndsAtAToken()]), **gen)
        for r in reqs
    ]
    batched = tiny_tracer.generate_batch(
        reqs, batch_size=5, stopping_criteria=StoppingCriteriaList([EndsAtAToken()]), **gen
    )
    assert [_comparable(a) for a in batched] == [_comparable(a) for a in lone]
    assert any(a.generated_tokens < 30 for a in lone)


def test_grammar_falls_back_to_one_request_at_a_time(tiny_tracer, sources):
    from omnitrace_core import Grammar

    reqs = _requests(sources)[:3]
    grammar = Grammar.regex(r"(yes|no)")
    batched = tiny_tracer.generate_batch(reqs, batch_size=3, max_new_tokens=12, grammar=grammar)
    lone = [_alone(tiny_tracer, r, max_new_tokens=12, grammar=grammar) for r in reqs]
    assert [a.text for a in batched] == [a.text for a in lone]
    assert all(a.text in ("yes", "no") for a in batched)


def test_a_failing_request_does_not_lose_the_others(tiny_tracer, sources):
    reqs = [*_requests(sources)[:2], ([{"id": "x"}], "Q?"), (sources, "   "), _requests(sources)[3]]
    with pytest.raises(InvalidInputError, match=r"requests\[2\]"):
        tiny_tracer.generate_batch(reqs, max_new_tokens=8)
    got = tiny_tracer.generate_batch(reqs, batch_size=2, max_new_tokens=8, return_exceptions=True)
    assert isinstance(got[2], InvalidInputError) and "requests[2]" in str(got[2])
    assert isinstance(got[3], InvalidInputError) and "requests[3].question" in str(got[3])
    for k in (0, 1, 4):
        assert _comparable(got[k]) == _comparable(_alone(tiny_tracer, reqs[k], max_new_tokens=8))


def test_a_failing_batched_decoding_is_redone_row_by_row(tiny_tracer, sources, monkeypatch):
    """The batched call raising (here: every multi-row decoding) costs no row its answer."""
    import omnitrace_core.batch as batch_mod

    real = batch_mod._run_chunk

    def only_single_rows(tracer, chunk, *args):
        if len(chunk) > 1:
            raise RuntimeError("out of memory")
        return real(tracer, chunk, *args)

    monkeypatch.setattr(batch_mod, "_run_chunk", only_single_rows)
    reqs = _requests(sources)[:3]
    with pytest.raises(RuntimeError, match="out of memory"):
        tiny_tracer.generate_batch(reqs, batch_size=3, max_new_tokens=8)
    got = tiny_tracer.generate_batch(reqs, batch_size=3, max_new_tokens=8, return_exceptions=True)
    assert [_comparable(a) for a in got] == [
        _comparable(_alone(tiny_tracer, r, max_new_tokens=8)) for r in reqs
    ]


def test_batch_observers_see_every_row(tiny_tracer, sources):
    from omnitrace_core.observers import TraceObserver

    seen = []

    class Rec(TraceObserver):
        def on_generation_end(self, info, answer):
            seen.append(info.question)

    rec = Rec()
    tiny_tracer.add_observer(rec)
    try:
        tiny_tracer.generate_batch(_requests(sources)[:3], max_new_tokens=8)
        tiny_tracer.flush_observers()
    finally:
        tiny_tracer.remove_observer(rec)
    assert sorted(seen) == sorted(
        q
        for q in [
            "How tall is the lighthouse?",
            "When was Valbrook Works founded?",
            "What does the mill grind, and who lit the lamp?",
        ]
    )


def test_batch_inputs_are_named(tiny_tracer, sources):
    assert tiny_tracer.generate_batch([], max_new_tokens=4) == []
    with pytest.raises(InvalidInputError, match="requests\\[1\\]"):
        tiny_tracer.generate_batch([(sources, "Q?"), "not a request"])
    with pytest.raises(InvalidInputError, match="batch_size"):
        tiny_tracer.generate_batch([(sources, "Q?")], batch_size=0)
    with pytest.raises(InvalidInputError, match="question"):
        tiny_tracer.generate_batch([(sources, "  ")])


def test_gradient_signal_falls_back_to_one_at_a_time(tiny_tracer, sources):
    cfg = TracerConfig(signal="attgrads")
    reqs = _requests(sources)[:2]
    batched = tiny_tracer.generate_batch(reqs, config=cfg, max_new_tokens=6)
    alone = tiny_tracer.generate(sources, "How tall is the lighthouse?", config=cfg, max_new_tokens=6)
    assert _comparable(batched[0]) == _comparable(alone)


@pytest.mark.model
def test_packaged_model_batch_rows_equal_batch_of_one(default_tracer):
    bench = shared_bench_dir()
    if bench is None:
        pytest.skip("the shared dev set is not beside this checkout")
    rows = [json.loads(line) for line in (bench / "dev.jsonl").read_text().splitlines()]
    picked = [r for r in rows if r["task"] in ("qa_single", "qa_multi", "summary", "mcq")][::30][:4]
    reqs = [(r["sources"], r["question"]) for r in picked]
    batched = default_tracer.generate_batch(reqs, batch_size=4, max_new_tokens=32)
    for (srcs, q), got in zip(reqs, batched, strict=True):
        alone = default_tracer.generate(srcs, q, max_new_tokens=32)
        assert _comparable(got) == _comparable(alone)


def test_predict_rows_in_batches_write_the_same_lines_in_order(tiny_tracer, sources):
    import io

    from omnitrace_core.evaluation.bench import RowError, predict_rows

    srcs = [s.model_dump(exclude_none=True) for s in sources]
    rows = [
        {"id": "g1", "task": "qa_single", "sources": srcs, "question": "How tall is the lighthouse?"},
        {
            "id": "f1",
            "task": "teacher_forced",
            "sources": srcs,
            "question": "Q?",
            "response": "It is 42 metres.",
        },
        {"id": "bad", "task": "qa_single", "sources": [{"id": "x"}], "question": "Q?"},
        RowError(4, "line 4 is not JSON"),
        {"id": "g2", "task": "qa_multi", "sources": srcs[:2], "question": "When was Valbrook founded?"},
        {"id": "g3", "task": "summary", "sources": srcs[1:], "question": "Summarise."},
    ]
    outs, problems = [], []
    for size in (1, 3):
        buf = io.StringIO()
        seen: list[str] = []
        counts = predict_rows(
            tiny_tracer, rows, buf, max_new_tokens=12, batch_size=size, on_problem=seen.append
        )
        outs.append(buf.getvalue())
        problems.append((counts, len(seen), any("'bad'" in m for m in seen)))
    assert [json.loads(x)["id"] for x in outs[1].splitlines()] == ["g1", "f1", "g2", "g3"]
    assert outs[0] == outs[1]
    assert problems[0] == problems[1] == ((4, 2), 2, True)


def test_batch_gate_decodes_callers_together_each_in_its_own_context(tiny_tracer, sources, monkeypatch):
    """Three threads share one decoding; each gets its lone answer and its observer events run
    in its own context (so an adapter's per-input span parents where that input's run is)."""
    import contextvars
    import threading

    from omnitrace_core.batch import BatchGate
    from omnitrace_core.observers import TraceObserver
    from omnitrace_core.results import FinalEvent

    caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="none")
    seen: dict[str, str] = {}

    class Rec(TraceObserver):
        def on_generation_end(self, info, answer):
            seen[info.question] = caller.get()

    sizes = []
    real = tiny_tracer.model.generate
    monkeypatch.setattr(
        tiny_tracer.model, "generate", lambda *a, **k: sizes.append(k["input_ids"].shape[0]) or real(*a, **k)
    )
    reqs = [(sources, "How tall is the lighthouse?"), (sources[:2], "When?"), (sources[1:], "Who?")]
    gate = BatchGate(tiny_tracer, expected=4)  # the fourth caller leaves without decoding
    answers: dict[int, object] = {}

    def run(k):
        caller.set(f"caller-{k}")
        if k == 3:
            gate.leave()
            return
        srcs, q = reqs[k]
        for event in gate.stream(srcs, q, max_new_tokens=10, stop=["zz"]):
            if isinstance(event, FinalEvent):
                answers[k] = event.answer

    rec = Rec()
    tiny_tracer.add_observer(rec)
    try:
        threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        tiny_tracer.flush_observers()
    finally:
        tiny_tracer.remove_observer(rec)
    assert sizes == [3]
    assert seen == {q: f"caller-{k}" for k, (_, q) in enumerate(reqs)}
    for k, (srcs, q) in enumerate(reqs):
        alone = tiny_tracer.generate(srcs, q, max_new_tokens=10, stop=["zz"])
        assert _comparable(answers[k]) == _comparable(alone)
        assert answers[k].timings["batch_size"] == 3.0
