"""Per-model calibration files and the ``learned`` signal (tiny random models, no packaged weights)."""

from __future__ import annotations

import json

import pytest
import torch

from omnitrace_core import Tracer
from omnitrace_core.calibration import (
    Calibration,
    CalibrationMismatchError,
    config_hash,
    find_calibration,
    head_shape,
    load_calibration,
)
from omnitrace_core.capture import install
from omnitrace_core.config import MappingConfig, TracerConfig
from omnitrace_core.errors import InvalidInputError, UnknownNameError
from omnitrace_core.signals import AttMean, LearnedHeads
from tests.conftest import build_tiny_model


def _calibration(model, weights=None, **kw) -> Calibration:
    layers, heads = head_shape(model)
    w = weights if weights is not None else [[1.0] * heads for _ in range(layers)]
    return Calibration(model="tiny-llama", config_hash=config_hash(model), num_layers=layers,
                       num_heads=heads, head_weights=w, **kw)


def test_uniform_learned_weights_equal_attmean():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(4, 3, 9), dim=-1)
    learned, mean = LearnedHeads(torch.ones(2, 4)), AttMean()
    # capture averages the reduced rows over the layers read; uniform weights give the mean again
    total_learned = sum(learned.reduce(probs, layer) for layer in (0, 1)) / 2
    total_mean = sum(mean.reduce(probs, layer) for layer in (0, 1)) / 2
    assert torch.allclose(total_learned, total_mean, atol=1e-6)


def test_learned_weights_select_heads_and_skip_zero_layers():
    w = torch.zeros(3, 2)
    w[1, 0] = 1.0
    sig = LearnedHeads(w)
    assert sig.layers(3) == [1]  # layers without weight are never read: cheaper than AttMean
    probs = torch.softmax(torch.randn(2, 1, 5), dim=-1)
    assert torch.allclose(sig.reduce(probs, 1), probs[0], atol=1e-6)
    with pytest.raises(ValueError, match="3 layers, the model has 4"):
        sig.layers(4)


@pytest.mark.parametrize("bad", [[[1.0, -1.0]], [[float("nan"), 1.0]], [[0.0, 0.0]], [1.0, 2.0]])
def test_bad_weights_are_refused(bad):
    with pytest.raises(ValueError):
        LearnedHeads(bad)


def test_calibration_round_trips_and_validates(tmp_path, tiny_model):
    cal = _calibration(tiny_model, mapping=MappingConfig(bias_correction="prompt"), fit={"prompts": 3})
    path = cal.save(tmp_path / "c.json")
    assert load_calibration(path) == cal
    raw = json.loads(path.read_text())
    raw["head_weights"][0] = raw["head_weights"][0][:-1]
    path.write_text(json.dumps(raw))
    with pytest.raises(InvalidInputError, match="head_weights must be"):
        load_calibration(path)
    with pytest.raises(InvalidInputError, match="cannot read calibration"):
        load_calibration(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match="not a valid calibration"):
        load_calibration(tmp_path / "x.json")


def test_a_calibration_for_another_model_is_a_named_error(tiny_model, tiny_tokenizer):
    other = build_tiny_model(len(tiny_tokenizer), layers=2)
    cal = _calibration(other)
    with pytest.raises(CalibrationMismatchError, match=r"does not fit model 'tiny-llama' \(3 layers"):
        Tracer(tiny_model, tiny_tokenizer, model_name="tiny-llama", calibration=cal)


def test_tracer_uses_the_calibrations_config_and_learned_signal(tiny_model, tiny_tokenizer, sources):
    layers, heads = head_shape(tiny_model)
    w = [[0.0] * heads for _ in range(layers)]
    w[-1][1] = 1.0
    cal = _calibration(tiny_model, w, mapping=MappingConfig(bias_correction="none"))
    tracer = Tracer(tiny_model, tiny_tokenizer, model_name="tiny-llama", calibration=cal)
    assert tracer.config.signal == "learned" and tracer.config.mapping.bias_correction == "none"
    answer = tracer.attribute(sources, "When was it founded?", "It was founded in 1905.")
    assert answer.signal == "learned" and answer.sentences
    # an explicit config wins; attmean stays available
    plain = Tracer(tiny_model, tiny_tokenizer, config=TracerConfig(), calibration=cal)
    assert plain.config.signal == "attmean"
    assert plain.attribute(sources, "When?", "It was founded in 1905.").signal == "attmean"


