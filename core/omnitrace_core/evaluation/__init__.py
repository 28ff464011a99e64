"""The evaluation room: measuring attributions, never making them.

Datasets in the shared benchmark format (:mod:`.bench`, :mod:`.data`), metrics (:mod:`.metrics`),
string baselines (:mod:`.baselines`), peers (:mod:`.selfcite`, :mod:`.contextcite_peer`),
faithfulness by source ablation (:mod:`.faithfulness`, :mod:`.faithfulness_eval`), the method
table (:mod:`.methods`), row engines (:mod:`.engines`: local or Ray), ``omnitrace eval``'s runner
(:mod:`.runner`), its summary tables (:mod:`.summary`) and the results page and gallery
(:mod:`.report`).

Doors: this room may import the tracing pipeline (``omnitrace_core.*``) and the media room
(``omnitrace_core.media``); neither imports it back, and nothing here imports the command line
(``omnitrace_core.cli``). ``from omnitrace_core.evaluation import evaluate, EvalSettings`` keeps
its old meaning (the runner is imported on first use, so ``evaluation.metrics`` stays light).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

__all__ = ["EvalInputError", "EvalSettings", "evaluate"]


def __getattr__(name: str) -> Any:
    # ``omnitrace_core.evaluation`` was the runner module: its names resolve there.
    if name.startswith("_") or (Path(__file__).parent / f"{name}.py").exists():
        raise AttributeError(name)  # dunders, and submodules not imported yet: the import system's
    runner = importlib.import_module("omnitrace_core.evaluation.runner")
    try:
        return getattr(runner, name)
    except AttributeError:
        raise AttributeError(f"module 'omnitrace_core.evaluation' has no attribute {name!r}") from None
