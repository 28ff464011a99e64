"""``omnitrace score`` and ``omnitrace eval``: score prediction files, run and compare methods.

``omnitrace eval DATA --out DIR [--model NAME] [--method NAME ...] [--baseline NAME ...]
[--pred PRED.jsonl] [--limit N] [--engine local|ray] [--workers N] [--address ADDR]
[--faithfulness] [--max-new-tokens N]`` attributes every row's response text with every
method, scores them per task with :mod:`omnitrace_core.evaluation.metrics` and writes

- ``DIR/predictions-<method>.jsonl`` (the shared prediction format, each row with its ``cost``),
- ``DIR/failures-<method>.jsonl`` (rows whose prediction raised, with the error),
- ``DIR/faithfulness.jsonl`` (with ``--faithfulness``: log-prob drops per row and method),
- ``DIR/metrics.json`` and ``DIR/metrics.md`` (a table per task, cost and faithfulness tables).

Same texts for every method: a forced row's ``response``; for a generated row, its text in
``--pred`` or, without it, the answer the default method (``omnitrace``) generates, which every
other method and baseline then attributes teacher-forced. Methods that run the model
(:mod:`omnitrace_core.evaluation.methods`) go through :func:`omnitrace_core.evaluation.engines.map_rows`
with one task per row (``--engine ray --workers N`` spreads rows over Ray actors, each loading
the model once); baselines (:mod:`omnitrace_core.evaluation.baselines`) run in this process. With neither
``--method`` nor ``--baseline``, the default methods and every baseline run; with only
``--baseline`` no model is loaded and generated rows need ``--pred``.

Resumable: rows already in a method's prediction file are kept (a truncated last line from an
interrupted run is dropped), so a rerun only predicts what is missing or failed. A row (or one
method on a row) that raises is recorded and skipped, never the whole run.

Exit codes (both commands): 0 every row scored; 1 finished, but dataset rows were skipped
(unknown task type, missing required fields: each named), predictions were rejected (id not
in the dataset, NaN / negative scores, invalid JSON) or rows failed; 2 nothing usable
(unreadable or empty dataset, no usable row, an empty or unusable ``--pred`` file, an unknown
method, baseline or engine).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnitrace_core.errors import OmniTraceError
from omnitrace_core.evaluation.baselines import BASELINES, Baseline, EmbeddingBaseline, make_baseline
from omnitrace_core.evaluation.data import Dataset, EvalInputError, load_dataset, load_predictions
from omnitrace_core.evaluation.faithfulness_eval import (
    CONTROL,
    FaithfulnessWorkerFactory,
    plan_row,
    summarize,
)
from omnitrace_core.evaluation.methods import (
    ATTENTION_METHOD,
    DEFAULT_MAX_NEW_TOKENS,
    ModelWorkerFactory,
    check_methods,
    cost,
)
from omnitrace_core.evaluation.metrics import prediction_problems, score_by_task
from omnitrace_core.evaluation.summary import (
    cost_summary,
    cost_table,
    faithfulness_table,
    markdown_table,
)
from omnitrace_core.models import DEFAULT_MODEL

__all__ = [
    "ATTENTION_METHOD",
    "Dataset",
    "EvalInputError",
    "EvalSettings",
    "evaluate",
    "load_dataset",
    "load_predictions",
    "markdown_table",
]

Progress = Callable[[str, int], Callable[[], None]]


@dataclass(frozen=True)
class EvalSettings:
    """How the model-based work runs (ignored when only baselines run).

    Attributes:
        model: Packaged model name or local folder.
        engine: ``local`` or ``ray`` (:func:`omnitrace_core.evaluation.engines.map_rows`).
        workers: Workers (Ray actors, each with its own model).
        address: Ray cluster address (None: a private local Ray).
        max_new_tokens: Decoding budget for generated rows.
        threads: torch threads per worker.
        faithfulness: Also measure log-prob drops (:mod:`omnitrace_core.evaluation.faithfulness_eval`).
        tracer: An already loaded tracer (local engine only; tests).
        batch_size: Generated rows decoded together per worker (:meth:`Tracer.generate_batch`);
            1 (default) decodes one row at a time, as before. Answers are the same either way.
    """

    model: str = DEFAULT_MODEL
    engine: str = "local"
    workers: int = 1
    address: str | None = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    threads: int | None = None
    faithfulness: bool = False
    tracer: Any = field(default=None, compare=False, repr=False)
    batch_size: int = 1


# ---------------------------------------------------------------- one method's prediction file


class PredictionFile:
    """A method's ``predictions-<name>.jsonl``: rows kept from earlier runs, appended as they come."""

    def __init__(self, out_dir: Path, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        self.name = name
        self.path = out_dir / f"predictions-{name}.jsonl"
        self.done = _read_done(self.path, {r["id"] for r in rows})
        kept = [r["id"] for r in rows if r["id"] in self.done]
        self.resumed = len(kept)
        self.new = 0
        self.failures: list[dict[str, str]] = []
        self.seconds = 0.0
        with self.path.open("w", encoding="utf-8") as f:  # rewrite what is kept (drops a torn line)
            for row_id in kept:
                f.write(json.dumps(self.done[row_id]) + "\n")

    def add(self, prediction: dict[str, Any]) -> None:
        """Record a new prediction row (written and flushed at once: a crash loses nothing)."""
        self.done[prediction["id"]] = prediction
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(prediction) + "\n")
        self.new += 1

    def fail(self, row_id: str, error: str) -> None:
        self.failures.append({"id": row_id, "error": error})

    def close(self) -> None:
        """Write (or clear) ``failures-<name>.jsonl``."""
        fail_path = self.path.with_name(f"failures-{self.name}.jsonl")
        if self.failures:
            fail_path.write_text("".join(json.dumps(x) + "\n" for x in self.failures), encoding="utf-8")
        elif fail_path.exists():
            fail_path.unlink()

    def report(self) -> dict[str, Any]:
        return {
            "predictions": str(self.path),
            "rows_predicted": len(self.done),
            "rows_resumed": self.resumed,
            "rows_new": self.new,
            "seconds_new_rows": self.seconds,
            "failures": self.failures,
        }


