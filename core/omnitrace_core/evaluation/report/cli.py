"""``omnitrace report EVAL_DIR [EVAL_DIR ...] --docs docs/``: results page, plots and gallery.

Exit codes: 0 everything written; 1 written, but something was left out (a gallery section,
the screenshot; each named on stderr); 2 unusable input (a missing or malformed eval folder,
matplotlib not installed).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from omnitrace_core.errors import OmniTraceError
from omnitrace_core.report.page import DEFAULT_TITLE, build_report
from omnitrace_core.report.tables import OURS

err = Console(stderr=True, soft_wrap=True)


def report_command(
    eval_dirs: Annotated[list[Path], typer.Argument(help="Folders written by `omnitrace eval --out`")],
    docs: Annotated[Path, typer.Option(help="Where results.md, gallery.html and images/ go")] = Path("docs"),
    title: Annotated[str, typer.Option(help="Page title")] = DEFAULT_TITLE,
    label: Annotated[
        list[str] | None, typer.Option(help="Section name per eval folder (repeat, in order)")
    ] = None,
    method: Annotated[str, typer.Option(help="Whose answers the gallery shows")] = OURS,
    compare: Annotated[
        str | None, typer.Option(help="A second method whose citations the gallery shows beside")
    ] = None,
    examples: Annotated[int, typer.Option(help="Gallery rows per eval folder")] = 10,
    screenshot: Annotated[
        bool, typer.Option(help="Render images/gallery.png with headless Chromium")
    ] = True,
    command: Annotated[
        list[str] | None,
        typer.Option(help="A command to list under 'Regenerate' (repeat; default: the eval commands "
                     "reconstructed from metrics.json, then this report command)"),
    ] = None,
) -> None:
    """Write results.md (tables per task, cost, faithfulness, plots) and an HTML example gallery."""
    this = ["omnitrace", "report", *map(str, eval_dirs), "--docs", str(docs)]
    for name in label or []:
        this += ["--label", name]
    if method != OURS:
        this += ["--method", method]
    if compare:
        this += ["--compare", compare]
    if examples != 10:
        this += ["--examples", str(examples)]
    commands = [*command, shlex.join(this)] if command else []
    try:
        out = build_report(eval_dirs, docs, title, commands, label, method, compare, examples, screenshot,
                           report_command=shlex.join(this))
    except (OmniTraceError, ImportError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    for note in out.notes:
        err.print(f"[yellow]left out:[/yellow] {note}")
    written = [out.results, *out.images, *(p for p in (out.gallery, out.screenshot) if p)]
    err.print("wrote " + ", ".join(str(p) for p in written))
    if out.notes:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``report`` to the ``omnitrace`` command."""
    app.command("report")(report_command)
