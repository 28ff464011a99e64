"""The tracer end to end on a tiny random model: three entry points, errors, isolation."""

from __future__ import annotations

import threading
import time

import pytest

from omnitrace_core import (
    ContextLengthError,
    FinalEvent,
    InvalidInputError,
    SentenceEvent,
    TextDelta,
    TracerConfig,
    UnknownNameError,
)
from omnitrace_core.config import CurationConfig, MappingConfig
from omnitrace_core.observers import TraceObserver

Q = "How tall is the lighthouse?"


def test_generate_returns_cited_sentences(tiny_tracer, sources):
    answer = tiny_tracer.generate(sources, Q, max_new_tokens=24)
    assert answer.mode == "generate" and answer.generated_tokens >= 1
    assert answer.finish_reason in ("stop", "length")
    for s in answer.sentences:
        assert answer.text[s.char_start : s.char_end] == s.text
        for c in s.citations:
            assert c.source_id in {"doc1", "doc2", "doc3"}
            assert 0 < c.score <= 1
    assert len(answer.tokens) <= answer.generated_tokens
    for t in answer.tokens:
        assert t.source_id in {None, "doc1", "doc2", "doc3"}


def test_stream_matches_generate(tiny_tracer, sources):
    events = list(tiny_tracer.stream(sources, Q, max_new_tokens=30))
    final = events[-1]
    assert isinstance(final, FinalEvent)
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == final.answer.text
    streamed = [e.sentence for e in events if isinstance(e, SentenceEvent)]
    assert streamed == final.answer.sentences
    again = tiny_tracer.generate(sources, Q, max_new_tokens=30)
    assert again.model_dump(exclude={"timings"}) == final.answer.model_dump(exclude={"timings"})


@pytest.mark.model
@pytest.mark.parametrize("token_rows", ["producing", "reading", "both"])
def test_decode_time_mapping_equals_teacher_forced(default_tracer, sources, token_rows):
    """Decoding maps a token once its reading row exists (one step later); a teacher-forced
    pass over the same text gives the same per-token attribution."""
    cfg = TracerConfig(mapping=MappingConfig(token_rows=token_rows))
    gen = default_tracer.generate(sources, Q, config=cfg, max_new_tokens=20)
    forced = default_tracer.attribute(sources, Q, gen.text, config=cfg)
    ids = default_tracer.tokenizer(gen.text, add_special_tokens=False)["input_ids"]
    if len(ids) != len(gen.tokens):
        pytest.skip("the generated ids do not re-tokenize to the same tokens")
    # The last token of a length-stopped decode has no reading row while decoding.
    n = len(gen.tokens) - (1 if gen.finish_reason == "length" and token_rows != "producing" else 0)
    for g, f in zip(gen.tokens[:n], forced.tokens[:n], strict=True):
        assert g.unit_id == f.unit_id
        assert g.confidence == pytest.approx(f.confidence, abs=1e-4)


def test_attribute_forced_response(tiny_tracer, sources):
    response = "The lighthouse stands 42 metres tall. It was founded in 1905."
    answer = tiny_tracer.attribute(sources, Q, response)
    assert answer.mode == "attribute" and answer.text == response
    assert [s.text for s in answer.sentences] == [
        "The lighthouse stands 42 metres tall.",
        "It was founded in 1905.",
    ]
    assert "".join(t.token for t in answer.tokens) == response


@pytest.mark.parametrize("signal", ["rawatt", "attgrads"])
def test_other_signals(tiny_tracer, sources, signal):
    cfg = TracerConfig(signal=signal)
    answer = tiny_tracer.attribute(sources, Q, "The lighthouse stands 42 metres tall.", config=cfg)
    assert answer.signal == signal
    assert answer.tokens and all(t.confidence >= 0 for t in answer.tokens)
    gen = tiny_tracer.generate(sources, Q, config=cfg, max_new_tokens=8)
    assert gen.signal == signal


@pytest.mark.parametrize("rule,correction", [("peak", "none"), ("summed", "running"), ("summed", "both")])
def test_mapping_options(tiny_tracer, sources, rule, correction):
    cfg = TracerConfig(mapping=MappingConfig(rule=rule, bias_correction=correction))
    answer = tiny_tracer.attribute(sources, Q, "Valbrook Works was founded in 1905.", config=cfg)
    assert answer.sentences


def test_context_window_is_checked_before_running(tiny_tracer, sources):
    with pytest.raises(ContextLengthError, match=r"tokens .* > the model's context window of 1024"):
        tiny_tracer.generate(sources, Q, max_new_tokens=5000)