def _read_done(path: Path, wanted: set[str]) -> dict[str, dict[str, Any]]:
    """Prediction rows already written by an earlier run (a torn last line is dropped)."""
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("id") in wanted and not prediction_problems(row):
            done.setdefault(row["id"], row)
    return done


def _noop() -> None:
    return None


# ---------------------------------------------------------------- the phases


def run_baseline(
    baseline: Baseline,
    rows: Sequence[dict[str, Any]],
    texts: Mapping[str, str],
    file: PredictionFile,
    advance: Callable[[], None] = _noop,
) -> None:
    """Predict every row with a text that ``file`` lacks; each row records its seconds as cost."""
    started = time.perf_counter()
    for row in rows:
        if row["id"] in file.done or row["id"] not in texts:
            advance()
            continue
        t0 = time.perf_counter()
        encoded = baseline.encoded_texts if isinstance(baseline, EmbeddingBaseline) else 0
        try:
            prediction = baseline.predict(row, texts[row["id"]])
        except Exception as exc:  # a crashing row is recorded and skipped, never the run
            file.fail(row["id"], f"{type(exc).__name__}: {exc}")
            advance()
            continue
        extra = {}
        if isinstance(baseline, EmbeddingBaseline):
            extra["embedding_texts"] = baseline.encoded_texts - encoded
        prediction["cost"] = cost(0, 0, time.perf_counter() - t0, **extra)
        file.add(prediction)
        advance()
    file.seconds = time.perf_counter() - started


def _model_tasks(
    rows: Sequence[dict[str, Any]],
    texts: Mapping[str, str],
    model_methods: Sequence[str],
    files: Mapping[str, PredictionFile],
) -> list[dict[str, Any]]:
    """One task per row that misses a model method's prediction (``text`` None: generate first)."""
    tasks = []
    for row in rows:
        wanted = [m for m in model_methods if row["id"] not in files[m].done]
        if not wanted:
            continue
        text = texts.get(row["id"])
        if text is None and ATTENTION_METHOD in files and row["id"] in files[ATTENTION_METHOD].done:
            text = str(files[ATTENTION_METHOD].done[row["id"]].get("text", ""))
        tasks.append({"id": row["id"], "row": row, "text": text, "methods": wanted})
    return tasks


