"""Measure the grounding verdict on ``grounding_dev.jsonl`` with the reference scorer.

Attributes each forced response on the packaged model (teacher-forced, one forward pass per
row), writes two prediction files in the benchmark format, and scores both with
``../shared/bench/score.py``: the verdict (``"grounded": false`` for unsupported sentences)
and a word-overlap baseline (flag when under half the sentence's content words appear in
its best source unit; its best threshold on this set is also reported).

Usage: ``python tests/langchain/data/eval_grounding.py [--json OUT]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from omnitrace_core import Tracer
from omnitrace_core.grounding import (
    GroundingThresholds,
    assess_grounding,
    content_words,
)

HERE = Path(__file__).resolve().parent
SCORER = next(
    (
        Path(c) / "score.py"
        for c in (os.environ.get("OMNITRACE_BENCH_DIR"), HERE.parents[2].parent / "shared" / "bench",
                  "/work/shared/bench")
        if c and (Path(c) / "score.py").is_file()
    ),
    HERE.parents[2].parent / "shared" / "bench" / "score.py",
)


def unsupported_f1(flags: list[bool], gold: list[bool]) -> float:
    tp = sum(f and g for f, g in zip(flags, gold, strict=True))
    p = tp / max(1, sum(flags))
    r = tp / max(1, sum(gold))
    return 2 * p * r / (p + r) if p + r else 0.0


def evaluate(tracer: Tracer, thresholds: GroundingThresholds | None = None) -> dict:
    """Score the verdict and the word-overlap baseline on the dev set with the reference scorer."""
    data = HERE / "grounding_dev.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    answers = [tracer.attribute(r["sources"], r["question"], r["response"]) for r in rows]
    th = thresholds or GroundingThresholds()
    verdict_rows, base_rows = [], []
    overlaps: list[float] = []
    gold: list[bool] = []
    feats: list[tuple[float, float, bool]] = []
    for row, answer in zip(rows, answers, strict=True):
        verdict = assess_grounding(answer, th)
        pred = answer.to_prediction(row["id"])
        base = json.loads(json.dumps(pred))
        for s, v, b in zip(pred["sentences"], verdict.sentences, base["sentences"], strict=True):
            s["grounded"] = v.label != "unsupported"
            words = content_words(v.text)
            best = max(
                (
                    len(words & content_words(u["text"])) / max(1, len(words))
                    for src in row["sources"]
                    for u in [src]
                ),
                default=0.0,
            )
            b["grounded"] = best >= 0.5
            overlaps.append(best)
            g = next(
                (
                    bool(gs.get("unsupported"))
                    for gs in row["response_sentences"]
                    if gs["start"] <= v.char_start < gs["end"]
                ),
                False,
            )
            gold.append(g)
            feats.append((v.attention, v.similarity, g))
        verdict_rows.append(pred)
        base_rows.append(base)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, preds in (("verdict", verdict_rows), ("overlap_baseline", base_rows)):
            path = Path(tmp) / f"{name}.jsonl"
            path.write_text("".join(json.dumps(p) + "\n" for p in preds))
            res = subprocess.run(
                [sys.executable, str(SCORER), str(data), str(path), "--json"],
                capture_output=True,
                text=True,
                check=True,
            )
            out[name] = json.loads(res.stdout)
    best_base = max(
        (unsupported_f1([o < t for o in overlaps], gold), t) for t in [i / 20 for i in range(1, 20)]
    )
    out["overlap_baseline_best_threshold"] = {
        "unsupported_f1": best_base[0],
        "threshold": best_base[1],
    }
    out["features"] = feats
    return out


def main() -> None:
    torch.set_num_threads(1)
    out = evaluate(Tracer.from_default())
    for name in ("verdict", "overlap_baseline"):
        keys = {
            k: v for k, v in out[name].items() if "unsupported" in k or k == "sentence_f1_micro"
        }
        print(name, json.dumps(keys))
    print("overlap baseline at its best threshold:", out["overlap_baseline_best_threshold"])
    if "--json" in sys.argv:
        Path(sys.argv[sys.argv.index("--json") + 1]).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
