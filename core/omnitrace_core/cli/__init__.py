"""The ``omnitrace`` command: one thin command layer per room.

``omnitrace demo`` / ``run`` (:mod:`omnitrace_core.cli.tracing`: answer with citations),
``omnitrace predict`` / ``score`` / ``eval`` / ``report`` (:mod:`omnitrace_core.cli.evaluation`:
measure), ``omnitrace serve`` (:mod:`omnitrace_core.cli.serving`: the HTTP server, an adapter in
``omnitrace_integrations.serving`` imported only when the command runs). Each command parses
options, calls its room and maps errors to exit codes; nothing in the library imports this package.
"""

from __future__ import annotations

import typer

from omnitrace_core.cli import evaluation, serving, tracing
from omnitrace_core.cli.tracing import DEMO_QUESTION, DEMO_SOURCES, make_tracer, render

app = typer.Typer(
    help="Generation-time source attribution (OmniTrace) on local models.", no_args_is_help=True
)
app.add_typer(tracing.app)
app.add_typer(evaluation.app)
app.add_typer(serving.app)

__all__ = ["DEMO_QUESTION", "DEMO_SOURCES", "app", "main", "make_tracer", "render"]


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