def group_tasks(tasks: Sequence[dict[str, Any]], batch_size: int) -> list[dict[str, Any]]:
    """Consecutive model tasks in groups (one engine item each) holding up to ``batch_size``
    rows to generate, so a worker decodes those together (:meth:`ModelWorker._run_group`).

    Tasks that already have their text ride along in the group they fall in; rows keep their
    order and each still gets its own results.
    """
    groups: list[list[dict[str, Any]]] = [[]]
    to_generate = 0
    for task in tasks:
        if task["text"] is None:
            if to_generate == batch_size:
                groups.append([])
                to_generate = 0
            to_generate += 1
        groups[-1].append(task)
    return [{"id": group[0]["id"], "tasks": group} for group in groups if group]


def run_models(
    tasks: Sequence[dict[str, Any]],
    files: Mapping[str, PredictionFile],
    settings: EvalSettings,
    advance: Callable[[], None] = _noop,
) -> None:
    """Run the model methods' tasks through the engine; write each prediction as it arrives."""
    from omnitrace_core.evaluation.engines import map_rows

    if not tasks:
        return
    factory = ModelWorkerFactory(
        settings.model, settings.max_new_tokens, settings.threads, settings.tracer, settings.batch_size
    )
    started = time.perf_counter()
    items = group_tasks(tasks, settings.batch_size) if settings.batch_size > 1 else list(tasks)
    outcomes = map_rows(
        items, factory, engine=settings.engine, workers=settings.workers, address=settings.address
    )
    for item, outcome in zip(items, outcomes, strict=True):
        members = item.get("tasks", [item])
        results = outcome.result if "tasks" in item else [outcome.result]
        for k, task in enumerate(members):
            wanted = list(
                dict.fromkeys([*([ATTENTION_METHOD] if task["text"] is None else []), *task["methods"]])
            )
            if outcome.error is not None:  # the worker itself raised: the group's rows fail with it
                for m in wanted:
                    if m in files:
                        files[m].fail(task["id"], outcome.error)
            else:
                for m, result in results[k].items():
                    if m not in files:
                        continue
                    if "prediction" in result:
                        files[m].add(result["prediction"])
                    else:
                        files[m].fail(task["id"], result["error"])
            advance()
    for m in files:
        files[m].seconds = time.perf_counter() - started


def _faithfulness_done(path: Path, wanted: set[str]) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if (
                isinstance(record, dict)
                and record.get("id") in wanted
                and isinstance(record.get("drops"), dict)
            ):
                done[record["id"]] = record
    return done


