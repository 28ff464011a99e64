"""Reading ``omnitrace eval`` output folders and turning them into markdown tables and prose.

An eval folder holds ``metrics.json`` (per method: metrics per task, and optionally ``cost``
and ``faithfulness``) and ``predictions-<method>.jsonl``. Everything here is plain Python so
the tables can be built (and tested) without matplotlib or a browser.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnitrace_core.errors import OmniTraceError

OURS = "omnitrace"  # the method name ``omnitrace eval`` gives the attention predictions
FLOOR = "random"  # the chance baseline: reported as the floor, never as "the best baseline"

# (metric key, column title, direction): +1 higher is better, -1 lower is better, 0 not ranked.
# Per-kind F1 columns (``sentence_f1_<kind>``) are inserted after the recall column.
METRIC_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("labelled_sentences", "sentences", 0),
    ("sentence_f1_micro", "sent F1 micro", 1),
    ("sentence_f1_macro", "sent F1 macro", 1),
    ("sentence_precision", "sent P", 1),
    ("sentence_recall", "sent R", 1),
    ("answer_f1", "answer F1", 1),
    ("option_consistency", "option cons.", 1),
    ("unsupported_precision", "unsup P", 1),
    ("unsupported_recall", "unsup R", 1),
    ("unsupported_f1", "unsup F1", 1),
    ("time_f1_micro", "time F1 micro", 1),
    ("time_f1_macro", "time F1 macro", 1),
    ("region_hit_rate", "region hit rate", 1),
    ("region_gold_coverage", "region gold coverage", 1),
    ("missing_predictions", "missing", 0),
)
_KIND_INSERT_AFTER = "sentence_recall"
_NOT_KINDS = {"sentence_f1_micro", "sentence_f1_macro"}

COST_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("sentences", "sentences", 0),
    ("forward_passes_per_sentence", "forward passes / sentence", -1),
    ("seconds_per_sentence", "seconds / sentence", -1),
    ("forward_passes", "forward passes", 0),
    ("backward_passes", "backward passes", 0),
    ("seconds", "seconds", 0),
)
FAITHFULNESS_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("sentences", "sentences", 0),
    ("logp_drop_k1", "log-p drop, top-1 removed", 1),
    ("logp_drop_k3", "log-p drop, top-3 removed", 1),
)

# Below this many labelled sentences a single sentence moves F1 by 0.05 or more: say so.
SMALL_SAMPLE = 20
# Differences smaller than this are reported as ties (the tables show 3 decimals).
TIE = 0.005
# Baselines that match words or embeddings of the sentence against the sources.
WORD_MATCHERS = ("lexical", "embedding", "carry_forward")


class ReportInputError(OmniTraceError, ValueError):
    """An eval folder (or a file in it) is missing or unusable; the message names it."""


@dataclass
class MethodResult:
    """One method of one eval folder: its metrics per task and optional cost / faithfulness."""

    name: str
    metrics: dict[str, dict[str, Any]]
    predictions: Path | None = None
    failures: int = 0
    cost: dict[str, Any] | None = None
    faithfulness: dict[str, Any] | None = None


@dataclass
class EvalRun:
    """One ``omnitrace eval`` output folder, read back."""

    path: Path
    label: str
    dataset: str
    dataset_path: Path | None
    attention_predictions: str | None
    rows_read: int
    rows_evaluated: int
    methods: dict[str, MethodResult]
    # Faithfulness of methods that have no metrics (e.g. a "random" control computed only there).
    extra_faithfulness: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        """Every task any method was scored on, ``all`` first, then in first-seen order."""
        tasks: list[str] = []
        for m in self.methods.values():
            tasks += [t for t in m.metrics if t not in tasks]
        return sorted(tasks, key=lambda t: t != "all")

    @property
    def distinct_tasks(self) -> list[str]:
        """:attr:`tasks`, but just ``["all"]`` when a single task makes up every row (same numbers)."""
        tasks = self.tasks
        if len(tasks) == 2 and tasks[0] == "all" and all(
            m.metrics.get("all") == m.metrics.get(tasks[1]) for m in self.methods.values()
        ):
            return ["all"]
        return tasks

    @property
    def only_task(self) -> str | None:
        """The one task of every row, when there is only one."""
        tasks = self.tasks
        return tasks[1] if len(tasks) == 2 and tasks[0] == "all" else None

    def faithfulness(self) -> dict[str, dict[str, Any]]:
        """Faithfulness per method, including controls recorded outside ``methods``."""
        out = {n: m.faithfulness for n, m in self.methods.items() if m.faithfulness}
        for name, f in self.extra_faithfulness.items():
            out.setdefault(name, f)
        return out

    def costs(self) -> dict[str, dict[str, Any]]:
        """Cost per method that recorded one."""
        return {n: m.cost for n, m in self.methods.items() if m.cost}


def _resolve(recorded: str | None, near: Path) -> Path | None:
    """A path recorded in metrics.json: as written (relative to the cwd), else next to ``near``.

    ``omnitrace eval`` stores paths as typed on its command line, so a relative path only
    resolves from the directory it ran in; trying the eval folder's ancestors too lets the
    report run from elsewhere.
    """
    if not recorded:
        return None
    p = Path(recorded)
    if p.exists():
        return p
    if not p.is_absolute():
        for base in [near, *near.resolve().parents]:
            if (base / p).exists():
                return base / p
    return None


def _dict_or_none(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) and value else None


def label_for(path: Path) -> str:
    """A short name for an eval folder: ``eval-dev`` -> ``dev``."""
    name = path.resolve().name
    return name.removeprefix("eval-").removeprefix("eval_") or name


def load_eval(path: Path, label: str | None = None) -> EvalRun:
    """Read ``path/metrics.json`` as written by ``omnitrace eval``.

    Raises:
        ReportInputError: the folder or its metrics.json is missing, unreadable or has no methods.
    """
    metrics_path = path / "metrics.json"
    if not path.is_dir():
        raise ReportInputError(f"{path}: not a folder (expected an `omnitrace eval --out` folder)")
    try:
        report = json.loads(metrics_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ReportInputError(
            f"{metrics_path}: missing (run `omnitrace eval DATA --out {path}` first)"
        ) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportInputError(f"{metrics_path}: unreadable ({exc})") from exc
    raw_methods = report.get("methods") if isinstance(report, dict) else None
    if not isinstance(raw_methods, dict) or not raw_methods:
        raise ReportInputError(f"{metrics_path}: no 'methods' (not written by `omnitrace eval`?)")
    # cost / faithfulness may also be recorded at the top level, keyed by method name.
    top_cost = report.get("cost") if isinstance(report.get("cost"), dict) else {}
    top_faith = report.get("faithfulness") if isinstance(report.get("faithfulness"), dict) else {}
    methods: dict[str, MethodResult] = {}
    for name, m in raw_methods.items():
        if not isinstance(m, dict) or not isinstance(m.get("metrics"), dict):
            raise ReportInputError(f"{metrics_path}: method {name!r} has no 'metrics'")
        own = path / f"predictions-{name}.jsonl"
        methods[name] = MethodResult(
            name=name,
            metrics=m["metrics"],
            predictions=own if own.exists() else _resolve(m.get("predictions"), path),
            failures=len(m.get("failures") or []),
            cost=_dict_or_none(m.get("cost")) or _dict_or_none(top_cost.get(name)),
            faithfulness=_dict_or_none(m.get("faithfulness")) or _dict_or_none(top_faith.get(name)),
        )
    extra = {
        n: f for n, f in top_faith.items() if n not in methods and isinstance(f, dict) and f
    }
    return EvalRun(
        path=path,
        label=label or label_for(path),
        dataset=str(report.get("dataset", "")),
        dataset_path=_resolve(report.get("dataset"), path),
        attention_predictions=report.get("attention_predictions"),
        rows_read=int(report.get("rows_read") or 0),
        rows_evaluated=int(report.get("rows_evaluated") or 0),
        methods=methods,
        extra_faithfulness=extra,
    )


# ---------------------------------------------------------------- formatting


def number(value: Any) -> float | None:
    """A finite float, or None for anything that cannot be ranked (None, NaN, text)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    return None if math.isnan(v) or math.isinf(v) else v


