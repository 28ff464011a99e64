"""Media and timed sources: validation by name, transcript segments as timed units, located citations."""

from __future__ import annotations

import pytest

from omnitrace_core.config import TracerConfig
from omnitrace_core.errors import InvalidInputError, UnsupportedModalityError
from omnitrace_core.prompting import TextPromptBuilder, prepare_sources
from omnitrace_core.results import Citation, merge_located, merge_spans
from omnitrace_core.sources import MediaSource, TextSource, build_prompt, validate_sources
from tests.factories import make_answer, make_citation

TRANSCRIPT = "The meeting starts at nine. Budget is ten thousand. We close at five."


def _transcript() -> TextSource:
    return TextSource(
        id="rec1",
        modality="audio",
        text=TRANSCRIPT,
        segments=[
            {"start_s": 0.0, "end_s": 2.1, "char_start": 0, "char_end": 27},
            {"start_s": 2.4, "end_s": 4.8, "char_start": 28, "char_end": 51},
            {"start_s": 5.0, "end_s": 6.9, "char_start": 52, "char_end": 69},
        ],
    )


def test_dicts_become_media_or_text_sources():
    got = validate_sources(
        [
            {"id": "img", "modality": "image", "path": "a.png"},
            {"id": "clip", "modality": "audio", "data": b"RIFF"},
            {"id": "doc", "text": "plain"},
        ]
    )
    assert [type(s).__name__ for s in got] == ["MediaSource", "MediaSource", "TextSource"]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"id": "a", "modality": "audio"}, "exactly one of 'path' or 'data'"),
        ({"id": "a", "modality": "audio", "data": b""}, "data is empty"),
        ({"id": "a", "modality": "smell", "path": "x"}, "unknown modality 'smell'"),
        ({"id": "a", "modality": "image", "path": "x", "segments": [{"start_s": 0, "end_s": 1}]}, "no time segments"),
        ({"id": "a", "modality": "audio", "path": "x", "segments": [{"start_s": 2, "end_s": 1}]}, "ends"),
        ({"id": "a", "text": "abc", "segments": [{"start_s": 0, "end_s": 1, "char_start": 0, "char_end": 9}]}, "past the text"),
        ({"id": "a", "text": "abc", "segments": [{"start_s": 0, "end_s": 1}]}, "no char_start"),
    ],
)
def test_bad_media_sources_are_named(source, message):
    with pytest.raises(InvalidInputError, match=message) as info:
        validate_sources([source])
    assert "'a'" in str(info.value) or "smell" in str(info.value)


def test_transcript_segments_are_timed_units(tiny_tokenizer):
    layout = build_prompt(tiny_tokenizer, [_transcript()], "When do we close?", None)
    assert [u.unit_id for u in layout.units] == ["rec1#0", "rec1#1", "rec1#2"]
    assert [u.seconds for u in layout.units] == [(0.0, 2.1), (2.4, 4.8), (5.0, 6.9)]
    assert [u.text for u in layout.units] == [TRANSCRIPT[0:27], TRANSCRIPT[28:51], TRANSCRIPT[52:69]]
    assert all(u.modality == "audio" for u in layout.units)
    spans = [(u.token_start, u.token_end) for u in layout.units]
    assert all(a < b for a, b in spans) and all(spans[i][1] <= spans[i + 1][0] for i in range(2))


def test_text_model_rejects_media_by_model_and_modality(tiny_tokenizer):
    builder = TextPromptBuilder(tiny_tokenizer)
    image = MediaSource(id="img1", modality="image", path="x.png")
    with pytest.raises(UnsupportedModalityError, match=r"model 'tiny' cannot take image sources \(source 'img1'\)"):
        prepare_sources([image], builder, TracerConfig(), "tiny")
    clip = MediaSource(id="clip", modality="audio", path="x.wav")
    with pytest.raises(UnsupportedModalityError, match="audio_fallback='asr'"):
        prepare_sources([clip], builder, TracerConfig(), "tiny")


def test_located_citations_merge_adjacent_bins():
    def cite(unit: int, a: float, b: float, score: float) -> Citation:
        return make_citation(
            "rec1", score, f"u{unit}", unit_id=f"rec1#{unit}",
            char_start=unit * 10, char_end=unit * 10 + 9, modality="audio", seconds=[(a, b)],
        )  # fmt: skip

    text = make_citation("doc", 0.2, "t")
    merged = merge_located([cite(3, 3.0, 4.0, 0.3), text, cite(1, 1.0, 2.0, 0.25), cite(2, 2.0, 3.0, 0.25)])
    assert [c.source_id for c in merged] == ["rec1", "doc"]
    assert merged[0].seconds == [(1.0, 4.0)]
    assert merged[0].score == pytest.approx(0.8)
    assert merged[0].cited_text == "u1 u2 u3"
    assert merge_spans([(5, 6), (0, 1), (1, 2)]) == [(0, 2), (5, 6)]


def test_prediction_rows_carry_seconds_and_boxes():
    from omnitrace_core.results import TracedAnswer

    c_audio = make_citation("rec1", 0.6, "x", unit_id="rec1#0", modality="audio", seconds=[(0.0, 2.1)])
    c_image = make_citation("img", 0.4, unit_id="img#r0", modality="image", boxes=[(0, 0, 32, 32)])
    answer = make_answer([("Hi.", [c_audio, c_image], {"source_mass": {}})], model="m", mode="attribute",
                         prompt_tokens=1)
    cites = answer.to_prediction("r")["sentences"][0]["citations"]
    assert cites == [
        {"source_id": "rec1", "score": 0.6, "seconds": [[0.0, 2.1]]},
        {"source_id": "img", "score": 0.4, "boxes": [[0, 0, 32, 32]]},
    ]
    assert TracedAnswer.model_validate_json(answer.model_dump_json()) == answer
