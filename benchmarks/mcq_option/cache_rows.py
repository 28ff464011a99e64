"""Cache teacher-forced attention rows of dataset responses, for the other MCQ option probes.

One teacher-forced pass per response (``Tracer.forced_rows``) keeps n+1 rows per response: the n
producing rows (row k is the query that predicted token k) plus the last token's own reading row,
and the prompt's reference rows with their positions. The other probes replay these rows under
any mapping setting without running the model again.

Responses: a row's own ``response`` (teacher-forced rows), else the text of ``--responses`` (by
default the stored decode-time predictions of ``omnitrace eval``). With ``--cf``, every MCQ row
also gets counterfactual answers naming each letter L:

    T1-L  "The answer is: Option L."
    T2-L  "The answer is L."
    T3-L  "The answer is (L) <option text>."

The rows are AttMean by default (the signal the findings in docs/evaluation.md rest on), whatever
signal the model's calibration would pick. ``--model`` caches another packaged model's rows (the
Qwen check in the docs); the other probes load the model named in the cache.

usage (from the repo root):
    PYTHONPATH=core:. python benchmarks/mcq_option/cache_rows.py --cf            # MCQ rows of dev.jsonl
    PYTHONPATH=core:. python benchmarks/mcq_option/cache_rows.py --tasks all --out OUT.pkl
    PYTHONPATH=core:. python benchmarks/mcq_option/cache_rows.py --cf --model qwen2.5-0.5b --limit 12 \\
        --out benchmarks/results/mcq-option/rows-qwen2.5-0.5b.pkl
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from pathlib import Path
from typing import Any, TypedDict

import torch

from omnitrace_core import Tracer, TracerConfig
from omnitrace_core.config import MappingConfig
from omnitrace_core.mapping import UnitIndex, reference_share
from omnitrace_core.models import DEFAULT_MODEL
from omnitrace_core.sources import PromptLayout, validate_sources
from omnitrace_core.tracer import ForcedRows

ROOT = Path(__file__).resolve().parents[2]
DEV = ROOT.parent / "shared" / "bench" / "dev.jsonl"
RESULTS = ROOT / "benchmarks" / "results" / "mcq-option"
DEFAULT_CACHE = RESULTS / "rows.pkl"  # *.pkl there is gitignored
STORED_PREDICTIONS = ROOT / "benchmarks" / "results" / "eval-dev" / "predictions-omnitrace.jsonl"
TASKS = ("qa_single", "qa_multi", "summary", "mcq", "teacher_forced")

Row = dict[str, Any]


class Record(TypedDict):
    """One cached response: ``name`` is ``gen`` (the row's response) or ``T1-A`` ... ``T3-D``."""

    id: str
    name: str
    forced: ForcedRows | None  # None: the generated response was empty


class RowCache(TypedDict):
    model: str
    signal: str
    dataset: str
    records: list[Record]


def read_jsonl(path: str | Path) -> list[Row]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_cache(path: str | Path) -> RowCache:
    with open(path, "rb") as fh:
        cache: RowCache = pickle.load(fh)
    return cache


def load_tracer(model: str, signal: str = "attmean") -> Tracer:
    """The model with the base ``TracerConfig``; its packaged calibration only for ``learned``."""
    return Tracer.from_pretrained(model, calibration="auto" if signal == "learned" else None)


def mapping_variant(spec: str, base: TracerConfig | None = None) -> TracerConfig:
    """A config whose mapping differs from ``base`` as ``spec`` says: ``key=value+key=value``
    over :class:`MappingConfig` fields (``""``: ``base`` itself)."""
    base = base or TracerConfig()
    update = dict(kv.split("=", 1) for kv in spec.split("+") if kv)
    mapping = MappingConfig.model_validate({**base.mapping.model_dump(), **update})
    return base.model_copy(update={"mapping": mapping})


def all_rows(forced: ForcedRows) -> list[torch.Tensor]:
    """n+1 rows: ``[k]`` is token k's producing row, ``[k + 1]`` its reading row."""
    return [*forced.rows, *([forced.next_row] if forced.next_row is not None else [])]


def prompt_reference(
    index: UnitIndex, forced: ForcedRows, layout: PromptLayout, which: str
) -> torch.Tensor | None:
    """Mean unit share over a choice of the prompt's reference rows: ``after_sources`` (every
    position after the sources), ``header`` (the assistant header, as the tracer picks it) or
    ``tailN`` (the last N positions)."""
    rows = forced.reference_rows
    if which.startswith("tail"):
        rows = rows[-int(which[4:]) :]
    elif which == "header" and forced.reference_at is not None and layout.header_positions:
        wanted = set(layout.header_positions)
        rows = [r for r, p in zip(rows, forced.reference_at, strict=True) if p in wanted]
    elif which not in ("header", "after_sources"):
        raise ValueError(f"unknown reference {which!r}: after_sources, header or tailN")
    return reference_share(index, rows)


def parse_tasks(spec: str) -> tuple[str, ...]:
    return TASKS if spec == "all" else tuple(spec.split(","))


def counterfactuals(row: Row) -> list[tuple[str, str]]:
    """Forced answers naming each option letter (names ``T1-A`` ... ``T3-D``)."""
    texts = {s["id"]: s["text"] for s in row["sources"]}
    out = []
    for option in row["options"]:
        letter = option[-1]
        value = re.sub(r"^\([A-D]\)\s*", "", texts[option]).strip()
        out += [
            (f"T1-{letter}", f"The answer is: Option {letter}."),
            (f"T2-{letter}", f"The answer is {letter}."),
            (f"T3-{letter}", f"The answer is ({letter}) {value}."),
        ]
    return out


def cache_rows(
    tracer: Tracer,
    rows: list[Row],
    responses: dict[str, str],
    *,
    signal: str,
    cf: bool,
) -> list[Record]:
    sig = tracer.signal_for(signal)
    records: list[Record] = []
    for row in rows:
        generated = row.get("response") or responses.get(row["id"], "")
        if not generated.strip():
            records.append(Record(id=row["id"], name="gen", forced=None))
            print(row["id"], "empty response", flush=True)
            continue
        layout = tracer.layout(validate_sources(row["sources"]), row["question"])
        todo = [("gen", generated)]
        if cf and row.get("task") == "mcq":
            todo += counterfactuals(row)
        for name, text in todo:
            records.append(Record(id=row["id"], name=name, forced=tracer.forced_rows(layout, text, sig)))
        print(row["id"], len(todo), "responses", flush=True)
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEV, help="dataset (JSONL, shared format)")
    ap.add_argument("--tasks", default="mcq", help="comma-separated tasks, or 'all'")
    ap.add_argument("--cf", action="store_true", help="add counterfactual letter answers to MCQ rows")
    ap.add_argument(
        "--responses", type=Path, default=STORED_PREDICTIONS, help="predictions giving generated rows' text"
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="packaged model name or local folder")
    ap.add_argument("--signal", default="attmean")
    ap.add_argument("--limit", type=int, default=None, help="only the first N rows of the chosen tasks")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    tasks = parse_tasks(args.tasks)
    rows = [r for r in read_jsonl(args.data) if r.get("task") in tasks][: args.limit]
    responses = {p["id"]: p.get("text", "") for p in read_jsonl(args.responses)} if args.responses else {}
    tracer = load_tracer(args.model, args.signal)
    records = cache_rows(tracer, rows, responses, signal=args.signal, cf=args.cf)
    cache = RowCache(model=args.model, signal=args.signal, dataset=str(args.data), records=records)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "wb") as fh:
        pickle.dump(cache, fh)
    print(f"{len(records)} responses of {len(rows)} rows -> {args.out}")


if __name__ == "__main__":
    main()
