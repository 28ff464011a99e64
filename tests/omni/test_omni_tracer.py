"""The tracer end to end on tiny omni / vision-language models, and exact capture on them."""

from __future__ import annotations

import pytest
import torch
from omni_fixtures import FAMILIES, build_model, png_bytes, wav_bytes

from omnitrace_core import TextSource, Tracer
from omnitrace_core.capture import CaptureSession, capturing, install
from omnitrace_core.config import MappingConfig, TracerConfig
from omnitrace_core.errors import UnsupportedModalityError
from omnitrace_core.media.omni import OmniPromptBuilder
from omnitrace_core.signals import Signal, get_signal, register_signal
from omnitrace_core.sources import MediaSource

DOC = TextSource(id="doc1", title="Lighthouse", text="The lighthouse stands 42 metres tall.")
RESPONSE = "The lighthouse stands 42 metres tall. Its keeper lit the lamp every night."


class OneHot(Signal):
    """Puts every row's whole mass on one prompt position (a stand-in for real attention)."""

    name = "omni-test-onehot"

    def __init__(self) -> None:
        self.target = 0

    def layers(self, num_layers: int) -> list[int]:
        return [num_layers - 1]

    def reduce(self, probs: torch.Tensor, layer_idx: int) -> torch.Tensor:
        out = torch.zeros(probs.shape[1:], dtype=probs.dtype, device=probs.device)
        out[:, self.target] = 1.0
        return out


ONE_HOT = OneHot()
register_signal(ONE_HOT)
PLACED = TracerConfig(signal=ONE_HOT.name, mapping=MappingConfig(bias_correction="none"))


def _tracer(fam) -> Tracer:
    return Tracer(
        fam.model, fam.tokenizer, prompt_builder=OmniPromptBuilder.for_model(fam.model, fam.processor)
    )


def _sources(spec):
    out = [DOC, MediaSource(id="img1", modality="image", data=png_bytes(60, 200), title="Photo")]
    if "audio" in spec.media:
        out.append(MediaSource(id="clip", modality="audio", data=wav_bytes(2.2)))
    return out


@pytest.mark.parametrize("name", list(FAMILIES))
def test_generate_maps_tokens_to_media_units(family, name):
    fam = family(name)
    tracer = _tracer(fam)
    sources = _sources(fam.spec)
    layout = tracer.layout(sources, "What is in the picture?")
    answer = tracer.generate(sources, "What is in the picture?", max_new_tokens=8)
    assert answer.prompt_tokens == len(layout.input_ids)
    assert answer.generated_tokens >= 1
    assert any(t.unit_id is not None for t in answer.tokens)
    info = {s.id: s for s in answer.sources}
    assert info["img1"].modality == "image" and all(u.box for u in info["img1"].units)
    if "clip" in info:
        assert [u.seconds for u in info["clip"].units] == [(0.0, 1.0), (1.0, 2.0), (2.0, 2.2)]
    for sentence in answer.sentences:
        for c in sentence.citations:
            assert bool(c.boxes) == (c.modality == "image")
            assert bool(c.seconds) == (c.modality == "audio")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_attribute_cites_the_region_the_attention_is_on(family, name):
    fam = family(name)
    tracer = _tracer(fam)
    sources = _sources(fam.spec)
    layout = tracer.layout(sources, "What is in the picture?", PLACED)
    region = next(u for u in layout.units if u.unit_id == "img1#1")
    ONE_HOT.target = region.token_end - 1
    answer = tracer.attribute(sources, "What is in the picture?", RESPONSE, config=PLACED)
    assert answer.sentences
    for sentence in answer.sentences:
        assert [(c.source_id, c.boxes, c.seconds) for c in sentence.citations] == [("img1", [region.box], [])]
    assert {t.unit_id for t in answer.tokens} == {"img1#1"}


def test_attribute_cites_the_second_the_attention_is_on(family):
    fam = family("qwen2.5-omni")
    tracer = _tracer(fam)
    sources = _sources(fam.spec)
    layout = tracer.layout(sources, "What was said?", PLACED)
    second = next(u for u in layout.units if u.source_id == "clip" and u.seconds == (1.0, 2.0))
    ONE_HOT.target = second.token_start + 3
    answer = tracer.attribute(sources, "What was said?", RESPONSE, config=PLACED)
    cited = {(c.source_id, tuple(c.seconds)) for s in answer.sentences for c in s.citations}
    assert cited == {("clip", ((1.0, 2.0),))}
    assert json_round_trips(answer)


def json_round_trips(answer) -> bool:
    return type(answer).model_validate_json(answer.model_dump_json()) == answer


def test_a_model_without_audio_names_itself_and_the_modality(family):
    fam = family("qwen2-vl")
    tracer = Tracer(
        fam.model,
        fam.tokenizer,
        model_name="tiny-qwen2-vl",
        prompt_builder=OmniPromptBuilder.for_model(fam.model, fam.processor),
    )
    clip = MediaSource(id="clip", modality="audio", data=wav_bytes(1.0))
    with pytest.raises(
        UnsupportedModalityError, match=r"model 'tiny-qwen2-vl' cannot take audio sources \(source 'clip'\)"
    ):
        tracer.generate([DOC, clip], "What was said?", max_new_tokens=2)


def _eager_rows(model, inputs, ids):
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                use_cache=False,
                output_attentions=True,
                **inputs,
            )
    finally:
        install(model)
    return torch.stack([a[0].float() for a in out.attentions]).mean(0).mean(0)  # (N, N): layers, heads


@pytest.mark.parametrize("name", ["qwen2.5-vl", "qwen2.5-omni"])
def test_captured_rows_equal_eager_attention(family, name):
    fam = family(name)
    model = build_model(fam.spec, fam.tokenizer, seed=1)  # a private copy: its attention is switched
    install(model)
    builder = OmniPromptBuilder.for_model(model, fam.processor)
    layout = builder.build(_sources(fam.spec), "What is in the picture?", TracerConfig())
    ids = torch.tensor([layout.input_ids])
    n = ids.shape[1]
    # Prefill rows: the last prompt row and rows inside the image and the question.
    image_row = max(u.token_end for u in layout.units if u.source_id == "img1") - 1
    session = CaptureSession(get_signal("attmean"), 2, prefill_positions=[image_row, n - 3, n - 1])
    with capturing(session), torch.no_grad():
        generated = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=3,
            do_sample=False,
            **layout.model_inputs,
        )
    full = generated[:, : n + 2]  # the rows of the 2nd and 3rd generated tokens are decode steps
    inputs = dict(layout.model_inputs)
    if "mm_token_type_ids" in inputs:
        extra = full.shape[1] - n
        inputs["mm_token_type_ids"] = torch.cat(
            [inputs["mm_token_type_ids"], torch.zeros(1, extra, dtype=torch.long)], 1
        )
    eager = _eager_rows(model, inputs, full)
    for p in [image_row, n - 3, n - 1, n, n + 1]:
        assert torch.max(torch.abs(session.row(p) - eager[p, : p + 1])).item() <= 1e-5, p
