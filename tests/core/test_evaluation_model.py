"""``omnitrace eval`` on two dev rows with the packaged model: same texts, real costs, faithfulness."""

from __future__ import annotations

import json
import math

import pytest

from omnitrace_core.evaluation.runner import EvalSettings, evaluate

pytestmark = pytest.mark.model

METHODS = ["omnitrace", "omnitrace-peak", "omnitrace-grounding", "self-cite"]


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def dev_rows(bench_dir):
    rows = [json.loads(x) for x in (bench_dir / "dev.jsonl").read_text().splitlines() if x.strip()]
    return [next(r for r in rows if r["task"] == task) for task in ("qa_single", "teacher_forced")]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, dev_rows, default_tracer):
    root = tmp_path_factory.mktemp("eval-model")
    data = root / "dev2.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in dev_rows))
    settings = EvalSettings(tracer=default_tracer, max_new_tokens=16, faithfulness=True)
    report = evaluate(data, root / "out", ["lexical"], methods=METHODS, settings=settings)
    return root / "out", report


def test_every_method_attributes_the_default_methods_texts(evaluated, dev_rows, default_tracer):
    out, report = evaluated
    assert list(report["methods"]) == [*METHODS, "lexical"]
    assert all(m["failures"] == [] and m["rows_predicted"] == 2 for m in report["methods"].values())
    texts = {name: [p["text"] for p in _lines(out / f"predictions-{name}.jsonl")] for name in report["methods"]}
    assert len({tuple(t) for t in texts.values()}) == 1
    generated = default_tracer.generate(dev_rows[0]["sources"], dev_rows[0]["question"], max_new_tokens=16)
    assert texts["omnitrace"][0] == generated.text  # greedy: the default method's own answer
    forced = dev_rows[1]
    attributed = default_tracer.attribute(forced["sources"], forced["question"], forced["response"])
    assert _lines(out / "predictions-omnitrace.jsonl")[1]["sentences"] == attributed.to_prediction("x")["sentences"]


def test_costs_and_metrics_are_reported(evaluated):
    out, report = evaluated
    methods = report["methods"]
    omni = methods["omnitrace"]["cost"]
    assert omni["forward_passes"] == 1 and omni["generation"]["rows"] == 1  # forced row: one pass
    assert methods["omnitrace-peak"]["cost"]["forward_passes"] == 2
    assert methods["self-cite"]["cost"]["forward_passes"] >= methods["self-cite"]["cost"]["sentences"]
    assert methods["lexical"]["cost"]["forward_passes"] == 0
    assert all(m["cost"]["seconds_per_sentence"] > 0 for n, m in methods.items() if n != "omnitrace")
    forced = methods["omnitrace"]["metrics"]["teacher_forced"]
    assert forced["labelled_sentences"] > 0 and 0 <= forced["sentence_f1_micro"] <= 1
    md = (out / "metrics.md").read_text()
    assert "## teacher_forced" in md and "## cost" in md and "## faithfulness" in md


def test_faithfulness_drops_are_finite_with_a_random_control(evaluated):
    _, report = evaluated
    faith = report["faithfulness"]
    assert faith["rows"] == 2 and faith["failures"] == [] and faith["forward_passes"] > 2
    for entry in [*(m["faithfulness"] for m in report["methods"].values()), faith["random"]]:
        assert entry["sentences"] > 0
        assert math.isfinite(entry["logp_drop_k1"]) and math.isfinite(entry["logp_drop_k3"])
