"""PNG plots of an eval run: quality vs cost, and sentence F1 per task.

matplotlib is imported inside the functions (the ``eval`` extra), so the core imports without
it. Figures are built with the object API (``matplotlib.figure.Figure``), never ``pyplot``, so
no global backend or figure state is touched in the caller's process.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omnitrace_core.errors import OmniTraceError
from omnitrace_core.evaluation.report.tables import FLOOR, OURS, EvalRun, ReportInputError, kind_keys, number

EXTRA_HINT = "pip install 'omnitrace-integrations[eval]'"
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#7f7f7f", "#bcbd22"]


class MissingExtraError(OmniTraceError, ImportError):
    """An optional dependency of the report (matplotlib) is not installed."""


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingExtraError(f"the report's plots need matplotlib: {EXTRA_HINT}") from exc
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # No "Software" stamp: regenerating with the same numbers gives the same bytes.
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


def method_colours(names: list[str]) -> dict[str, str]:
    """A stable colour per method (ours always the first colour, the random floor grey)."""
    out: dict[str, str] = {}
    others = [c for c in PALETTE if c != "#7f7f7f"]
    i = 0
    for name in names:
        if name == OURS:
            out[name] = PALETTE[0]
        elif name == FLOOR:
            out[name] = "#7f7f7f"
        else:
            i += 1
            out[name] = others[i % len(others)]
    return out


def cost_key(run: EvalRun) -> str | None:
    """Seconds per sentence when any method recorded it, else forward passes per sentence."""
    costs = run.costs().values()
    for key in ("seconds_per_sentence", "forward_passes_per_sentence"):
        if any(number(c.get(key)) is not None for c in costs):
            return key
    return None


def quality_cost_plot(run: EvalRun, path: Path, task: str = "all") -> Path | None:
    """Scatter of sentence F1 micro (y) against cost per sentence (x, log scale), a point per method.

    Returns None (writes nothing) when no method recorded a cost. A method with zero cost
    (e.g. zero forward passes) cannot sit on a log axis, so it is drawn at the left edge and
    its label says "0".
    """
    key = cost_key(run)
    if key is None:
        return None
    points: list[tuple[str, float, float]] = []
    for name, m in run.methods.items():
        x = number((m.cost or {}).get(key))
        y = number(m.metrics.get(task, {}).get("sentence_f1_micro"))
        if x is not None and y is not None:
            points.append((name, x, y))
    if not points:
        return None
    positive = [x for _, x, _ in points if x > 0]
    floor = min(positive) / 10 if positive else 1e-3
    colours = method_colours(list(run.methods))
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    # Methods at the same spot (e.g. carry_forward = lexical when nothing is carried) share a
    # label; labels of nearby points alternate above / below so they do not overprint.
    groups: dict[tuple[float, float], list[tuple[str, float, float, float]]] = {}
    for name, x, y in points:
        shown = x if x > 0 else floor
        groups.setdefault((round(math.log10(shown), 2), round(y, 3)), []).append((name, x, shown, y))
    shown_xs = [x if x > 0 else floor for _, x, _ in points]
    placed: list[tuple[float, float]] = []
    for (lx, ly), members in sorted(groups.items()):
        for name, _, shown, y in members:
            ax.scatter([shown], [y], s=140 if name == OURS else 70, color=colours[name], zorder=3,
                       marker="*" if name == OURS else "o", edgecolors="black", linewidths=0.5)
        label = ", ".join(name + (" (0)" if x <= 0 else "") for name, x, _, _ in members)
        crowded = sum(abs(lx - px) < 0.6 and abs(ly - py) < 0.06 for px, py in placed)
        rightmost = members[0][2] >= max(shown_xs)  # label to the left so it stays inside the axes
        ax.annotate(label, (members[0][2], members[0][3]), textcoords="offset points", fontsize=9,
                    xytext=(-7 if rightmost else 7, 6 if crowded % 2 == 0 else -14),
                    ha="right" if rightmost else "left")
        placed.append((lx, ly))
    ax.set_xscale("log")
    unit = "seconds" if key == "seconds_per_sentence" else "forward passes"
    ax.set_xlabel(f"{unit} per sentence (log scale)")
    ax.set_ylabel(f"sentence F1 micro ({task})")
    ax.set_ylim(-0.03, 1.08)
    ax.set_xlim(min(shown_xs) / 2.5, max(shown_xs) * 4)
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title(f"{run.label}: quality vs cost per sentence")
    return _save(fig, path)


def _grouped_bars(
    run: EvalRun, path: Path, groups: list[tuple[str, str, str]], ylabel: str, title: str
) -> Path:
    """Bars of ``(x label, task, metric key)`` groups, a bar per method (ours hatched)."""
    names = list(run.methods)
    colours = method_colours(names)
    fig = _figure(max(6.4, 1.25 * len(groups) + 2.5), 4.0)
    ax = fig.add_subplot()
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [number(run.methods[name].metrics.get(task, {}).get(key)) for _, task, key in groups]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(groups))]
        bars = ax.bar([x for x, v in zip(xs, values, strict=True) if v is not None],
                      [v for v in values if v is not None], width, label=name, color=colours[name],
                      edgecolor="black", linewidth=0.4, hatch="//" if name == OURS else None)
        # Values on the bars: a 0.00 bar is otherwise indistinguishable from a missing one.
        ax.bar_label(bars, fmt="%.2f", fontsize=6, rotation=90, padding=2)
    ax.set_xticks(range(len(groups)), [label for label, _, _ in groups], fontsize=8.5)
    ax.set_ylim(0, 1.17)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(len(names), 5), loc="upper center", bbox_to_anchor=(0.5, -0.2),
              frameon=False)
    ax.set_title(title)
    return _save(fig, path)


def _pretty(key: str) -> str:
    return key.replace("_", " ").replace(" f1", " F1")


def per_task_plot(run: EvalRun, path: Path, key: str = "sentence_f1_micro") -> Path:
    """Grouped bars: ``key`` per task (``all`` first), a bar per method; n labelled sentences under each task.

    Raises:
        ReportInputError: no method has ``key`` for any task.
    """
    tasks = [t for t in run.distinct_tasks if any(number(m.metrics.get(t, {}).get(key)) is not None
                                                  for m in run.methods.values())]
    if not tasks:
        raise ReportInputError(f"{run.path}: no method has {key!r} for any task; nothing to plot")
    groups = []
    for t in tasks:
        n = max(int(m.metrics.get(t, {}).get("labelled_sentences") or 0) for m in run.methods.values())
        groups.append((f"{t}\n(n={n})", t, key))
    return _grouped_bars(run, path, groups, _pretty(key),
                         f"{run.label}: {_pretty(key)} per task (n = labelled sentences)")


def per_kind_plot(run: EvalRun, path: Path) -> Path | None:
    """Grouped bars of ``sentence_f1_<kind>`` (all rows), a bar per method; None when no kind is scored.

    Kinds (paraphrase, meaning_only, unsupported ...) are where attribution methods differ most,
    so they get their own chart rather than a wider per-task one.
    """
    kinds = kind_keys(run)
    if not kinds:
        return None
    groups = [(k.removeprefix("sentence_f1_"), "all", k) for k in kinds]
    return _grouped_bars(run, path, groups, "sentence F1 (micro) of that kind",
                         f"{run.label}: sentence F1 per sentence kind")