def fmt(value: Any) -> str:
    """Table cell text: floats to 3 decimals (4 significant digits when small), '-' for absent."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and abs(value) < 0.01:
            return f"{value:.2g}"
        return f"{value:.3f}"
    return str(value)


def _best(values: Iterable[Any], direction: int) -> str | None:
    """The best value of a column as shown (formatted), or None when there is nothing to single out.

    Compared as displayed so that bold never marks two cells that look different as tied, or
    one of two cells that look the same as better.
    """
    nums = [v for v in map(number, values) if v is not None]
    if direction == 0 or len(nums) < 2 or len({fmt(v) for v in nums}) < 2:
        return None  # one value, or all tied
    return fmt(max(nums) if direction > 0 else min(nums))


def table(
    rows: Sequence[tuple[str, Mapping[str, Any]]],
    columns: Sequence[tuple[str, str, int]],
    first: str = "method",
) -> str:
    """A markdown table, one line per ``(name, values)``; the best value per column in bold.

    Columns no row has a value for are dropped; when every value of a column ties, nothing is
    bold (there is no best). ``missing`` is only shown when some row misses predictions.
    """
    cols = [
        (k, t, d)
        for k, t, d in columns
        if any(v.get(k) is not None for _, v in rows)
        and (k != "missing_predictions" or any(v.get(k) for _, v in rows))
    ]
    best = {k: _best((v.get(k) for _, v in rows), d) for k, _, d in cols}
    out = [
        f"| {first} | " + " | ".join(t for _, t, _ in cols) + " |",
        "| --- | " + " | ".join("---:" for _ in cols) + " |",
    ]
    for name, values in rows:
        cells = []
        for k, _, _ in cols:
            text = fmt(values.get(k))
            is_best = number(values.get(k)) is not None and text == best[k]
            cells.append(f"**{text}**" if is_best else text)
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def metric_columns(metrics: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, int]]:
    """The metric columns, with a ``<kind> F1`` column per ``sentence_f1_<kind>`` key present."""
    kinds = sorted({k for m in metrics for k in m if k.startswith("sentence_f1_")} - _NOT_KINDS)
    cols: list[tuple[str, str, int]] = []
    for col in METRIC_COLUMNS:
        cols.append(col)
        if col[0] == _KIND_INSERT_AFTER:
            cols += [(k, k.removeprefix("sentence_f1_") + " F1", 1) for k in kinds]
    return cols


def task_tables(run: EvalRun, heading: str = "####") -> str:
    """A table per task (``all`` first): one line per method, best value per column in bold."""
    out = []
    tasks = run.distinct_tasks  # one task only: its table would repeat "all"
    only = run.only_task
    for task in tasks:
        rows = [(n, m.metrics[task]) for n, m in run.methods.items() if task in m.metrics]
        n_rows = max((int(v.get("rows") or 0) for _, v in rows), default=0)
        every = f", every row {only}" if task == "all" and tasks == ["all"] and only else ""
        out.append(f"{heading} {task} ({n_rows} rows{every})\n")
        out.append(table(rows, metric_columns(v for _, v in rows)))
        out.append("")
    return "\n".join(out)


def cost_table(run: EvalRun) -> str | None:
    """The cost table, or None when no method recorded a cost."""
    costs = run.costs()
    return table(list(costs.items()), COST_COLUMNS) if costs else None


def faithfulness_table(run: EvalRun) -> str | None:
    """The faithfulness table, or None when no method recorded one.

    Each method's mean covers its own sentences; the paired columns (when recorded) compare it
    with the reference method on the sentences both named sources for, with a 95% interval:
    a difference whose interval holds 0 is a tie.
    """
    faith = run.faithfulness()
    if not faith:
        return None
    rows: list[tuple[str, Mapping[str, Any]]] = []
    columns = list(FAITHFULNESS_COLUMNS)
    for k in (1, 3):
        refs = {p["reference"] for f in faith.values() if isinstance(p := f.get(f"paired_k{k}"), dict)}
        if len(refs) == 1:
            label = f"top-{k} minus {refs.pop()}, paired [95% CI] (sentences)"
            columns.append((f"paired_text_k{k}", label, 0))
    for name, f in faith.items():
        values = dict(f)
        for k in (1, 3):
            p = f.get(f"paired_k{k}")
            if isinstance(p, dict) and number(p.get("diff")) is not None and len(p.get("ci95") or ()) == 2:
                lo, hi = (number(x) for x in p["ci95"])
                if lo is not None and hi is not None:
                    text = f"{p['diff']:+.2f} [{lo:+.2f}, {hi:+.2f}] ({p.get('sentences')})"
                    values[f"paired_text_k{k}"] = text
        rows.append((name, values))
    return table(rows, columns)


# ---------------------------------------------------------------- prose from the numbers


def _f1(run: EvalRun, method: str, task: str, key: str = "sentence_f1_micro") -> float | None:
    m = run.methods.get(method)
    return number(m.metrics.get(task, {}).get(key)) if m else None


def _best_baseline(run: EvalRun, task: str, key: str, ours: str) -> tuple[str, float] | None:
    scored = [
        (n, v)
        for n in run.methods
        if n not in (ours, FLOOR) and (v := _f1(run, n, task, key)) is not None
    ]
    return max(scored, key=lambda x: x[1]) if scored else None


def _sentences(run: EvalRun, task: str) -> int:
    return max((int(m.metrics.get(task, {}).get("labelled_sentences") or 0) for m in run.methods.values()),
               default=0)


def _compare(run: EvalRun, task: str, key: str, ours: str) -> tuple[str, float, float] | None:
    """(best baseline, its value, ours) for one task and metric, when both exist."""
    best = _best_baseline(run, task, key, ours)
    mine = _f1(run, ours, task, key)
    return (best[0], best[1], mine) if best and mine is not None else None


def _verdict(base: float, mine: float) -> int:
    return 0 if abs(base - mine) < TIE else (1 if base > mine else -1)


def kind_keys(run: EvalRun) -> list[str]:
    """The ``sentence_f1_<kind>`` keys scored on all rows, sorted."""
    return sorted(
        {k for m in run.methods.values() for k in m.metrics.get("all", {}) if k.startswith("sentence_f1_")}
        - _NOT_KINDS
    )


def _baselines_only(run: EvalRun, ours: str) -> list[str]:
    """Without ``ours``: the best baseline overall, and per kind the best and the worst non-chance one."""
    best = _best_baseline(run, "all", "sentence_f1_micro", ours)
    if best is None:
        return []
    out = [f"No `{ours}` predictions in this run; best baseline overall: {best[0]} "
           f"({fmt(best[1])} sentence F1 micro)."]
    parts = []
    for key in kind_keys(run):
        scored = sorted(
            ((v, n) for n in run.methods if n != FLOOR and (v := _f1(run, n, "all", key)) is not None),
            reverse=True,
        )
        if scored:
            top, low = scored[0], scored[-1]
            kind = key.removeprefix("sentence_f1_")
            if len(scored) > 1 and fmt(top[0]) == fmt(low[0]):
                parts.append(f"{kind}: all {fmt(top[0])}")
            else:
                parts.append(f"{kind}: best {top[1]} {fmt(top[0])}"
                             + (f", worst {low[1]} {fmt(low[0])}" if len(scored) > 1 else ""))
    if parts:
        out.append("By sentence kind (F1 micro, chance baseline left out): " + "; ".join(parts) + ".")
    return out


def baseline_summary(run: EvalRun, ours: str = OURS) -> list[str]:
    """Bullet points, read off the numbers, on where the baselines beat ``ours`` and where not.

    Written so the page cannot drift from the tables: every figure quoted here is looked up
    in the same metrics.json, and small samples are called out rather than glossed over.
    """
    if ours not in run.methods:
        return _baselines_only(run, ours)
    extractive: list[str] = []
    out: list[str] = []
    ahead: list[str] = []
    behind: list[str] = []
    tied: list[str] = []
    parts: list[str] = []
    small = False
    for task in run.distinct_tasks:
        c = _compare(run, task, "sentence_f1_micro", ours)
        if c is None:
            continue
        name, base, mine = c
        n = _sentences(run, task)
        star = "*" if 0 < n < SMALL_SAMPLE else ""
        small = small or bool(star)
        parts.append(f"{task} {name} {fmt(base)} vs {fmt(mine)} (n={n}{star})")
        if task != "all":
            {1: behind, -1: ahead, 0: tied}[_verdict(base, mine)].append(task)
        if task != "all" and base >= 0.99 and name in WORD_MATCHERS and n >= SMALL_SAMPLE:
            extractive.append(f"{task} ({name})")
    if parts:
        note = (f"; *fewer than {SMALL_SAMPLE} labelled sentences: one sentence moves F1 by 0.05 or more"
                if small else "")
        out.append(f"Sentence F1 micro, best baseline vs {ours} (n = labelled sentences): "
                   + "; ".join(parts) + note + ".")
    if behind or ahead or tied:
        bits = [
            "a baseline is ahead on " + (", ".join(behind) or "no task"),
            f"{ours} is ahead on " + (", ".join(ahead) or "no task"),
        ]
        if tied:
            bits.append("they tie (within 0.005) on " + ", ".join(tied))
        out.append("Per task: " + "; ".join(bits) + ".")
    if extractive:
        out.append("A word-matching baseline scores 1.0 on " + ", ".join(extractive) + ": those sentences "
                   "can be attributed from the words they share with their source, so there word overlap "
                   "is the bar to meet.")
    kind_parts = []
    for key in kind_keys(run):
        c = _compare(run, "all", key, ours)
        if c:
            kind_parts.append(f"{key.removeprefix('sentence_f1_')}: {c[0]} {fmt(c[1])} vs {ours} {fmt(c[2])}")
    if kind_parts:
        out.append("By sentence kind (forced rows): " + "; ".join(kind_parts) + ".")
    for key, what in (
        ("unsupported_f1", "Flagging unsupported sentences (F1)"),
        ("answer_f1", "Answer F1 (all sources cited vs gold, qa rows)"),
        ("option_consistency", "MCQ option consistency"),
        ("time_f1_micro", "Time F1 micro"),
    ):
        c = _compare(run, "all", key, ours)
        if c:
            out.append(f"{what}: best baseline {c[0]} {fmt(c[1])} vs {ours} {fmt(c[2])}.")
    floor = _f1(run, FLOOR, "all")
    if floor is not None:
        out.append(f"The {FLOOR} baseline (chance level) scores {fmt(floor)} sentence F1 micro overall.")
    costs = run.costs()
    mine_cost = costs.get(ours)
    best_all = _best_baseline(run, "all", "sentence_f1_micro", ours)
    if mine_cost and best_all and best_all[0] in costs:
        theirs = costs[best_all[0]]
        bits = []
        for key, unit in (("forward_passes_per_sentence", "forward passes"), ("seconds_per_sentence", "s")):
            a, b = number(mine_cost.get(key)), number(theirs.get(key))
            if a is not None and b is not None:
                bits.append(f"{fmt(a)} {unit} per sentence for {ours} vs {fmt(b)} for {best_all[0]}")
        if bits:
            out.append("Cost: " + "; ".join(bits) + ".")
    faith = run.faithfulness()
    if ours in faith and FLOOR in faith:
        a, b = number(faith[ours].get("logp_drop_k1")), number(faith[FLOOR].get("logp_drop_k1"))
        if a is not None and b is not None:
            better = "more" if a > b else "no more"
            out.append(
                f"Faithfulness: removing the top cited source lowers the sentence log-probability by "
                f"{fmt(a)} for {ours} vs {fmt(b)} when a random source is removed — {ours}'s citations "
                f"matter {better} to the model than chance."
            )
    return out
