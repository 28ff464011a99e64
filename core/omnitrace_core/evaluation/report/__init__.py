"""Reporting for ``omnitrace eval`` output: docs/results.md, plots and an HTML example gallery.

``write_results([Path("benchmarks/results/eval-dev")], Path("docs"), commands=[...])`` writes
``docs/results.md`` (a table per task, cost and faithfulness when recorded, prose on where the
baselines win, generated from the numbers), PNG plots in ``docs/images``, a self-contained
``docs/gallery.html`` and, when Chromium is installed, ``docs/images/gallery.png``.
``omnitrace report`` runs the same from the command line. Plots need matplotlib (the ``eval``
extra), imported only when a plot is drawn.
"""

from omnitrace_core.evaluation.report.gallery import (
    BrowserError,
    GallerySection,
    dump_dom,
    find_chromium,
    pick_rows,
    render_gallery,
    screenshot,
    write_gallery,
)
from omnitrace_core.evaluation.report.page import ReportOutput, build_report, write_results
from omnitrace_core.evaluation.report.plots import (
    MissingExtraError,
    per_kind_plot,
    per_task_plot,
    quality_cost_plot,
)
from omnitrace_core.evaluation.report.tables import (
    EvalRun,
    ReportInputError,
    baseline_summary,
    load_eval,
    task_tables,
)

__all__ = [
    "BrowserError",
    "EvalRun",
    "GallerySection",
    "MissingExtraError",
    "ReportInputError",
    "ReportOutput",
    "baseline_summary",
    "build_report",
    "dump_dom",
    "find_chromium",
    "load_eval",
    "per_kind_plot",
    "per_task_plot",
    "pick_rows",
    "quality_cost_plot",
    "render_gallery",
    "screenshot",
    "task_tables",
    "write_gallery",
    "write_results",
]
