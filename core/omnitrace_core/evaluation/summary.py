"""Tables of ``omnitrace score`` / ``omnitrace eval``: metrics per task, cost and faithfulness per method.

Kept apart from the runner so the report format can change without touching how methods run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from omnitrace_core.evaluation.metrics import Metrics

# (key, column title) of the markdown / terminal tables, in order; empty columns are dropped.
COLUMNS = (
    ("rows", "rows"),
    ("labelled_sentences", "sentences"),
    ("sentence_f1_micro", "sent F1 micro"),
    ("sentence_f1_macro", "sent F1 macro"),
    ("sentence_precision", "sent P"),
    ("sentence_recall", "sent R"),
    ("answer_f1", "answer F1"),
    ("option_consistency", "option cons."),
    ("unsupported_precision", "unsup P"),
    ("unsupported_recall", "unsup R"),
    ("unsupported_f1", "unsup F1"),
    ("time_f1_micro", "time F1 micro"),
    ("time_f1_macro", "time F1 macro"),
    ("missing_predictions", "missing"),
)
COST_KEYS = ("forward_passes", "backward_passes", "seconds")


def fmt(value: Any) -> str:
    """A table cell: 3 decimals, ``-`` for missing."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def columns(metrics: Sequence[Metrics]) -> list[tuple[str, str]]:
    """The columns to show for these metrics (per-kind F1 after the sentence columns)."""
    kinds = sorted(
        {k for m in metrics for k in m if k.startswith("sentence_f1_")}
        - {"sentence_f1_micro", "sentence_f1_macro"}
    )
    cols = [*COLUMNS[:6], *((k, k.removeprefix("sentence_f1_") + " F1") for k in kinds), *COLUMNS[6:]]
    return [(k, title) for k, title in cols if any(m.get(k) is not None for m in metrics)]