def test_a_calibration_defaulting_to_attmean_keeps_the_library_defaults(tiny_model, tiny_tokenizer, sources):
    """The fitted settings belong to the learned heads: with ``default_signal="attmean"`` (heads
    that did not win) the tracer runs AttMean with the library's mapping, learned stays opt-in."""
    layers, heads = head_shape(tiny_model)
    cal = _calibration(tiny_model, [[1.0] * heads for _ in range(layers)], mapping=MappingConfig(bias_correction="none"))
    cal = cal.model_copy(update={"default_signal": "attmean"})
    tracer = Tracer(tiny_model, tiny_tokenizer, model_name="tiny-llama", calibration=cal)
    assert tracer.config == TracerConfig(signal="attmean")
    assert tracer.attribute(sources, "When?", "It was founded in 1905.").signal == "attmean"
    learned = tracer.attribute(sources, "When?", "It was founded in 1905.", config=TracerConfig(signal="learned"))
    assert learned.signal == "learned"


def test_learned_signal_without_a_calibration_names_the_fix(tiny_model, tiny_tokenizer):
    with pytest.raises(UnknownNameError, match="omnitrace calibrate"):
        Tracer(tiny_model, tiny_tokenizer, config=TracerConfig(signal="learned"))


def test_learned_rows_are_the_weighted_head_attention(tiny_model, tiny_tokenizer, sources):
    """The captured row of the learned signal equals the weighted sum of per-head eager attention."""
    layers, heads = head_shape(tiny_model)
    torch.manual_seed(1)
    w = torch.rand(layers, heads)
    cal = _calibration(tiny_model, w.tolist())
    tracer = Tracer(tiny_model, tiny_tokenizer, calibration=cal)
    layout = tracer.layout(sources, "Who keeps the lamp?")
    forced = tracer.forced_rows(layout, "The keeper.", tracer.signal_for("learned"))
    ids = torch.tensor([layout.input_ids + forced.token_ids])
    tiny_model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = tiny_model(input_ids=ids, output_attentions=True, use_cache=False).attentions
    finally:
        install(tiny_model)
    pos = len(layout.input_ids) - 1
    expect = sum((w[i] / w.sum()).view(-1, 1) * attentions[i][0, :, pos, : pos + 1] for i in range(layers)).sum(0)
    assert torch.allclose(forced.rows[0], expect, atol=1e-5)


def test_find_calibration_in_a_model_folder(tmp_path, tiny_model):
    assert find_calibration(str(tmp_path)) is None
    _calibration(tiny_model).save(tmp_path / "omnitrace-calibration.json")
    assert find_calibration(str(tmp_path)).model == "tiny-llama"
    assert find_calibration("no-such-packaged-model") is None


def test_a_calibrations_grounding_thresholds_reach_the_verdict(tiny_model, tiny_tokenizer, sources):
    from omnitrace_core.config import GroundingThresholds
    from omnitrace_core.grounding import assess_grounding

    strict = GroundingThresholds(attention_weight=0.0, weak_min=0.99, supported_min=1.0)
    tracer = Tracer(tiny_model, tiny_tokenizer, calibration=_calibration(tiny_model, grounding=strict))
    answer = tracer.attribute(sources, "When was it founded?", "Valbrook Works was founded in 1905.")
    assert assess_grounding(answer).thresholds == strict  # the model's own, carried by the answer
    assert assess_grounding(answer, GroundingThresholds()).thresholds == GroundingThresholds()


@pytest.mark.parametrize("name", ["smollm2-135m", "qwen2.5-0.5b"])
def test_shipped_calibrations_load_and_say_how_they_were_made(name):
    from omnitrace_core.calibration import packaged_calibration
    from omnitrace_core.models import PACKAGED_MODELS

    cal = packaged_calibration(name)
    assert cal is not None and cal.model == name and name in PACKAGED_MODELS
    assert cal.fit["masks_per_prompt"] == 32 and cal.fit["prompts"] >= 40 and "calibration_prompts.py" in cal.fit["data"]
    assert cal.fit["heldout_corr_learned"] > cal.fit["heldout_corr_uniform"]
    assert cal.mapping is not None and cal.curation is not None and cal.grounding is not None
    assert cal.tracer_config().signal == cal.default_signal
