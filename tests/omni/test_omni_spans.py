"""Span bookkeeping of the omni prompt builder, per family, checked against the pad tokens."""

from __future__ import annotations

import pytest
import torch
from omni_fixtures import mp4_bytes, png_bytes, wav_bytes

from omnitrace_core import TextSource
from omnitrace_core.config import MappingConfig, TracerConfig
from omnitrace_core.errors import InvalidInputError, MediaError, UnsupportedModalityError
from omnitrace_core.mapping import TokenMapper, UnitIndex
from omnitrace_core.media.omni import OmniPromptBuilder
from omnitrace_core.media.omni.units import SCATTERED_UNITS
from omnitrace_core.sources import MediaSource

FAMILY_NAMES = ["qwen2-vl", "qwen2.5-vl", "qwen2.5-omni"]
DOC = TextSource(id="doc1", title="Valbrook Works", text="Valbrook Works was founded in 1905 in Cedar Falls.")


def _build(fam, sources, question="What is in the picture?", **kwargs):
    builder = OmniPromptBuilder.for_model(fam.model, fam.processor, **kwargs)
    return builder.build(sources, question, TracerConfig())


def _positions(unit) -> list[int]:
    scattered = getattr(unit, "token_positions", None)
    return list(scattered) if scattered else list(range(unit.token_start, unit.token_end))


def _pads(fam, layout, modality) -> list[int]:
    pad = fam.tokenizer.convert_tokens_to_ids(fam.spec.media[modality].pad)
    return [i for i, t in enumerate(layout.input_ids) if t == pad]