def _merge_record(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    if old is None:
        return new
    return {
        "id": new["id"],
        "drops": {**old["drops"], **new["drops"]},
        "forward_passes": int(old.get("forward_passes", 0)) + int(new["forward_passes"]),
        "seconds": float(old.get("seconds", 0.0)) + float(new["seconds"]),
    }


def run_faithfulness(
    rows: Sequence[dict[str, Any]],
    texts: Mapping[str, str],
    files: Mapping[str, PredictionFile],
    out_dir: Path,
    settings: EvalSettings,
    seed: int,
    progress: Progress | None,
) -> dict[str, Any]:
    """Log-prob drops of every method's top-1 / top-3 sources, per row (resumable), summarised."""
    from omnitrace_core.evaluation.engines import map_rows

    path = out_dir / "faithfulness.jsonl"
    done = _faithfulness_done(path, {r["id"] for r in rows})
    tasks = []
    for row in rows:
        text = texts.get(row["id"])
        if text is None:
            continue
        predictions = {m: f.done[row["id"]] for m, f in files.items() if row["id"] in f.done}
        task = plan_row(row, text, predictions, seed)
        record = done.get(row["id"])
        if record is not None:  # measure only the methods this row's record lacks
            task["plan"] = {m: entry for m, entry in task["plan"].items() if m not in record["drops"]}
        if task["plan"]:
            tasks.append(task)
    with path.open("w", encoding="utf-8") as f:
        for record in done.values():
            f.write(json.dumps(record) + "\n")
    failures: list[dict[str, str]] = []
    started = time.perf_counter()
    if tasks:
        advance = progress("faithfulness", len(tasks)) if progress else _noop
        factory = FaithfulnessWorkerFactory(
            settings.model, settings.threads, settings.max_new_tokens, settings.tracer
        )
        outcomes = map_rows(
            tasks, factory, engine=settings.engine, workers=settings.workers, address=settings.address
        )
        with path.open("a", encoding="utf-8") as f:
            for task, outcome in zip(tasks, outcomes, strict=True):
                if outcome.error is not None:
                    failures.append({"id": task["id"], "error": outcome.error})
                else:
                    done[task["id"]] = _merge_record(done.get(task["id"]), outcome.result)
                    f.write(json.dumps(done[task["id"]]) + "\n")  # the last line of an id wins
                    f.flush()
                advance()
    records = list(done.values())
    summary = summarize(records, list(files))
    return {
        "methods": summary,
        "rows": len(records),
        "forward_passes": sum(int(r.get("forward_passes", 0)) for r in records),
        "seconds": sum(float(r.get("seconds", 0.0)) for r in records),
        "seconds_new_rows": time.perf_counter() - started,
        "failures": failures,
    }


# ---------------------------------------------------------------- evaluate


def _texts(
    rows: Iterable[dict[str, Any]], attention: Mapping[str, Mapping[str, Any]] | None, generate: bool
) -> tuple[dict[str, str], list[str], list[str]]:
    """Per row id: the text to attribute; the ids to generate; the ids with no text at all."""
    texts: dict[str, str] = {}
    to_generate: list[str] = []
    missing: list[str] = []
    for row in rows:
        if row.get("response"):
            texts[row["id"]] = row["response"]
        elif attention is not None and row["id"] in attention:
            texts[row["id"]] = str(attention[row["id"]].get("text", ""))
        elif generate:
            to_generate.append(row["id"])
        else:
            missing.append(row["id"])
    return texts, to_generate, missing


def evaluate(
    data: Path,
    out_dir: Path,
    baselines: Sequence[str] = BASELINES,
    pred: Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    methods: Sequence[str] = (),
    settings: EvalSettings | None = None,
) -> dict[str, Any]:
    """Run and score every method; write predictions, ``metrics.json`` and ``metrics.md`` in ``out_dir``.

    Args:
        data: Dataset in the shared benchmark format.
        out_dir: Output folder (created; earlier predictions there are resumed).
        baselines: Baseline names (:func:`omnitrace_core.evaluation.baselines.make_baseline`).
        pred: Predictions of the default method (their texts are what the others attribute).
        limit: Only the first N valid dataset rows.
        seed: Seed of the random baseline and the random faithfulness control.
        progress: ``progress(description, total)`` returns a callable advancing a bar by one.
        methods: Model-based methods (:data:`omnitrace_core.evaluation.methods.METHODS`, ``all``).
        settings: Model, engine and faithfulness settings.

    Returns:
        The report written to ``metrics.json``.

    Raises:
        EvalInputError: nothing usable (see the module docstring, exit code 2).
    """
    settings = settings or EvalSettings()
    try:
        runners: list[Baseline] = [make_baseline(b, seed=seed) for b in dict.fromkeys(baselines)]
        model_methods = check_methods(methods)
    except (ValueError, OmniTraceError) as exc:
        raise EvalInputError(str(exc)) from exc
    if settings.engine != "local" and settings.tracer is not None:
        raise EvalInputError("a loaded tracer can only be used with the local engine")
    if settings.workers < 1:
        raise EvalInputError(f"--workers must be >= 1, got {settings.workers}")
    size = settings.batch_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise EvalInputError(f"--batch-size must be an integer >= 1, got {settings.batch_size!r}")
    from omnitrace_core.evaluation.engines import ENGINES

    if (model_methods or settings.faithfulness) and settings.engine not in ENGINES:
        raise EvalInputError(f"unknown engine {settings.engine!r}; available: {', '.join(sorted(ENGINES))}")
    dataset = load_dataset(data, limit)
    problems = list(dataset.problems)
    attention: dict[str, dict[str, Any]] | None = None
    if pred is not None:
        attention, pred_problems = load_predictions(pred, dataset.all_ids)
        problems += pred_problems
        if not attention:
            raise EvalInputError(
                f"{pred}: no usable prediction rows"
                + (f" ({len(pred_problems)} rejected)" if pred_problems else "")
            )
    texts, to_generate, no_text = _texts(dataset.rows, attention, generate=bool(model_methods))
    rows = [r for r in dataset.rows if r["id"] in texts or r["id"] in to_generate]
    if not rows:
        raise EvalInputError(
            f"{data}: no row has a response text to attribute (teacher_forced rows have one; "
            "pass --pred PRED.jsonl or a --method for generated rows)"
        )
    if to_generate and ATTENTION_METHOD not in model_methods:
        model_methods.insert(0, ATTENTION_METHOD)  # its answers are the texts the others attribute
    out_dir.mkdir(parents=True, exist_ok=True)

    names: list[str] = []
    if attention is not None or ATTENTION_METHOD in model_methods:
        names.append(ATTENTION_METHOD)
    names += [m for m in model_methods if m not in names] + [b.name for b in runners]
    files = {name: PredictionFile(out_dir, name, rows) for name in names}
    if attention is not None:  # the given predictions are the default method's
        for row in rows:
            if row["id"] in attention and row["id"] not in files[ATTENTION_METHOD].done:
                files[ATTENTION_METHOD].add(attention[row["id"]])
        if ATTENTION_METHOD not in model_methods:
            for row in rows:
                if row["id"] not in files[ATTENTION_METHOD].done:
                    files[ATTENTION_METHOD].fail(row["id"], f"no prediction for this row in {pred}")

    tasks = _model_tasks(rows, texts, model_methods, files)
    if tasks:
        run_models(tasks, files, settings, progress("model methods", len(tasks)) if progress else _noop)
    for row_id in to_generate:
        done = files[ATTENTION_METHOD].done.get(row_id)
        if done is not None:
            texts[row_id] = str(done.get("text", ""))
    if runners:
        advance = progress("baselines", len(rows) * len(runners)) if progress else _noop
        for baseline in runners:
            run_baseline(baseline, rows, texts, files[baseline.name], advance)
    faith = (
        run_faithfulness(rows, texts, files, out_dir, settings, seed, progress)
        if settings.faithfulness
        else None
    )
    for f in files.values():
        f.close()

    report = _report(data, pred, dataset, rows, no_text, problems, files, faith, settings, model_methods)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out_dir / "metrics.md").write_text(_markdown(data, report), encoding="utf-8")
    return report