def test_bad_inputs_are_named(tiny_tracer, sources):
    with pytest.raises(InvalidInputError, match="sources is empty"):
        tiny_tracer.generate([], Q)
    with pytest.raises(InvalidInputError, match="question is empty"):
        tiny_tracer.generate(sources, "")
    with pytest.raises(InvalidInputError, match="response is empty"):
        tiny_tracer.attribute(sources, Q, " ")
    with pytest.raises(UnknownNameError, match=r"unknown signal 'nope'.*attmean"):
        tiny_tracer.generate(sources, Q, config=TracerConfig(signal="nope"))
    with pytest.raises(InvalidInputError, match="beam"):
        tiny_tracer.generate(sources, Q, num_beams=2)


def test_curation_failure_keeps_the_answer(tiny_tracer, sources, monkeypatch):
    import omnitrace_core.assembly as assembly

    def boom(*args, **kwargs):
        raise RuntimeError("curation exploded")

    monkeypatch.setattr(assembly, "curate", boom)
    response = "The lighthouse stands 42 metres tall."
    answer = tiny_tracer.attribute(sources, Q, response)
    assert answer.text == response
    assert answer.sentences and not answer.sentences[0].citations
    assert any("curation exploded" in e for e in answer.errors)


def test_chunking_failure_keeps_the_answer(tiny_tracer, sources, monkeypatch):
    def boom(text):
        raise RuntimeError("splitter exploded")

    monkeypatch.setattr(tiny_tracer.chunker, "sentences", boom)
    response = "The lighthouse stands 42 metres tall. Yes."
    answer = tiny_tracer.attribute(sources, Q, response)
    assert answer.text == response
    assert any("splitter exploded" in e for e in answer.errors)


def test_two_threads_on_one_tracer_do_not_mix(tiny_tracer, sources):
    expected = {
        "a": tiny_tracer.generate(sources, Q, max_new_tokens=12),
        "b": tiny_tracer.generate(sources[:2], "Who founded it?", max_new_tokens=12),
    }
    got: dict[str, object] = {}

    def run(name, srcs, q):
        got[name] = tiny_tracer.generate(srcs, q, max_new_tokens=12)

    ts = [
        threading.Thread(target=run, args=("a", sources, Q)),
        threading.Thread(target=run, args=("b", sources[:2], "Who founded it?")),
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for k in expected:
        assert got[k].model_dump(exclude={"timings"}) == expected[k].model_dump(exclude={"timings"})


class Recorder(TraceObserver):
    def __init__(self):
        self.events = []

    def on_generation_start(self, info):
        self.events.append(("start", info.operation))

    def on_sentence(self, info, sentence):
        self.events.append(("sentence", sentence.index))

    def on_generation_end(self, info, answer):
        self.events.append(("end", answer.text))


class Raising(TraceObserver):
    def on_sentence(self, info, sentence):
        raise RuntimeError("observer bug")

    def on_generation_end(self, info, answer):
        raise RuntimeError("observer bug")


class Hanging(TraceObserver):
    def __init__(self):
        self.release = threading.Event()

    def on_generation_start(self, info):
        self.release.wait(30)


def test_observers_are_isolated(tiny_model, tiny_tokenizer, sources):
    from structlog.testing import capture_logs

    from omnitrace_core import Tracer

    rec, hang = Recorder(), Hanging()
    tracer = Tracer(tiny_model, tiny_tokenizer, observers=[Raising(), hang, rec])
    with capture_logs() as logs:
        t0 = time.perf_counter()
        answer = tracer.attribute(sources, Q, "The lighthouse stands 42 metres tall. It is old.")
        assert time.perf_counter() - t0 < 10  # the hanging observer did not block
        assert answer.text
        assert tracer.flush_observers(timeout=0.2) is False  # the hanging one is still stuck
        hang.release.set()
        assert tracer.flush_observers(timeout=10)
    assert rec.events[0] == ("start", "attribute")
    assert rec.events[-1] == ("end", answer.text)
    assert [e for e in rec.events if e[0] == "sentence"] == [("sentence", 0), ("sentence", 1)]
    failures = [e for e in logs if e["event"] == "observer_failed" and e["observer"] == "Raising"]
    assert [e["log_level"] for e in failures] == ["error", "error"]  # once per kind


def test_config_is_validated():
    with pytest.raises(Exception, match="coverage"):
        TracerConfig(curation=CurationConfig(coverage=2))
