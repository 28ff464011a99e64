"""Replay cached forced rows through ``Tracer.assemble_forced`` under mapping variants; score them.

Each variant is a comma-separated item of ``--variants``: ``key=value`` pairs joined by ``+`` over
``MappingConfig`` fields (``token_rows``, ``prompt_reference``, ``bias_correction``, ``rule``,
``exclude_first_positions``); the empty item is the default config. ``ref=N`` uses the last N
reference rows as the prompt reference instead. Examples:

    ""                                                    the default (reading rows, header reference)
    token_rows=producing+prompt_reference=after_sources   the previous mapping
    bias_correction=running+token_rows=producing          one cell of the old correction x row grid

Default mode: the generated responses (``gen``) are scored with ``omnitrace_core.evaluation.metrics``
(the reference ``score.py``'s metrics, checked against it to 1e-9) over the cached dataset rows:
sentence F1 / P / R, answer F1, option consistency, F1 per task and per sentence kind. ``--dump
DIR`` writes each variant's predictions (``omnitrace score DATA FILE`` scores them again).

``--cf``: the counterfactual option check on a ``cache_rows.py --cf`` cache. For each response's
first sentence naming an option letter: is the option with the most ``source_mass`` the one named
(``T1`` / ``T2`` / ``T3`` / ``gen``), is the first cited option the one named (``-cit``), and
per template and letter (``T1/A``) and per letter over T1 and T2 (``*/A``).

``--mass vote-weighted``: ``source_mass`` weighted like the curation votes (POS weight x
confidence^gamma) instead of by POS weight alone. This was tried and not adopted.

usage (from the repo root, after cache_rows.py):
    PYTHONPATH=core:. python benchmarks/mcq_option/evalgrid.py --variants ",token_rows=producing"
    PYTHONPATH=core:. python benchmarks/mcq_option/evalgrid.py --cf \\
        --variants ",token_rows=producing+prompt_reference=after_sources,bias_correction=running"
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from cache_rows import DEFAULT_CACHE, Record, Row, load_cache, load_tracer, mapping_variant, read_jsonl

from omnitrace_core import Tracer, TracerConfig
from omnitrace_core.assembly import SentenceAssembler
from omnitrace_core.curation import pos_weight
from omnitrace_core.evaluation.metrics import option_named, score
from omnitrace_core.sources import PromptLayout, Source, validate_sources


def _vote_weighted_mass(self: SentenceAssembler, toks: list[Any]) -> dict[str, float]:
    """``SentenceAssembler._source_mass`` with each token weighted like its curation vote."""
    totals: dict[str, float] = {}
    weight_sum = 0.0
    for t in toks:
        w = pos_weight(t.pos or "X", self.curation) * (t.mapping.confidence**self.curation.gamma)
        if w <= 0 or not any(t.mapping.shares):
            continue
        weight_sum += w
        for unit, share in zip(self.units, t.mapping.shares, strict=True):
            totals[unit.source_id] = totals.get(unit.source_id, 0.0) + w * share
    return {k: v / weight_sum for k, v in totals.items()} if weight_sum > 0 else {}


@contextlib.contextmanager
def source_mass(kind: str) -> Iterator[None]:
    if kind == "pos":
        yield
        return
    with mock.patch.object(SentenceAssembler, "_source_mass", _vote_weighted_mass):
        yield


class Replay:
    """Predictions of cached responses under a config (prompt layouts built once per row)."""

    def __init__(self, tracer: Tracer, rows: dict[str, Row]) -> None:
        self.tracer = tracer
        self.rows = rows
        self.layouts: dict[str, tuple[list[Source], PromptLayout]] = {}

    def predict(self, rec: Record, cfg: TracerConfig, tail: int | None) -> dict[str, Any]:
        forced = rec["forced"]
        if forced is None:
            return {"id": rec["id"], "text": "", "sentences": []}
        if rec["id"] not in self.layouts:
            row = self.rows[rec["id"]]
            srcs = validate_sources(row["sources"])
            self.layouts[rec["id"]] = srcs, self.tracer.layout(srcs, row["question"])
        srcs, layout = self.layouts[rec["id"]]
        if tail is not None:  # the last `tail` reference rows, whatever cfg.prompt_reference says
            forced = dataclasses.replace(
                forced, reference_rows=forced.reference_rows[-tail:], reference_at=None
            )
        return self.tracer.assemble_forced(srcs, layout, forced, cfg).to_prediction(rec["id"])


def parse_variant(spec: str) -> tuple[TracerConfig, int | None]:
    """``(config, reference tail)`` of one ``--variants`` item."""
    tail = None
    rest = []
    for kv in spec.split("+"):
        if kv.startswith("ref="):
            tail = int(kv[4:])
        elif kv:
            rest.append(kv)
    return mapping_variant("+".join(rest)), tail


def counterfactual(replay: Replay, records: list[Record], cfg: TracerConfig, tail: int | None) -> str:
    hits: dict[str, list[bool]] = collections.defaultdict(list)
    for rec in records:
        row = replay.rows[rec["id"]]
        if row.get("task") != "mcq":
            continue
        for s in replay.predict(rec, cfg, tail)["sentences"]:
            named = option_named(s["text"])
            if named is None:
                continue
            mass = s.get("source_mass") or {}
            opts = {o: mass.get(o, 0.0) for o in row["options"]}
            top = max(opts, key=lambda o: opts[o]) if any(opts.values()) else None
            cited = [c["source_id"] for c in s["citations"] if c["source_id"].startswith("option")]
            kind = rec["name"].split("-")[0]
            hits[kind].append(top == named)
            hits[kind + "-cit"].append(bool(cited) and cited[0] == named)
            if kind != "gen":
                hits[f"{kind}/{rec['name'][-1]}"].append(top == named)
                if kind in ("T1", "T2"):
                    hits[f"*/{rec['name'][-1]}"].append(top == named)
            break
    return " ".join(f"{k}:{sum(v) / len(v):.2f}" for k, v in sorted(hits.items()))


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def scored(
    replay: Replay, records: list[Record], cfg: TracerConfig, tail: int | None
) -> tuple[str, dict[str, Any]]:
    preds = {rec["id"]: replay.predict(rec, cfg, tail) for rec in records if rec["name"] == "gen"}
    rows = [r for r in replay.rows.values() if r["id"] in preds]
    m = score(rows, preds)
    out = (
        f"all F1 {m['sentence_f1_micro']:.3f} P {m['sentence_precision']:.3f} R {m['sentence_recall']:.3f}"
        f" ansF1 {_num(m['answer_f1'])} opt {_num(m['option_consistency'])} ({m['option_rows']} rows)"
    )
    for task in sorted({r["task"] for r in rows}):
        out += f" | {task} {score([r for r in rows if r['task'] == task], preds)['sentence_f1_micro']:.3f}"
    kinds = {k: v for k, v in m.items() if k.startswith("sentence_f1_") and k[12:] not in ("micro", "macro")}
    if kinds:
        out += " | " + " ".join(f"{k[12:]} {v:.3f}" for k, v in kinds.items())
    return out, preds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="rows cached by cache_rows.py")
    ap.add_argument(
        "--data", type=Path, default=None, help="dataset (default: the one the cache was made from)"
    )
    ap.add_argument("--variants", default="", help="comma-separated mapping variants (see above)")
    ap.add_argument("--cf", action="store_true", help="counterfactual option check (cache_rows.py --cf)")
    ap.add_argument("--mass", choices=("pos", "vote-weighted"), default="pos", help="source_mass weighting")
    ap.add_argument("--dump", type=Path, default=None, help="write predictions-<variant>.jsonl here")
    args = ap.parse_args()

    torch.set_num_threads(1)
    cache = load_cache(args.cache)
    rows = {r["id"]: r for r in read_jsonl(args.data or cache["dataset"])}
    replay = Replay(load_tracer(cache["model"], cache["signal"]), rows)
    with source_mass(args.mass):
        for spec in args.variants.split(","):
            cfg, tail = parse_variant(spec)
            label = f"{spec or 'default':45s}"
            if args.cf:
                print(label, counterfactual(replay, cache["records"], cfg, tail), flush=True)
                continue
            line, preds = scored(replay, cache["records"], cfg, tail)
            print(label, line, flush=True)
            if args.dump:
                args.dump.mkdir(parents=True, exist_ok=True)
                name = spec.replace("=", "-").replace("+", "_") or "default"
                with open(args.dump / f"predictions-{name}.jsonl", "w", encoding="utf-8") as fh:
                    for p in preds.values():
                        fh.write(json.dumps(p) + "\n")


if __name__ == "__main__":
    main()
