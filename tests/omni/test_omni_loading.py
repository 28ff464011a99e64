"""Local checkpoint folders, processors without torchvision, and the video stand-in's layout."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from omni_fixtures import FAMILIES, build_model, build_processor, mp4_bytes, png_bytes

from omnitrace_core import Tracer
from omnitrace_core.config import TracerConfig
from omnitrace_core.errors import UnsupportedModalityError
from omnitrace_core.media.omni import (
    QWEN2_5_VL,
    FrameVideoProcessor,
    MediaTokens,
    OmniPromptBuilder,
    register_spec,
    spec_for,
    spec_for_model_type,
)
from omnitrace_core.media.omni.media import load_video
from omnitrace_core.models import load_model
from omnitrace_core.sources import MediaSource

IMAGE = MediaSource(id="img1", modality="image", data=png_bytes())


@pytest.fixture(scope="module")
def vl_folder(tmp_path_factory):
    spec = FAMILIES["qwen2.5-vl"]
    processor = build_processor(spec)
    model = build_model(spec, processor.tokenizer)
    folder = tmp_path_factory.mktemp("models") / "tiny-qwen2.5-vl"
    model.save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def omni_folder(tmp_path_factory):
    """A full Qwen2.5-Omni folder (thinker only: no talker weights) as the hub ships it."""
    import transformers

    spec = FAMILIES["qwen2.5-omni"]
    processor = build_processor(spec)
    thinker = build_model(spec, processor.tokenizer)
    config = transformers.Qwen2_5OmniConfig(
        thinker_config=thinker.config.to_dict(), enable_audio_output=False
    )
    full = transformers.Qwen2_5OmniForConditionalGeneration(config)
    full.thinker.load_state_dict(thinker.state_dict())
    folder = tmp_path_factory.mktemp("models") / "tiny-qwen2.5-omni"
    full.save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    # One preprocessor_config.json holds the image processor's and the feature extractor's fields.
    merged = {**processor.image_processor.to_dict(), **processor.feature_extractor.to_dict()}
    (folder / "preprocessor_config.json").write_text(json.dumps(merged, default=str))
    torch.save({}, folder / "spk_dict.pt")
    return folder, thinker


def test_a_vl_folder_loads_with_its_prompt_builder(vl_folder):
    loaded = load_model(str(vl_folder))
    assert type(loaded.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert isinstance(loaded.prompt_builder, OmniPromptBuilder)
    assert loaded.prompt_builder.spec is QWEN2_5_VL and loaded.name == "tiny-qwen2.5-vl"
    tracer = Tracer(
        loaded.model, loaded.tokenizer, model_name=loaded.name, prompt_builder=loaded.prompt_builder
    )
    answer = tracer.generate([IMAGE], "What is in the picture?", max_new_tokens=3)
    assert answer.generated_tokens >= 1 and answer.model == "tiny-qwen2.5-vl"


def test_a_full_omni_folder_loads_its_thinker(omni_folder):
    folder, thinker = omni_folder
    loaded = load_model(str(folder))
    assert type(loaded.model).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
    for (name, a), b in zip(loaded.model.state_dict().items(), thinker.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert loaded.tokenizer.audio_token == "<|AUDIO|>"
    assert loaded.prompt_builder.modalities == frozenset({"image", "audio", "video"})
    assert loaded.num_layers == 2


def test_tracer_from_pretrained_uses_the_folder_prompt_builder(vl_folder):
    tracer = Tracer.from_pretrained(str(vl_folder))
    assert isinstance(tracer.prompt_builder, OmniPromptBuilder)
    layout = tracer.layout([IMAGE], "What is in the picture?")
    assert any(u.box for u in layout.units)


def test_frame_video_processor_lays_a_still_clip_out_like_the_image_processor():
    """Two identical frames make one temporal patch equal to the image processor's output."""
    from PIL import Image
    from transformers import Qwen2VLImageProcessorPil

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (56, 84, 3), dtype=np.uint8)  # already a multiple of 28: no resize
    video = FrameVideoProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 16)(np.stack([frame, frame]))
    image = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 16)(
        Image.fromarray(frame), return_tensors="pt"
    )
    assert video["video_grid_thw"].tolist() == image["image_grid_thw"].tolist() == [[1, 4, 6]]
    assert torch.allclose(video["pixel_values_videos"], image["pixel_values"].float(), atol=1e-5)
    assert video["video_metadata"][0].sampled_fps == 2.0


def test_video_frames_are_sampled_at_two_per_second():
    clip = MediaSource(id="film", modality="video", data=mp4_bytes(2.6, fps=10))
    video = load_video(clip, fps=2.0, sampling_rate=16000, with_audio=True)
    # Frame i of the file is grey 20 i: the frames at 0, 0.5, 1.0 ... s are 0, 5, 10 ... (lossy codec).
    greys = [int(f.mean()) for f in video.frames]
    assert np.allclose(greys, [0, 100, 200, 45, 145, 245], atol=8)
    assert video.duration == pytest.approx(2.6)
    assert video.audio is not None and len(video.audio) / 16000 == pytest.approx(2.6, abs=0.05)


def test_a_new_family_is_one_spec(family):
    """Registering a spec is all a new family needs (here: Qwen2.5-VL's layout under a new name)."""
    fam = family("qwen2.5-vl")
    spec = replace(
        QWEN2_5_VL,
        family="my-vl",
        model_types=("my_vl",),
        media={"image": MediaTokens("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")},
    )
    register_spec(spec)
    assert spec_for_model_type("my_vl") is spec
    builder = OmniPromptBuilder(fam.processor, spec, model_name="mine")
    layout = builder.build([IMAGE], "What is in the picture?", TracerConfig())
    assert (
        len(layout.units) == 9
    )  # a 3 x 4 token grid cut into 3 x 3 regions (1 column band without scattering)
    assert builder.modalities == frozenset({"image"})
    with pytest.raises(UnsupportedModalityError, match=r"model 'mine' \(my-vl\) cannot take video"):
        builder.build([MediaSource(id="film", modality="video", data=b"x")], "What?", TracerConfig())


def test_a_text_model_has_no_spec(tiny_model):
    with pytest.raises(UnsupportedModalityError, match="not a known omni"):
        spec_for(tiny_model)