def cost_summary(predictions: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum the ``cost`` of prediction rows; per-sentence means over the rows that carry one.

    Rows without a cost (e.g. from ``--pred``) are counted under ``rows_without_cost``. The
    decoding that produced generated texts (``cost.generation``) is summed separately.
    """
    totals = {k: 0.0 for k in COST_KEYS}
    sentences = rows = uncosted = 0
    generation = {"rows": 0, "forward_passes": 0, "seconds": 0.0}
    for p in predictions:
        c = p.get("cost")
        if not isinstance(c, Mapping):
            uncosted += 1
            continue
        rows += 1
        sentences += len(p.get("sentences", []))
        for k in COST_KEYS:
            totals[k] += float(c.get(k, 0) or 0)
        g = c.get("generation")
        if isinstance(g, Mapping):
            generation["rows"] += 1
            generation["forward_passes"] += int(g.get("forward_passes", 0))
            generation["seconds"] += float(g.get("seconds", 0.0))
    out: dict[str, Any] = {
        "forward_passes": int(totals["forward_passes"]),
        "backward_passes": int(totals["backward_passes"]),
        "seconds": totals["seconds"],
        "sentences": sentences,
        "forward_passes_per_sentence": totals["forward_passes"] / sentences if sentences else None,
        "seconds_per_sentence": totals["seconds"] / sentences if sentences else None,
        "rows": rows,
        "rows_without_cost": uncosted,
    }
    if generation["rows"]:
        out["generation"] = generation
    return out


def markdown_table(
    by_method: Mapping[str, Mapping[str, Metrics]],
    heading: str = "##",
    costs: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """A markdown table per task (``all`` first): one line per method; cost columns on ``all``."""
    tasks: list[str] = []
    for per_task in by_method.values():
        tasks += [t for t in per_task if t not in tasks]
    out = []
    for task in tasks:
        methods = [(name, per_task[task]) for name, per_task in by_method.items() if task in per_task]
        cols = columns([m for _, m in methods])
        with_cost = bool(costs) and task == "all"
        extra = ["fwd/sent", "bwd/sent", "s/sent"] if with_cost else []
        out.append(f"{heading} {task}\n")
        out.append("| method | " + " | ".join([*(title for _, title in cols), *extra]) + " |")
        out.append("| --- | " + " | ".join("---:" for _ in [*cols, *extra]) + " |")
        for name, m in methods:
            cells = [fmt(m.get(k)) for k, _ in cols]
            if with_cost:
                assert costs is not None
                cells += _cost_cells(costs.get(name))
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _cost_cells(c: Mapping[str, Any] | None) -> list[str]:
    if not c or not c.get("sentences"):
        return ["-", "-", "-"]
    n = c["sentences"]
    return [f"{c['forward_passes'] / n:.2f}", f"{c['backward_passes'] / n:.2f}", f"{c['seconds'] / n:.3f}"]


def cost_table(costs: Mapping[str, Mapping[str, Any]], heading: str = "##") -> str:
    """Markdown: each method's model passes and seconds, in total and per sentence."""
    lines = [
        f"{heading} cost\n",
        "Model passes to attribute the given texts (baselines: none; `embedding` runs MiniLM). "
        "`omnitrace` on generated rows attributes while decoding: no pass of its own (the "
        "decoding is in `generation` of metrics.json). Shared-pass ablations are costed as if "
        "run alone.\n",
        "| method | rows | sentences | forward | backward | seconds | fwd/sent | s/sent |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, c in costs.items():
        lines.append(
            f"| {name} | {c['rows']} | {c['sentences']} | {c['forward_passes']} | {c['backward_passes']} | "
            f"{c['seconds']:.1f} | {fmt(c['forward_passes_per_sentence'])} | "
            f"{fmt(c['seconds_per_sentence'])} |"
        )
    return "\n".join(lines) + "\n"


def faithfulness_table(faith: Mapping[str, Mapping[str, Any]], heading: str = "##") -> str:
    """Markdown: mean log-prob drop when removing each method's top-1 / top-3 sources."""
    lines = [
        f"{heading} faithfulness\n",
        "Mean drop in a sentence's log-probability when the method's top-k sources leave the prompt "
        "(higher = the model relied on what it cites); `random` removes k random sources.\n",
        "| method | sentences | abstained | logp drop k=1 | logp drop k=3 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, f in faith.items():
        lines.append(
            f"| {name} | {f['sentences']} | {f['abstained']} | {fmt(f['logp_drop_k1'])} | "
            f"{fmt(f['logp_drop_k3'])} |"
        )
    return "\n".join(lines) + "\n"


def print_tables(by_method: Mapping[str, Mapping[str, Metrics]], console: Console) -> None:
    """One terminal table per method: a line per metric, a column per task."""
    for name, per_task in by_method.items():
        tasks = list(per_task)
        table = Table(title=name)
        table.add_column("metric")
        for task in tasks:
            table.add_column(task, justify="right")
        for key, title in columns(list(per_task.values())):
            table.add_row(title, *(fmt(per_task[t].get(key)) for t in tasks))
        console.print(table)


SUMMARY = (
    ("sentence_f1_micro", "sent F1"),
    ("sentence_precision", "P"),
    ("sentence_recall", "R"),
    ("answer_f1", "answer F1"),
    ("option_consistency", "option"),
    ("unsupported_f1", "unsup F1"),
)


def print_summary(
    by_method: Mapping[str, Mapping[str, Metrics]],
    costs: Mapping[str, Mapping[str, Any]],
    console: Console,
) -> None:
    """One terminal table over all rows: a line per method, its main metrics and its cost."""
    metrics = [per_task["all"] for per_task in by_method.values() if "all" in per_task]
    cols = [(k, t) for k, t in SUMMARY if any(m.get(k) is not None for m in metrics)]
    table = Table(title="all rows (per task: metrics.md)")
    table.add_column("method")
    for _, title in [*cols, ("", "fwd/sent"), ("", "s/sent")]:
        table.add_column(title, justify="right")
    for name, per_task in by_method.items():
        m = per_task.get("all", {})
        c = costs.get(name) or {}
        table.add_row(
            name,
            *(fmt(m.get(k)) for k, _ in cols),
            fmt(c.get("forward_passes_per_sentence")),
            fmt(c.get("seconds_per_sentence")),
        )
    console.print(table)
