"""Fault injection: a decode that raises half way, a stream abandoned early, a model cache that
cannot be written or is corrupt. Each ends in a named error (or a recovery), nothing is lost."""

from __future__ import annotations

import threading
import time

import pytest

from omnitrace_core import TextSource
from omnitrace_core.errors import GenerationError, ModelLoadError, OmniTraceError
from omnitrace_core.results import FinalEvent, TextDelta

SOURCES = [TextSource(id="a", text="The lighthouse stands 42 metres tall.")]


class Boom:
    """A logits processor that raises at decoding step ``at`` (a crash inside model.generate)."""

    def __init__(self, at: int, exc: Exception | None = None) -> None:
        self.at, self.calls, self.exc = at, 0, exc or RuntimeError("simulated device failure")

    def __call__(self, input_ids, scores):
        self.calls += 1
        if self.calls > self.at:
            raise self.exc
        return scores


class Slow:
    def __call__(self, input_ids, scores):
        time.sleep(0.01)
        return scores


def _processors(*procs):
    from transformers import LogitsProcessorList

    return LogitsProcessorList(list(procs))


@pytest.mark.parametrize("at", [0, 1, 3, 6])
def test_stream_that_fails_half_way_ends_with_a_named_error_and_keeps_the_text(tiny_tracer, at):
    events = []
    with pytest.raises(GenerationError) as info:
        for event in tiny_tracer.stream(SOURCES, "How tall?", max_new_tokens=12, logits_processor=_processors(Boom(at))):
            events.append(event)
    streamed = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert info.value.partial_text == streamed  # the answer so far is not lost
    assert "decoding failed after" in str(info.value) and "simulated device failure" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert not any(isinstance(e, FinalEvent) for e in events)  # no half-written result


@pytest.mark.parametrize("exc", [RuntimeError("oom"), ValueError("bad logits"), IndexError("index 9 out of range")])
def test_generate_that_fails_is_a_named_error(tiny_tracer, exc):
    with pytest.raises(GenerationError) as info:
        tiny_tracer.generate(SOURCES, "How tall?", max_new_tokens=8, logits_processor=_processors(Boom(2, exc)))
    assert type(exc).__name__ in str(info.value)
    assert isinstance(info.value, OmniTraceError)


def test_observers_hear_the_failure(tiny_model, tiny_tokenizer):
    from omnitrace_core import Tracer

    seen = []

    class Recorder:
        def on_generation_start(self, info): ...
        def on_sentence(self, info, sentence): ...
        def on_generation_end(self, info, answer): seen.append("end")
        def on_generation_error(self, info, error): seen.append(type(error).__name__)

    tracer = Tracer(tiny_model, tiny_tokenizer, model_name="tiny", observers=[Recorder()])
    with pytest.raises(GenerationError):
        tracer.generate(SOURCES, "How tall?", max_new_tokens=8, logits_processor=_processors(Boom(2)))
    assert tracer.flush_observers(5.0)
    assert seen == ["GenerationError"]


def test_the_tracer_still_works_after_a_failure(tiny_tracer):
    with pytest.raises(GenerationError):
        tiny_tracer.generate(SOURCES, "How tall?", max_new_tokens=6, logits_processor=_processors(Boom(1)))
    answer = tiny_tracer.generate(SOURCES, "How tall?", max_new_tokens=6)
    again = tiny_tracer.generate(SOURCES, "How tall?", max_new_tokens=6)
    assert answer.text == again.text and answer.generated_tokens >= 1


def _decode_threads():
    return [t for t in threading.enumerate() if t.name == "omnitrace-decode"]


def test_an_abandoned_stream_stops_decoding(tiny_tracer):
    before = len(_decode_threads())
    stream = tiny_tracer.stream(SOURCES, "How tall?", max_new_tokens=400, logits_processor=_processors(Slow()))
    next(iter(stream))
    assert len(_decode_threads()) == before + 1
    stream.close()
    deadline = time.monotonic() + 2.0  # 400 slow steps would take > 4 s
    while len(_decode_threads()) > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(_decode_threads()) == before


# -- the safetensors cache of a packaged model ---------------------------------------------


@pytest.fixture()
def fake_packaged(tmp_path, monkeypatch, tiny_model, tiny_tokenizer):
    """A packaged model whose 'conversion' saves the tiny model; counts conversions."""
    from omnitrace_core import models

    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    entry = models.PackagedModel(
        name="fake-tiny", title="Fake", packages=("fake_pkg",), gguf_name="fake.gguf", requirements=("fake==0",), sha256="0" * 64
    )
    monkeypatch.setitem(models.PACKAGED_MODELS, "fake-tiny", entry)
    monkeypatch.setattr(models, "_gguf_path", lambda e: gguf)
    conversions = []

    def convert(e, g, final):
        conversions.append(final)
        final.mkdir(parents=True, exist_ok=True)
        tiny_model.save_pretrained(final)
        tiny_tokenizer.save_pretrained(final)
        (final / models._MARKER).write_text("{}")

    monkeypatch.setattr(models, "_convert_to_cache", convert)
    return models, conversions


def test_a_corrupt_cache_is_rebuilt(fake_packaged, tmp_path, monkeypatch):
    models, conversions = fake_packaged
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    models.load_packaged("fake-tiny")
    (weights,) = list((tmp_path / "cache" / "models").glob("*/model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # truncated: a crash during a copy
    loaded = models.load_packaged("fake-tiny")
    assert len(conversions) == 2 and loaded.name == "fake-tiny"


def test_a_cache_that_stays_corrupt_is_a_named_error(fake_packaged, tmp_path, monkeypatch):
    models, conversions = fake_packaged
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))

    def broken(e, g, final):
        conversions.append(final)
        final.mkdir(parents=True, exist_ok=True)
        (final / "config.json").write_text("{not json")
        (final / models._MARKER).write_text("{}")

    monkeypatch.setattr(models, "_convert_to_cache", broken)
    with pytest.raises(ModelLoadError, match="cannot load fake-tiny from its cache"):
        models.load_packaged("fake-tiny")
    assert len(conversions) == 2


@pytest.mark.parametrize("how", ["under-a-file", "dev-null"])
def test_an_unwritable_cache_is_a_named_error(fake_packaged, tmp_path, monkeypatch, how):
    models, conversions = fake_packaged
    if how == "under-a-file":
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("x")
        root = blocker / "cache"
    else:
        root = tmp_path / "dev" / "null" / "x"
        root.parent.parent.mkdir()
        (root.parent.parent / "null").write_text("")
    monkeypatch.setenv(models.CACHE_ENV, str(root))
    with pytest.raises(ModelLoadError) as info:
        models.load_packaged("fake-tiny")
    assert "not writable" in str(info.value) and models.CACHE_ENV in str(info.value)
    assert conversions == []


def test_a_conversion_that_fails_to_write_is_a_named_error(fake_packaged, tmp_path, monkeypatch):
    models, _ = fake_packaged
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))

    def full(e, g, final):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(models, "_convert_to_cache", full)
    with pytest.raises(ModelLoadError, match=r"No space left on device.*OMNITRACE_CACHE_DIR"):
        models.load_packaged("fake-tiny")



