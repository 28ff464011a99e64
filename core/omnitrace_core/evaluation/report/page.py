"""``write_results``: docs/results.md with tables, plots, the gallery and how to regenerate it all.

One section per eval folder (e.g. the dev set and a hard dev set): a paragraph on what the
baselines are good at, generated from the numbers, the plots, a table per task, and the cost
and faithfulness tables when ``omnitrace eval`` recorded them. The page is regenerated, never
edited by hand, so every number on it comes from the metrics.json files named on it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omnitrace_core.evaluation.report.gallery import (
    BrowserError,
    GallerySection,
    find_chromium,
    pick_rows,
    read_jsonl,
    screenshot,
    write_gallery,
)
from omnitrace_core.evaluation.report.plots import per_kind_plot, per_task_plot, quality_cost_plot
from omnitrace_core.evaluation.report.tables import (
    OURS,
    EvalRun,
    ReportInputError,
    baseline_summary,
    cost_table,
    faithfulness_table,
    load_eval,
    task_tables,
)

DEFAULT_TITLE = "OmniTrace: attribution results"


@dataclass
class ReportOutput:
    """What :func:`build_report` wrote, and what it had to leave out (and why)."""

    results: Path
    images: list[Path] = field(default_factory=list)
    gallery: Path | None = None
    screenshot: Path | None = None
    notes: list[str] = field(default_factory=list)


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-") or "eval"


def eval_command(run: EvalRun) -> str:
    """The ``omnitrace eval`` command that writes this folder, reconstructed from metrics.json.

    ``--limit`` / ``--seed`` are not recorded there, so a run that used them needs its real
    command passed to :func:`write_results` instead.
    """
    parts = ["omnitrace", "eval", run.dataset or "DATA.jsonl", "--out", str(run.path)]
    if run.attention_predictions:
        parts += ["--pred", run.attention_predictions]
    for name in run.methods:
        if name != OURS:
            parts += ["--baseline", name]
    return shlex.join(parts)


def _gallery_section(run: EvalRun, method: str, compare: str | None, examples: int,
                     notes: list[str]) -> GallerySection | None:
    if method not in run.methods or run.methods[method].predictions is None:
        notes.append(f"gallery: {run.path} has no predictions for {method!r}; section left out")
        return None
    if run.dataset_path is None:
        notes.append(f"gallery: dataset {run.dataset!r} of {run.path} not found (relative to the "
                     "cwd or the eval folder); section left out")
        return None
    predictions_path = run.methods[method].predictions
    assert predictions_path is not None
    rows = read_jsonl(run.dataset_path)
    preds = {p["id"]: p for p in read_jsonl(predictions_path)}
    other = None
    if compare is not None:
        m = run.methods.get(compare)
        if m is None or m.predictions is None:
            notes.append(f"gallery: {run.path} has no predictions for {compare!r}; shown without it")
            compare = None
        else:
            other = {p["id"]: p for p in read_jsonl(m.predictions)}
    chosen = pick_rows(rows, preds, examples)
    return GallerySection(label=run.label, rows=chosen, predictions=preds, method=method, compare=other,
                          compare_method=compare, dataset=run.dataset)


def build_report(
    eval_dirs: Sequence[Path],
    docs_dir: Path,
    title: str = DEFAULT_TITLE,
    commands: Sequence[str] = (),
    labels: Sequence[str] | None = None,
    method: str = OURS,
    compare: str | None = None,
    examples: int = 10,
    take_screenshot: bool = True,
    intro: str = "",
    report_command: str | None = None,
) -> ReportOutput:
    """Write results.md, the plots, gallery.html and its screenshot under ``docs_dir``.

    Args:
        eval_dirs: ``omnitrace eval --out`` folders, one section each, in this order.
        docs_dir: Where results.md and gallery.html go; images go to ``docs_dir/images``.
        title: The page's title.
        commands: The exact commands that regenerate the page (shown verbatim); when empty, the
            eval commands are reconstructed from metrics.json.
        labels: A section name per eval folder (default: folder name without ``eval-``).
        method: Whose answers the gallery shows.
        compare: A second method whose citations the gallery shows beside (None: none).
        examples: Gallery rows per eval folder (spread over the tasks).
        take_screenshot: Also render docs/images/gallery.png with headless Chromium (skipped,
            with a note, when Chromium is not installed).
        intro: A paragraph under the title.
        report_command: The report command listed after the reconstructed eval commands when
            ``commands`` is empty (default: ``omnitrace report DIRS --docs DOCS``).

    Raises:
        ReportInputError: an eval folder is unusable, or no folder is given.
        MissingExtraError: matplotlib is not installed.
    """
    if not eval_dirs:
        raise ReportInputError("no eval folder given (pass at least one `omnitrace eval --out` folder)")
    if labels is not None and len(labels) != len(eval_dirs):
        raise ReportInputError(f"{len(labels)} labels for {len(eval_dirs)} eval folders")
    runs = [load_eval(Path(d), labels[i] if labels else None) for i, d in enumerate(eval_dirs)]
    images = docs_dir / "images"
    out = ReportOutput(results=docs_dir / "results.md")
    docs_dir.mkdir(parents=True, exist_ok=True)

    # Gallery first: the page links to it and embeds its screenshot.
    sections = [s for r in runs if (s := _gallery_section(r, method, compare, examples, out.notes))]
    hover = None
    if sections:
        gallery = write_gallery(sections, docs_dir / "gallery.html", f"{title} \u2014 examples",
                                f"Examples from {', '.join(s.label for s in sections)}, read from the "
                                "eval folders; rows are spread evenly over each task, not picked for looks.")
        out.gallery = docs_dir / "gallery.html"
        hover = gallery.hover
        if take_screenshot:
            if find_chromium() is None:
                out.notes.append("screenshot: no Chromium on PATH; docs/images/gallery.png not updated")
            else:
                try:
                    out.screenshot = screenshot(out.gallery, images / "gallery.png", hover)
                except BrowserError as exc:
                    out.notes.append(f"screenshot: {exc}")

    report_command = report_command or shlex.join(
        ["omnitrace", "report", *map(str, eval_dirs), "--docs", str(docs_dir)]
    )
    lines = [f"# {title}", ""]
    if intro:
        lines += [intro, ""]
    lines += [
        "Generated by `omnitrace report` from the `omnitrace eval` folders below; do not edit by hand. "
        "Metrics are those of `omnitrace_core.evaluation.metrics` (= the reference scorer `score.py`, see "
        "[evaluation.md](evaluation.md)); in every table the best value per column is **bold** "
        "(nothing is bold when all methods tie).",
        "",
        "Regenerate:",
        "",
        "```bash",
        *(list(commands) or [*(eval_command(r) for r in runs), report_command]),
        "```",
        "",
    ]
    if out.gallery:
        shot = "\n\n![gallery, one sentence hovered](images/gallery.png)" if out.screenshot or (
            images / "gallery.png").exists() else ""
        lines += [
            f"**Examples:** [gallery.html](gallery.html) shows {method}'s answers on "
            + ", ".join(f"{len(s.rows)} {s.label} rows" for s in sections)
            + (f", with {compare}'s citations beside" if compare else "")
            + ": hover a sentence to see the sources it cites (open the file in a browser; it is "
            "self-contained)." + shot,
            "",
        ]
    for run in runs:
        slug = _slug(run.label)
        failures = sum(m.failures for m in run.methods.values())
        lines += [
            f"## {run.label}",
            "",
            f"`{run.dataset}`: {run.rows_evaluated} of {run.rows_read} rows evaluated; methods: "
            + ", ".join(run.methods)
            + (f"; {failures} failed predictions (`failures-*.jsonl` in `{run.path}`)" if failures else "")
            + f". Folder: `{run.path}`.",
            "",
            "### What the baselines are good at",
            "",
            *(f"- {b}" for b in baseline_summary(run, method)),
            "",
        ]
        plots = []
        cost_png = quality_cost_plot(run, images / f"{slug}-quality-cost.png")
        if cost_png:
            plots.append(f"![{run.label}: quality vs cost](images/{cost_png.name})")
            out.images.append(cost_png)
        kind_png = per_kind_plot(run, images / f"{slug}-per-kind.png")
        if not kind_png or len(run.distinct_tasks) > 1:  # one task: its single bar group says nothing new
            task_png = per_task_plot(run, images / f"{slug}-per-task.png")
            out.images.append(task_png)
            plots.append(f"![{run.label}: sentence F1 per task](images/{task_png.name})")
        if kind_png:
            out.images.append(kind_png)
            plots.append(f"![{run.label}: sentence F1 per kind](images/{kind_png.name})")
        lines += [" ".join(plots), ""]
        if not cost_png:
            lines += ["(No cost recorded in metrics.json, so no quality-vs-cost plot.)", ""]
        lines += ["### Metrics per task", "", task_tables(run, "####")]
        cost = cost_table(run)
        if cost:
            lines += ["### Cost", "",
                      "Model passes and wall-clock seconds per attributed sentence (lower is better; "
                      "baselines run no model).", "", cost, ""]
        faith = faithfulness_table(run)
        if faith:
            lines += ["### Faithfulness", "",
                      "Drop in the sentence's log-probability when its top-1 / top-3 cited sources are "
                      "removed from the prompt (higher: the citations matter more to the model; "
                      "`random` removes random sources, the chance level).", "", faith, ""]
    text = "\n".join(lines).rstrip() + "\n"
    out.results.write_text(re.sub(r"\n{3,}", "\n\n", text), encoding="utf-8")
    return out


def write_results(
    eval_dirs: Sequence[Path],
    docs_dir: Path,
    title: str = DEFAULT_TITLE,
    commands: Sequence[str] = (),
    labels: Sequence[str] | None = None,
    method: str = OURS,
    compare: str | None = None,
    examples: int = 10,
    take_screenshot: bool = True,
    intro: str = "",
) -> Path:
    """Write docs/results.md (plus plots, gallery and screenshot); returns the results.md path.

    Same arguments as :func:`build_report`, for callers that only want the page's path.
    """
    return build_report(eval_dirs, docs_dir, title, commands, labels, method, compare, examples,
                        take_screenshot, intro).results
