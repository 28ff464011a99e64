"""Attention x similarity re-ranking (``omnitrace_core.rerank``): tune on the dev set, report on the hard set.

Three steps, each resumable from files:

``attribute DATA --out ANSWERS.jsonl [--pred PRED.jsonl]``
    The default tracer's full result (``TracedAnswer``, with token records) for every row:
    a forced row's ``response``, or a generated row's text from ``--pred`` (made by
    ``omnitrace predict``), attributed teacher-forced (equal to decode-time attribution, see
    ``tests/core/test_capture.py``). ``answer.to_prediction`` equals ``omnitrace predict``'s row.
``tune --data DEV --answers DEV_ANSWERS --out TUNE.json``
    Grid over the re-ranker's knobs on the dev set; the best by sentence F1 micro over all
    dev rows (ties: more weight on attention, then fewer candidates), and the unsupported
    floor set from a false-alarm budget on the dev set (which labels no unsupported sentence).
``report --data HARD --answers HARD_ANSWERS --tune TUNE.json --baselines EVAL_DIR --out REPORT.json``
    Scores the default tracer, the tuned re-ranker (not retuned), a similarity-only variant,
    the baselines of ``omnitrace eval DATA --out EVAL_DIR`` and two position baselines, per
    kind, with ``omnitrace_core.evaluation.metrics``; prints a markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from omnitrace_core.evaluation.metrics import mentions, score
from omnitrace_core.rerank import (
    RerankConfig,
    combine,
    default_embedder,
    sentence_votes,
    similarities,
    unit_text,
)
from omnitrace_core.results import TracedAnswer

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("extractive", "paraphrase", "meaning_only", "multi_source")


def _rel(path: Path) -> str:
    return os.path.relpath(path.resolve(), ROOT)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------- attribute


def attribute(data: Path, out: Path, pred: Path | None, threads: int) -> None:
    from omnitrace_core import Tracer

    torch.set_num_threads(threads)
    rows = read_jsonl(data)
    texts = {p["id"]: p.get("text", "") for p in read_jsonl(pred)} if pred else {}
    done = {r["id"] for r in read_jsonl(out)} if out.exists() else set()
    tracer = Tracer.from_default()
    with out.open("a", encoding="utf-8") as f:
        for n, row in enumerate(rows, 1):
            if row["id"] in done:
                continue
            response = row.get("response") or texts.get(row["id"], "")
            if not response.strip():
                f.write(json.dumps({"id": row["id"], "answer": None}) + "\n")
                continue
            answer = tracer.attribute(row["sources"], row["question"], response)
            f.write(json.dumps({"id": row["id"], "answer": answer.model_dump(mode="json")}) + "\n")
            f.flush()
            print(f"{n}/{len(rows)} {row['id']}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- shared


@dataclass
class Prepared:
    """One row's answer with its per-sentence votes and similarities, computed once."""

    row_id: str
    answer: TracedAnswer | None
    unit_ids: list[str]
    unit_source: dict[str, str]
    votes: list[dict[str, float]]
    sims: list[list[float]]


def prepare(answers_path: Path, title_in_unit: bool = True) -> list[Prepared]:
    embedder = default_embedder()
    config = RerankConfig(title_in_unit=title_in_unit)
    out = []
    for item in read_jsonl(answers_path):
        if item["answer"] is None:
            out.append(Prepared(item["id"], None, [], {}, [], []))
            continue
        answer = TracedAnswer.model_validate(item["answer"])
        units = [u for s in answer.sources for u in s.units]
        titles = {s.id: s.title for s in answer.sources if s.title}
        sims = similarities(
            embedder, [s.text for s in answer.sentences], [unit_text(u, titles, config) for u in units]
        )
        out.append(
            Prepared(
                item["id"],
                answer,
                [u.unit_id for u in units],
                {u.unit_id: u.source_id for u in units},
                [sentence_votes(answer, s) for s in answer.sentences],
                sims.tolist(),
            )
        )
    return out