def _report(
    data: Path,
    pred: Path | None,
    dataset: Dataset,
    rows: Sequence[dict[str, Any]],
    no_text: list[str],
    problems: list[str],
    files: Mapping[str, PredictionFile],
    faith: dict[str, Any] | None,
    settings: EvalSettings,
    model_methods: Sequence[str],
) -> dict[str, Any]:
    ids = {r["id"] for r in rows}
    methods: dict[str, Any] = {}
    for name, f in files.items():
        entry = {
            **f.report(),
            "metrics": score_by_task(rows, f.done),
            "cost": cost_summary(p for i, p in f.done.items() if i in ids),
        }
        if faith is not None:
            entry["faithfulness"] = faith["methods"].get(name)
        methods[name] = entry
    report: dict[str, Any] = {
        "dataset": str(data),
        "attention_predictions": str(pred) if pred else None,
        "model": settings.model if model_methods or settings.faithfulness else None,
        "engine": settings.engine if model_methods or settings.faithfulness else None,
        "workers": settings.workers if model_methods or settings.faithfulness else None,
        "max_new_tokens": settings.max_new_tokens if model_methods else None,
        "rows_read": len(dataset.rows),
        "rows_evaluated": len(rows),
        "rows_skipped": len(dataset.problems),
        "rows_without_response_text": no_text,
        "input_problems": problems,
        "methods": methods,
    }
    if faith is not None:
        report["faithfulness"] = {
            **{k: v for k, v in faith.items() if k != "methods"},
            "random": faith["methods"][CONTROL],  # the control: k random sources removed
        }
    return report


def _markdown(data: Path, report: Mapping[str, Any]) -> str:
    methods = report["methods"]
    rows, read, no_text = report["rows_evaluated"], report["rows_read"], report["rows_without_response_text"]
    problems = report["input_problems"]
    header = (
        f"# Attribution metrics: {data.name}\n\n"
        f"{rows} of {read} rows evaluated"
        + (f" ({len(no_text)} without a response text)" if no_text else "")
        + (f"; {len(problems)} input problems (see metrics.json)" if problems else "")
        + (f"; model {report['model']}" if report.get("model") else "")
        + ". Metrics as in `omnitrace_core.evaluation.metrics` (= `score.py`); every method attributes "
        "the same response texts.\n\n"
    )
    costs = {name: m["cost"] for name, m in methods.items()}
    body = markdown_table({name: m["metrics"] for name, m in methods.items()}, costs=costs)
    body += "\n" + cost_table(costs)
    if "faithfulness" in report:
        faith = {name: m["faithfulness"] for name, m in methods.items() if m.get("faithfulness")}
        faith["random sources (control)"] = report["faithfulness"]["random"]
        body += "\n" + faithfulness_table(faith)
    return header + body