def _owned(layout, source_id, modality) -> list[int]:
    units = [u for u in layout.units if u.source_id == source_id and u.modality == modality]
    return sorted(p for u in units for p in _positions(u))


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_image_regions_own_exactly_the_image_tokens_and_tile_the_image(family, name):
    fam = family(name)
    # 60 x 200 px -> resized 56 x 196 -> 4 x 14 patches -> 2 columns x 7 rows of merged tokens.
    layout = _build(fam, [DOC, MediaSource(id="img1", modality="image", data=png_bytes(60, 200))])
    assert list(layout.model_inputs["image_grid_thw"][0]) == [1, 14, 4]
    assert _owned(layout, "img1", "image") == _pads(fam, layout, "image")
    regions = [u for u in layout.units if u.source_id == "img1"]
    # Rows 7 -> bands of 3, 2, 2 merged rows; columns 2 -> 2 (1 when units cannot be scattered).
    cols = 2 if SCATTERED_UNITS else 1
    assert len(regions) == 3 * cols
    assert [u.unit_id for u in regions] == [f"img1#{k}" for k in range(3 * cols)]
    # Boxes are in original pixels: 3 merged rows = 84 resized px = 84 * 200 / 196 = 85.7 -> 86.
    ys = sorted({(u.box[1], u.box[3]) for u in regions})
    assert ys == [(0, 86), (86, 143), (143, 200)]
    xs = sorted({(u.box[0], u.box[2]) for u in regions})
    assert xs == ([(0, 30), (30, 60)] if SCATTERED_UNITS else [(0, 60)])
    # The boxes tile the image: areas add up and no two overlap.
    assert sum((u.box[2] - u.box[0]) * (u.box[3] - u.box[1]) for u in regions) == 60 * 200
    for i, a in enumerate(regions):
        for b in regions[i + 1 :]:
            assert min(a.box[2], b.box[2]) <= max(a.box[0], b.box[0]) or min(a.box[3], b.box[3]) <= max(
                a.box[1], b.box[1]
            )
    # Each region owns the merged tokens of its rows and columns (row-major order).
    first = _pads(fam, layout, "image")[0]
    top_left = next(u for u in regions if u.box[:2] == (0, 0))
    expected = [first + r * 2 + c for r in range(3) for c in range(2 // cols)]
    assert _positions(top_left) == expected


@pytest.mark.skipif(
    not SCATTERED_UNITS, reason="needs SourceUnit.token_positions in omnitrace_core.sources"
)
def test_a_region_spanning_rows_keeps_its_scattered_positions(family):
    fam = family("qwen2.5-vl")
    layout = _build(fam, [MediaSource(id="img1", modality="image", data=png_bytes(60, 200))])
    top_left = layout.units[0]
    first = _pads(fam, layout, "image")[0]
    assert top_left.token_positions == (first, first + 2, first + 4)
    assert (top_left.token_start, top_left.token_end) == (first, first + 5)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_mass_on_a_region_token_maps_to_that_region(family, name):
    fam = family(name)
    layout = _build(fam, [DOC, MediaSource(id="img1", modality="image", data=png_bytes(60, 200))])
    index = UnitIndex(layout.units, exclude_first_positions=1)
    mapper = TokenMapper(index, MappingConfig(bias_correction="none"))
    for k, unit in enumerate(layout.units):
        row = torch.full((len(layout.input_ids),), 1e-4)
        row[_positions(unit)[-1]] = 1.0
        assert int(torch.argmax(index.mass(row))) == k
        assert mapper.map(row).unit_index == k


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_text_source_keeps_its_text_unit(family, name):
    fam = family(name)
    layout = _build(fam, [MediaSource(id="img1", modality="image", data=png_bytes()), DOC])
    (unit,) = [u for u in layout.units if u.source_id == "doc1"]
    assert unit.modality == "text" and unit.text == DOC.text
    assert DOC.text in fam.tokenizer.decode(layout.input_ids[unit.token_start : unit.token_end])
    assert layout.reference_positions[0] == unit.token_end  # the question follows the last source
    assert layout.reference_positions[-1] == len(layout.input_ids) - 1
    asked = fam.tokenizer.decode([layout.input_ids[p] for p in layout.question_positions]).strip()
    assert asked == "What is in the picture?"  # the question competes (MappingConfig.question_competes)


def test_audio_bins_are_25_tokens_per_second(family):
    fam = family("qwen2.5-omni")
    layout = _build(fam, [DOC, MediaSource(id="clip", modality="audio", data=wav_bytes(2.2))])
    bins = [u for u in layout.units if u.source_id == "clip"]
    assert _owned(layout, "clip", "audio") == _pads(fam, layout, "audio")
    assert [len(_positions(u)) for u in bins] == [25, 25, 5]  # 2.2 s: two full seconds, then 0.2 s
    assert [u.seconds for u in bins] == [(0.0, 1.0), (1.0, 2.0), (2.0, 2.2)]
    assert all(u.modality == "audio" and u.box is None for u in bins)
    audio_open = fam.tokenizer.convert_tokens_to_ids(fam.spec.media["audio"].open)
    assert layout.input_ids[bins[0].token_start - 1] == audio_open


def test_audio_segments_become_units_with_their_seconds(family):
    fam = family("qwen2.5-omni")
    clip = MediaSource(
        id="clip",
        modality="audio",
        data=wav_bytes(2.2),
        segments=[
            {"start_s": 0.0, "end_s": 0.8, "text": "hello"},
            {"start_s": 0.8, "end_s": 2.0, "text": "world"},
        ],
    )
    layout = _build(fam, [clip])
    first, second = layout.units
    # A token belongs to the segment holding its middle: (k + 0.5) / 25 s.
    assert len(_positions(first)) == 20 and len(_positions(second)) == 30
    assert (first.seconds, second.seconds) == ((0.0, 0.8), (0.8, 2.0))
    assert (first.text, second.text) == ("hello", "world")
    assert _positions(second)[0] == _positions(first)[-1] + 1


def test_a_segment_past_the_end_is_named(family):
    fam = family("qwen2.5-omni")
    clip = MediaSource(
        id="clip", modality="audio", data=wav_bytes(1.0), segments=[{"start_s": 3.0, "end_s": 4.0}]
    )
    with pytest.raises(InvalidInputError, match=r"segment #0 .* source 'clip' starts past the end"):
        _build(fam, [clip])


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_video_groups_are_one_second_each(family, name):
    fam = family(name)
    film = MediaSource(id="film", modality="video", data=mp4_bytes(2.6, with_audio=False))
    layout = _build(fam, [DOC, film])
    groups = [u for u in layout.units if u.source_id == "film"]
    assert _owned(layout, "film", "video") == _pads(fam, layout, "video")
    # 2.6 s at 2 fps = 6 frames = 3 temporal patches of 2; 64 x 48 px frames -> 56 x 56 -> 2 x 2 tokens.
    assert list(layout.model_inputs["video_grid_thw"][0]) == [3, 4, 4]
    assert [u.seconds for u in groups] == [(0.0, 1.0), (1.0, 2.0), (2.0, 2.6)]
    assert [len(_positions(u)) for u in groups] == [4, 4, 4]
    assert "use_audio_in_video" not in layout.model_inputs


def test_omni_hears_the_video_audio_track(family):
    fam = family("qwen2.5-omni")
    film = MediaSource(id="film", modality="video", data=mp4_bytes(2.6))
    layout = _build(fam, [film, MediaSource(id="clip", modality="audio", data=wav_bytes(1.5))])
    assert layout.model_inputs["use_audio_in_video"] is True
    video = [u for u in layout.units if u.source_id == "film" and u.modality == "video"]
    track = [u for u in layout.units if u.source_id == "film" and u.modality == "audio"]
    clip = [u for u in layout.units if u.source_id == "clip"]
    assert [u.seconds for u in video] == [(0.0, 1.0), (1.0, 2.0), (2.0, 2.6)]
    assert [u.seconds[0] for u in track] == [0.0, 1.0, 2.0] and track[-1].seconds[1] == pytest.approx(
        2.62, abs=0.03
    )
    assert [u.seconds for u in clip] == [(0.0, 1.0), (1.0, 1.5)]
    # Every audio pad token is the track's or the clip's; interleaving keeps each unit contiguous
    # (the first 2 s of video, then that audio, then the rest).
    assert sorted(_owned(layout, "film", "audio") + _owned(layout, "clip", "audio")) == _pads(
        fam, layout, "audio"
    )
    assert video[1].token_end == track[0].token_start and track[1].token_end == video[2].token_start
    assert [u.unit_id for u in video + track] == [f"film#{k}" for k in range(6)]


def test_a_model_without_audio_rejects_audio_by_model_and_modality(family):
    fam = family("qwen2-vl")
    clip = MediaSource(id="clip", modality="audio", data=wav_bytes(1.0))
    with pytest.raises(UnsupportedModalityError, match=r"model '.*' \(qwen2-vl\) cannot take audio sources"):
        _build(fam, [DOC, clip], model_name="tiny-qwen2-vl")
    with pytest.raises(UnsupportedModalityError, match="'tiny-qwen2-vl'"):
        _build(fam, [clip], model_name="tiny-qwen2-vl")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            MediaSource(id="broken", modality="image", data=b"\x89PNG\r\n\x1a\nnot really"),
            "image source 'broken'",
        ),
        (
            MediaSource(id="gone", modality="image", path="/nonexistent/x.png"),
            "image source 'gone'.*file not found",
        ),
        (MediaSource(id="noise", modality="video", data=b"\x00\x01garbage" * 10), "video source 'noise'"),
    ],
)
def test_bad_media_is_named(family, source, message):
    with pytest.raises(MediaError, match=message):
        _build(family("qwen2.5-vl"), [DOC, source])


def test_corrupt_audio_is_named(family):
    with pytest.raises(MediaError, match="audio source 'hum'"):
        _build(family("qwen2.5-omni"), [MediaSource(id="hum", modality="audio", data=b"RIFF\x00\x00junk")])


def test_builder_rejects_a_processor_of_another_model(family):
    vl, omni = family("qwen2.5-vl"), family("qwen2-vl")
    other = vl.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert other == omni.tokenizer.convert_tokens_to_ids("<|image_pad|>")  # same layout: accepted
    OmniPromptBuilder.for_model(omni.model, vl.processor)
    with pytest.raises(InvalidInputError, match=r"media token|has no"):
        OmniPromptBuilder.for_model(family("qwen2.5-omni").model, vl.processor)