def predictions(prepared: Iterable[Prepared], config: RerankConfig | None) -> dict[str, dict[str, Any]]:
    """Prediction rows: the tracer's own (``config`` None) or re-ranked ones."""
    preds: dict[str, dict[str, Any]] = {}
    for p in prepared:
        if p.answer is None:
            preds[p.row_id] = {"id": p.row_id, "text": "", "sentences": []}
            continue
        row = p.answer.to_prediction(p.row_id)
        if config is not None:
            for k, sentence in enumerate(row["sentences"]):
                cited = combine(p.unit_ids, p.votes[k], p.sims[k], config)
                best: dict[str, float] = {}
                for unit, s in cited:
                    sid = p.unit_source[unit]
                    best[sid] = max(best.get(sid, 0.0), s)
                sentence["citations"] = [{"source_id": sid, "score": s} for sid, s in best.items()]
                sentence["grounded"] = bool(best)
        preds[p.row_id] = row
    return preds


# ---------------------------------------------------------------- tune

GRID: dict[str, Sequence[Any]] = {
    "top_m": (1, 2, 3, None),
    "attention_weight": (0.0, 0.5, 1.0, 2.0),
    "similarity_weight": (0.0, 1.0, 2.0, 4.0),
    "vote_smoothing": (0.0, 0.05, 0.2),
    "similarity_floor": (0.0, 0.2, 0.3),
    "min_relative": (0.5, 0.7, 0.9),
}
# Share of the dev set's labelled (all supported) sentences the unsupported rule may flag.
FALSE_ALARM_BUDGET = 0.02


def _tie_key(cfg: RerankConfig) -> tuple[float, ...]:
    """Among equal scores: more attention, fewer candidates, less similarity, no floor."""
    return (
        -cfg.attention_weight,
        cfg.top_m if cfg.top_m is not None else 99,
        cfg.similarity_weight,
        cfg.similarity_floor,
        -cfg.min_relative,
        cfg.vote_smoothing,
    )


def labelled_sentences(rows: Sequence[Mapping[str, Any]], prepared: Sequence[Prepared]) -> list[tuple[int, int]]:
    """(prepared index, sentence index) of every sentence the scorer labels with a non-empty gold:
    in forced rows, those lying mostly inside a gold sentence; in generated rows, those that
    mention a key of a non-option source."""
    by_id = {p.row_id: i for i, p in enumerate(prepared)}
    out = []
    for row in rows:
        if row["id"] not in by_id or prepared[by_id[row["id"]]].answer is None:
            continue
        answer = prepared[by_id[row["id"]]].answer
        assert answer is not None
        for k, s in enumerate(answer.sentences):
            if "response_sentences" in row:
                labelled = any(
                    g["gold_sources"]
                    and (inter := min(s.char_end, g["end"]) - max(s.char_start, g["start"])) > 0
                    and inter >= 0.5 * max(1, s.char_end - s.char_start)
                    for g in row["response_sentences"]
                )
            else:
                labelled = any(
                    mentions(s.text, key)
                    for src in row["sources"]
                    if not src["id"].startswith("option")
                    for key in src.get("keys", [])
                )
            if labelled:
                out.append((by_id[row["id"]], k))
    return out


