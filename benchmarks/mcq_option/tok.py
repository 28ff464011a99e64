"""Letter-token check: does the producing row or the reading row of a letter pick the named option?

Over the counterfactual answers of a ``cache_rows.py --cf`` cache ("The answer is: Option L." and
"The answer is L."; T3 answers and generated responses are skipped), take the last token that is
the letter L and ask, for its producing row (``pred``: the query that predicted it) and its
reading row (``read``: the letter itself as a query, one step later), whether the argmax over the
option units is option L. Each row is scored raw and under three corrections: divided by the
prompt reference share (``/prompt``), by the mean share of the tokens before the letter
(``/prevtokens``, a running reference) and by their geometric mean (``/both``). Printed per
(row, correction) and per letter. The prompt reference is every position after the sources by
default (as when the docs' numbers were taken); ``--reference header`` uses the assistant header.

``--show ID:NAME,...`` prints single responses token by token instead (the unit spans, the prompt
reference shares, each token's producing-row raw shares and source fraction, and its mapped shares
under each ``--variants`` mapping setting).

usage (from the repo root, after cache_rows.py --cf):
    PYTHONPATH=core:. python benchmarks/mcq_option/tok.py [--cache PKL] [--reference header]
    PYTHONPATH=core:. python benchmarks/mcq_option/tok.py --show dev-mcq-3:gen,dev-mcq-3:T1-D \\
        --variants token_rows=producing+prompt_reference=after_sources,
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import torch
from cache_rows import (
    DEFAULT_CACHE,
    Row,
    RowCache,
    all_rows,
    load_cache,
    load_tracer,
    mapping_variant,
    prompt_reference,
    read_jsonl,
)

from omnitrace_core import Tracer
from omnitrace_core.mapping import TokenMapper, UnitIndex, shares_of
from omnitrace_core.sources import validate_sources


def letter_rows(
    tracer: Tracer, cache: RowCache, rows: dict[str, Row], reference: str
) -> dict[tuple[str, ...], list[bool]]:
    hits: dict[tuple[str, ...], list[bool]] = collections.defaultdict(list)
    for rec in cache["records"]:
        forced = rec["forced"]
        if forced is None or rec["name"] == "gen" or rec["name"].startswith("T3"):
            continue
        row = rows[rec["id"]]
        letter = rec["name"][-1]
        layout = tracer.layout(validate_sources(row["sources"]), row["question"])
        index = UnitIndex(layout.units, 1)
        names = [u.source_id for u in layout.units]
        option_units = [names.index(o) for o in row["options"]]
        ref = prompt_reference(index, forced, layout, reference)
        assert ref is not None, rec["id"]
        tokens = [tracer.tokenizer.decode([t]) for t in forced.token_ids]
        k = max(i for i, t in enumerate(tokens) if t.strip() == letter)
        shares = [shares_of(index.mass(r)) for r in all_rows(forced)]
        before = torch.stack(shares[:k]).mean(0)
        want = row["options"].index("option" + letter)
        for row_name, at in (("pred", k), ("read", k + 1)):
            s = shares[at]
            for corr, value in (
                ("raw", s),
                ("/prompt", s / ref),
                ("/prevtokens", s / before),
                ("/both", s / torch.sqrt(ref * before)),
            ):
                hit = int(torch.argmax(value[option_units])) == want
                hits[(row_name, corr)].append(hit)
                hits[(row_name, corr, letter)].append(hit)
    return hits


def show(
    tracer: Tracer,
    cache: RowCache,
    rows: dict[str, Row],
    wanted: list[str],
    variants: list[str],
    max_tokens: int,
) -> None:
    for rec in cache["records"]:
        forced = rec["forced"]
        if f"{rec['id']}:{rec['name']}" not in wanted or forced is None:
            continue
        row = rows[rec["id"]]
        layout = tracer.layout(validate_sources(row["sources"]), row["question"])
        index = UnitIndex(layout.units, 1)
        names = [u.source_id.replace("option", "opt") for u in layout.units]
        print("====", rec["id"], rec["name"], repr(forced.response))
        for u in layout.units:
            print(
                f"  unit {u.source_id:8s} tokens {u.token_start}-{u.token_end} ({u.token_end - u.token_start})"
            )
        print("  prompt length", len(layout.input_ids), "header positions", len(layout.header_positions))
        for which in ("after_sources", "header"):
            ref = prompt_reference(index, forced, layout, which)
            if ref is not None:
                print(
                    f"  reference {which:13s}",
                    " ".join(f"{n}:{x:.3f}" for n, x in zip(names, ref.tolist(), strict=True)),
                )
        rows_ = all_rows(forced)
        print("  producing rows, raw:")
        for k, tok in enumerate(forced.token_ids[:max_tokens]):
            mass = index.mass(rows_[k])
            frac = float(mass.sum()) / float(rows_[k].sum())
            share = shares_of(mass).tolist()
            print(
                f"   {tracer.tokenizer.decode([tok])!r:12} srcfrac={frac:.2f}",
                " ".join(f"{n}:{x:.3f}" for n, x in zip(names, share, strict=True)),
            )
        for spec in variants:
            cfg = mapping_variant(spec)
            ref = prompt_reference(index, forced, layout, cfg.mapping.prompt_reference)
            mapper = TokenMapper(index, cfg.mapping, ref)
            print(f"  -- mapped, {spec or 'default'}")
            for k, tok in enumerate(forced.token_ids):
                m = mapper.map(forced.rows[k], forced.reading_row(k))
                if k >= max_tokens:
                    continue  # map every token anyway: the running reference needs them
                print(
                    f"   {tracer.tokenizer.decode([tok])!r:12}",
                    " ".join(f"{n}:{x:.2f}" for n, x in zip(names, m.shares, strict=True)),
                    "raw",
                    " ".join(f"{x:.2f}" for x in m.raw_shares),
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="rows cached by cache_rows.py --cf")
    ap.add_argument(
        "--data", type=Path, default=None, help="dataset (default: the one the cache was made from)"
    )
    ap.add_argument("--reference", default="after_sources", help="after_sources, header or tailN")
    ap.add_argument("--show", default=None, help="ID:NAME,... responses to print token by token")
    ap.add_argument(
        "--variants",
        default="",
        help="mapping settings for --show, comma-separated key=value+... (empty: default)",
    )
    ap.add_argument("--max-tokens", type=int, default=16, help="tokens printed per response with --show")
    args = ap.parse_args()

    torch.set_num_threads(1)
    cache = load_cache(args.cache)
    rows = {r["id"]: r for r in read_jsonl(args.data or cache["dataset"])}
    tracer = load_tracer(cache["model"], cache["signal"])
    if args.show:
        show(tracer, cache, rows, args.show.split(","), args.variants.split(","), args.max_tokens)
        return
    hits = letter_rows(tracer, cache, rows, args.reference)
    if not hits:
        raise SystemExit(f"{args.cache}: no counterfactual answers (cache them with cache_rows.py --cf)")
    for key, v in sorted(hits.items(), key=str):
        print(key, f"{sum(v) / len(v):.2f}", len(v))


if __name__ == "__main__":
    main()
