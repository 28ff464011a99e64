"""Reference bias: how each choice of prompt reference rows is biased by source position.

For every cached generated response (``gen``), the mean raw unit share over the response's
producing rows is compared with the unit shares of a prompt reference. Per reference, the
printed numbers are the mean centred log ratio log(response share / reference share) of the
first, middle and last source unit (negative: the reference overstates that unit, so the
correction divides it by too much) and the mean |log ratio| over units (how well the reference
fits the response tokens; lower is better).

References: ``all`` (every position after the sources: the old default ``after_sources``),
``header`` (the assistant header: the default now), ``tailN`` (the last N positions; the header
is the last 6 for SmolLM2) and ``skipq`` (the second half of the positions after the sources).

usage (from the repo root; the docs' numbers are over all dev rows and over the MCQ rows):
    PYTHONPATH=core:. python benchmarks/mcq_option/cache_rows.py --tasks all --out ALL.pkl
    PYTHONPATH=core:. python benchmarks/mcq_option/refbias.py --cache ALL.pkl [--tasks mcq]
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import torch
from cache_rows import DEFAULT_CACHE, load_cache, load_tracer, parse_tasks, prompt_reference, read_jsonl

from omnitrace_core.mapping import UnitIndex, reference_share, shares_of
from omnitrace_core.sources import validate_sources

REFERENCES = ("all", "header", "tail1", "tail3", "tail5", "tail6", "tail10", "skipq")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="rows cached by cache_rows.py")
    ap.add_argument(
        "--data", type=Path, default=None, help="dataset (default: the one the cache was made from)"
    )
    ap.add_argument("--tasks", default="all", help="comma-separated tasks, or 'all' (every cached row)")
    args = ap.parse_args()

    torch.set_num_threads(1)
    cache = load_cache(args.cache)
    rows = {r["id"]: r for r in read_jsonl(args.data or cache["dataset"])}
    tasks = parse_tasks(args.tasks)
    tracer = load_tracer(cache["model"], cache["signal"])
    # reference -> first / mid / last / abs -> one value per response
    stats: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    n = 0
    for rec in cache["records"]:
        forced = rec["forced"]
        row = rows[rec["id"]]
        if rec["name"] != "gen" or forced is None or row.get("task") not in tasks:
            continue
        n += 1
        layout = tracer.layout(validate_sources(row["sources"]), row["question"])
        index = UnitIndex(layout.units, 1)
        units = len(layout.units)
        response = torch.stack([shares_of(index.mass(r)) for r in forced.rows]).mean(0)
        half = forced.reference_rows[len(forced.reference_rows) // 2 :]
        for name in REFERENCES:
            if name == "all":
                ref = prompt_reference(index, forced, layout, "after_sources")
            elif name == "skipq":
                ref = reference_share(index, half)
            else:
                ref = prompt_reference(index, forced, layout, name)
            if ref is None:
                continue
            lr = torch.log(response.clamp_min(1e-6) / ref.clamp_min(1e-6))
            lr = lr - lr.mean()
            for u in range(units):
                where = "last" if u == units - 1 else ("first" if u == 0 else "mid")
                stats[name][where].append(float(lr[u]))
            stats[name]["abs"].append(float(lr.abs().mean()))
    print(f"{n} responses")
    for name, s in stats.items():
        print(f"{name:7s}", " ".join(f"{k}:{sum(v) / len(v):+.3f}" for k, v in s.items()))


if __name__ == "__main__":
    main()