def unsupported_rule(rows: Sequence[Mapping[str, Any]], prepared: Sequence[Prepared]) -> dict[str, Any]:
    """The unsupported knobs, set without unsupported labels (the dev set has none).

    Attention is "diffuse" when its top vote is below the dev median; the similarity floor is
    then the largest value that flags at most ``FALSE_ALARM_BUDGET`` of the dev's labelled
    (hence supported) sentences under the joint rule.
    """
    labelled = labelled_sentences(rows, prepared)
    points = [(max(prepared[i].sims[k]), max(prepared[i].votes[k].values(), default=0.0)) for i, k in labelled]
    tops = sorted(v for _, v in points)
    diffuse = round(tops[len(tops) // 2], 3)
    candidates = sorted(sim for sim, vote in points if vote < diffuse)
    allowed = int(FALSE_ALARM_BUDGET * len(points))
    floor = round(candidates[allowed], 3) if len(candidates) > allowed else 1.0
    flagged = sum(1 for sim, vote in points if sim < floor and vote < diffuse)
    return {"budget": FALSE_ALARM_BUDGET, "labelled_sentences": len(points), "diffuse_top_vote": diffuse,
            "unsupported_similarity": floor, "dev_flagged": flagged}


def tune(data: Path, answers: Path, out: Path) -> None:
    rows = read_jsonl(data)
    prepared = prepare(answers)
    forced_rows = [r for r in rows if "response_sentences" in r]
    results = []
    keys = list(GRID)
    for values in itertools.product(*(GRID[k] for k in keys)):
        cfg = RerankConfig(**dict(zip(keys, values, strict=True)))
        if cfg.attention_weight == 0 and cfg.similarity_weight == 0:
            continue
        preds = predictions(prepared, cfg)
        m = score(rows, preds)
        results.append((m["sentence_f1_micro"], score(forced_rows, preds)["sentence_f1_micro"], cfg))
    results.sort(key=lambda r: (-round(r[0], 9), _tie_key(r[2])))
    best_f1, best_forced, best = results[0]
    # Chosen after seeing the hard set (so not a clean held-out number, reported as such): the
    # best dev config among those without an absolute similarity threshold.
    scale_free = next(c for _, _, c in results if c.similarity_floor == 0.0)
    rule = unsupported_rule(rows, prepared)
    tuned = best.model_copy(update={"unsupported_similarity": rule["unsupported_similarity"],
                                    "diffuse_top_vote": rule["diffuse_top_vote"]})
    default_preds = predictions(prepared, None)
    report = {
        "grid": {k: list(v) for k, v in GRID.items()},
        "configs_tried": len(results),
        "selected": tuned.model_dump(mode="json"),
        "selected_without_unsupported_rule": best.model_dump(mode="json"),
        "post_hoc_scale_free": scale_free.model_dump(mode="json"),
        "dev": {
            "default": {"all": score(rows, default_preds)["sentence_f1_micro"],
                        "teacher_forced": score(forced_rows, default_preds)["sentence_f1_micro"]},
            "selected_without_unsupported_rule": {"all": best_f1, "teacher_forced": best_forced},
            "selected": {"all": score(rows, predictions(prepared, tuned))["sentence_f1_micro"],
                         "teacher_forced": score(forced_rows, predictions(prepared, tuned))["sentence_f1_micro"]},
        },
        "unsupported_rule": rule,
        "top10": [{"all": a, "teacher_forced": b, "config": c.model_dump(mode="json")} for a, b, c in results[:10]],
        "best_f1_configs": sum(1 for r in results if round(r[0], 9) == round(best_f1, 9)),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: report[k] for k in ("selected", "dev", "unsupported_rule", "best_f1_configs")}, indent=1))


# ---------------------------------------------------------------- report


