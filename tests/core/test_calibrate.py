"""``omnitrace calibrate`` end to end on a tiny random model: collect, fit, choose, write, resume."""

from __future__ import annotations

import json

import pytest
import torch

from omnitrace_core import Tracer
from omnitrace_core.calibration import load_calibration
from omnitrace_core.errors import InvalidInputError
from omnitrace_core.evaluation.calibrate import (
    CalibrationSettings,
    Example,
    calibrate,
    collect_example,
    dependent_sources,
    fit_head_weights,
    part_matches,
    parts_dir,
    read_prompts,
)

ROWS = [
    {
        "id": f"c{i}",
        "question": "Who founded it?",
        "sources": [
            {"id": "a", "text": "Valbrook Works was founded in 1905 in Cedar Falls."},
            {"id": "b", "text": "The lighthouse stands 42 metres tall."},
            {"id": "c", "text": "Its keeper lit the lamp every night."},
        ],
        "response": ["It was founded in 1905. The lighthouse is tall.", "The keeper lit the lamp."][i % 2],
    }
    for i in range(4)
]


def test_collect_example_shapes(tiny_tracer):
    ex = collect_example(tiny_tracer, ROWS[0], k=6, seed=1)
    assert ex is not None and len(ex.sentences) == 2
    layers, heads = tiny_tracer.loaded.num_layers, tiny_tracer.model.config.num_attention_heads
    assert ex.mass.shape == (2, layers, heads, 3) and ex.masks.shape == (6, 3) and ex.logp.shape == (6, 2)
    # each head's mass on the three sources is a part of its attention (<= 1)
    assert (ex.mass >= 0).all() and (ex.mass.sum(-1) <= 1 + 1e-5).all()
    assert ex.passes >= 2 and ex.effects().shape == (2, 3)
    assert Example.from_dict(ex.to_dict()).masks.equal(ex.masks)


def test_dependent_sources_reads_the_ablation_effect():
    effects = torch.tensor([[3.0, 0.2, 2.0], [0.1, 0.3, 0.0], [5.0, 1.2, 0.0]])
    assert dependent_sources(effects) == [{0, 2}, set(), {0}]


def test_fit_recovers_heads_that_predict_ablations():
    """Synthetic: only head (1, 0)'s mass tracks the source that matters; the fit finds it."""
    torch.manual_seed(0)
    examples = []
    for i in range(30):
        masks = torch.rand(16, 3) < 0.5
        mass = torch.rand(2, 2, 2, 3) * 0.2  # (sentences, layers, heads, sources): noise
        logp = torch.zeros(16, 2)
        for j in range(2):
            src = (i + j) % 3
            mass[j, 1, 0] = 0.02
            mass[j, 1, 0, src] = 0.9
            logp[:, j] = -5 + 4 * masks[:, src].float() + 0.1 * torch.randn(16)
        examples.append(Example(id=f"e{i}", response="x", sentences=[(0, 1), (1, 2)], mass=mass,
                                masks=masks, logp=logp, full=torch.zeros(2), passes=1, seconds=0.0))
    weights, report = fit_head_weights(examples, seed=0)
    assert weights.shape == (2, 2) and abs(float(weights.sum()) - 1) < 1e-5
    assert int(weights.argmax()) == 2  # (layer 1, head 0)
    assert report.heldout_corr_learned > report.heldout_corr_uniform


def test_calibrate_writes_a_loadable_calibration_and_resumes(tmp_path, tiny_model, tiny_tokenizer):
    tracer = Tracer(tiny_model, tiny_tokenizer, model_name="tiny-llama")
    out = tmp_path / "cal.json"
    settings = CalibrationSettings(k=6, seed=0)
    cal, problems = calibrate(tracer, ROWS, out, settings, data_note="test rows")
    assert problems == []
    loaded = load_calibration(out)
    assert loaded == cal and loaded.model == "tiny-llama" and loaded.fit["prompts"] == 4
    assert loaded.mapping is not None and loaded.curation is not None and loaded.grounding is not None
    assert len(list(parts_dir(out).glob("*.pt"))) == 4
    # the calibration drives a tracer
    traced = Tracer(tiny_model, tiny_tokenizer, model_name="tiny-llama", calibration=loaded)
    assert traced.attribute(ROWS[0]["sources"], "Who?", "It was founded in 1905.").signal == "learned"
    # resumed: the parts are reused (no forward pass needed: the model is not even called)
    passes = []
    handle = tiny_model.register_forward_hook(lambda *a: passes.append(1))
    try:
        calibrate(tracer, ROWS, out, CalibrationSettings(k=6, seed=0, choose_defaults=False))
    finally:
        handle.remove()
    assert passes == []
    # other settings: the saved parts are not mixed in (16-mask and 32-mask parts cannot be fitted
    # together); every prompt is collected again
    again, _ = calibrate(tracer, ROWS, out, CalibrationSettings(k=4, seed=0, choose_defaults=False))
    assert again.fit["masks_per_prompt"] == 4 and again.fit["prompts"] == 4
    parts = [torch.load(p, weights_only=False) for p in parts_dir(out).glob("*.pt")]
    assert {int(p["masks"].shape[0]) for p in parts} == {4}


def test_parts_from_other_settings_are_refused():
    part = {"masks": torch.ones(16, 3)}  # written before the settings were stored
    assert part_matches(part, CalibrationSettings(k=16))
    assert not part_matches(part, CalibrationSettings(k=32))
    stored = {"masks": torch.ones(8, 3), "settings": {"k": 8, "seed": 0, "max_new_tokens": 48}}
    assert part_matches(stored, CalibrationSettings(k=8))
    assert not part_matches(stored, CalibrationSettings(k=8, seed=1))
    assert part_matches({"skipped": True, "id": "x"}, CalibrationSettings(k=99))


def test_read_prompts_names_bad_lines(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps(ROWS[0]) + "\n{oops\n")
    with pytest.raises(InvalidInputError, match=r"p.jsonl:2: not JSON"):
        read_prompts(p)
    p.write_text(json.dumps({"id": "x", "question": "q"}) + "\n")
    with pytest.raises(InvalidInputError, match="needs 'sources' and a 'question'"):
        read_prompts(p)
    p.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[0]) + "\n")
    with pytest.raises(InvalidInputError, match="duplicate id"):
        read_prompts(p)