def position_predictions(rows: Sequence[Mapping[str, Any]], which: str,
                         template: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Cite by position only: the ``first`` source, or the ``k``-th source for the k-th sentence."""
    preds = {}
    for row in rows:
        ids = [s["id"] for s in row["sources"]]
        base = template[row["id"]]
        sentences = []
        for k, s in enumerate(base["sentences"]):
            sid = ids[0] if which == "first" else ids[k % len(ids)]
            sentences.append({**{x: s[x] for x in ("text", "start", "end")},
                              "citations": [{"source_id": sid, "score": 1.0}], "grounded": True})
        preds[row["id"]] = {"id": row["id"], "text": base["text"], "sentences": sentences}
    return preds


def _word_match(row: Mapping[str, Any], prediction: Mapping[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from dev_ablation import word_match

    return word_match(dict(row), dict(prediction))


def _line(name: str, m: Mapping[str, Any]) -> list[Any]:
    return [name, m["sentence_f1_micro"], *(m.get(f"sentence_f1_{k}") for k in KINDS),
            m["unsupported_precision"], m["unsupported_recall"], m["unsupported_f1"]]


def report(data: Path, answers: Path, tune_file: Path, baselines: Path | None, out: Path,
           dev_data: Path | None, dev_answers: Path | None) -> None:
    rows = read_jsonl(data)
    prepared = prepare(answers)
    tuned = RerankConfig.model_validate(json.loads(tune_file.read_text())["selected"])
    tune_result = json.loads(tune_file.read_text())
    no_rule = {"unsupported_similarity": None}
    methods: dict[str, dict[str, dict[str, Any]]] = {
        "omnitrace AttMean (default)": predictions(prepared, None),
        "combined (attention x similarity, tuned on dev)": predictions(prepared, tuned),
        "ablation: combined, attention off": predictions(
            prepared, tuned.model_copy(update={"attention_weight": 0.0, "top_m": None})),
        "ablation: combined, no unsupported rule": predictions(prepared, tuned.model_copy(update=no_rule)),
        "ablation: combined, no similarity floor, no unsupported rule": predictions(
            prepared, tuned.model_copy(update={**no_rule, "similarity_floor": 0.0})),
    }
    if "post_hoc_scale_free" in tune_result:
        methods["post hoc: best dev config without absolute thresholds"] = predictions(
            prepared, RerankConfig.model_validate(tune_result["post_hoc_scale_free"]))
    if baselines is not None:
        for name in ("lexical", "embedding", "carry_forward", "random"):
            path = baselines / f"predictions-{name}.jsonl"
            if path.exists():
                methods[f"baseline {name}" + (" (BM25)" if name == "lexical" else "")] = {
                    p["id"]: p for p in read_jsonl(path)}
    template = methods["omnitrace AttMean (default)"]
    methods["baseline word-match (shared word count, benchmarks/dev_ablation.py)"] = {
        row["id"]: _word_match(row, template[row["id"]]) for row in rows}
    methods["position: first source"] = position_predictions(rows, "first", template)
    methods["position: k-th sentence -> k-th source"] = position_predictions(rows, "kth", template)
    metrics = {name: score(rows, preds) for name, preds in methods.items()}
    result: dict[str, Any] = {"data": _rel(data), "rerank_config": tuned.model_dump(mode="json"),
                              "metrics": metrics}
    if dev_data is not None and dev_answers is not None:
        dev_rows = [r for r in read_jsonl(dev_data) if "response_sentences" in r]
        dev_prep = [p for p in prepare(dev_answers) if p.row_id in {r["id"] for r in dev_rows}]
        result["dev_teacher_forced"] = {
            "default": score(dev_rows, predictions(dev_prep, None)),
            "combined": score(dev_rows, predictions(dev_prep, tuned)),
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    head = ["method", "F1 micro", *(f"{k} F1" for k in KINDS), "unsup P", "unsup R", "unsup F1"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, m in metrics.items():
        cells = [c if isinstance(c, str) else ("-" if c is None else f"{c:.3f}") for c in _line(name, m)]
        print("| " + " | ".join(cells) + " |")
    if "dev_teacher_forced" in result:
        d = result["dev_teacher_forced"]
        print(f"\ndev teacher_forced F1: default {d['default']['sentence_f1_micro']:.3f}, "
              f"combined {d['combined']['sentence_f1_micro']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("attribute")
    a.add_argument("data", type=Path)
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--pred", type=Path)
    a.add_argument("--threads", type=int, default=1)
    t = sub.add_parser("tune")
    t.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "bench" / "dev.jsonl")
    t.add_argument("--answers", type=Path, required=True)
    t.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "rerank_tune.json")
    r = sub.add_parser("report")
    r.add_argument("--data", type=Path, default=ROOT / "benchmarks" / "data" / "hard_dev.jsonl")
    r.add_argument("--answers", type=Path, required=True)
    r.add_argument("--tune", type=Path, default=ROOT / "benchmarks" / "results" / "rerank_tune.json")
    r.add_argument("--baselines", type=Path)
    r.add_argument("--dev-data", type=Path, default=ROOT.parent / "shared" / "bench" / "dev.jsonl")
    r.add_argument("--dev-answers", type=Path)
    r.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "hard_dev_report.json")
    args = ap.parse_args()
    if args.cmd == "attribute":
        attribute(args.data, args.out, args.pred, args.threads)
    elif args.cmd == "tune":
        tune(args.data, args.answers, args.out)
    else:
        report(args.data, args.answers, args.tune, args.baselines, args.out, args.dev_data, args.dev_answers)


if __name__ == "__main__":
    main()
