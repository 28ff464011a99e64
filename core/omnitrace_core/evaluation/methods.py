"""The model-based methods of ``omnitrace eval`` and the per-row worker that runs them.

Every method attributes the *same* response text of a row, so the comparison is about
attribution, not about answers: a forced row's ``response``, or for a generated row the text
the default method generated (or the ``--pred`` text). Methods, by what they cost:

``omnitrace``
    The default tracer (AttMean, default config). On a generated row it attributes while it
    decodes (the answer and its citations come from one ``Tracer.generate``), so it adds no
    forward pass; on a forced row it is one teacher-forced pass.
ablations (``omnitrace-peak``, ``omnitrace-bias-none`` ... ``omnitrace-top1``, ``omnitrace-grounding``)
    The default config with one knob changed (``VARIANTS``). All of them, and ``omnitrace`` on
    forced rows, share ONE teacher-forced AttMean pass per row (``Tracer.forced_rows``) and
    differ only in ``Tracer.assemble_forced``. Each is costed as if run alone (1 forward pass,
    the pass's seconds plus its own assembly). ``omnitrace-grounding`` sets ``grounded`` from
    :func:`omnitrace_core.grounding.assess_grounding` (``unsupported`` -> false).
``omnitrace-rawatt``, ``omnitrace-attgrads``
    Other signals, default config, their own teacher-forced pass; AttGrads adds one backward
    pass per response token (and per reference row), so it is opt-in.
``self-cite``, ``contextcite``, ``contextcite-matched``
    Peers (:mod:`.selfcite`, :mod:`.contextcite_peer`) on the same
    model, prompt and forced text: the model's own ``[docN]`` label probabilities after each
    sentence, and ContextCite's source ablations with its default budget (64 passes) and with
    one ablation per source (``contextcite-matched``, 2-7 passes on the dev set).

Cost: each prediction row carries ``"cost": {"forward_passes", "backward_passes", "seconds"}``
(model passes to *attribute* the given text), so resumed runs keep it. Decoding that produced a
generated row's text is recorded under ``cost.generation`` of the ``omnitrace`` row.

The worker is built by :class:`ModelWorkerFactory`, a small frozen dataclass holding only
settings: it loads the model in the worker itself, so it pickles to Ray actors
(:func:`omnitrace_core.evaluation.engines.map_rows`).
"""

from __future__ import annotations

import functools
import importlib
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from omnitrace_core.config import TracerConfig
from omnitrace_core.errors import OmniTraceError
from omnitrace_core.evaluation.metrics import prediction_problems
from omnitrace_core.models import DEFAULT_MODEL

if TYPE_CHECKING:
    from omnitrace_core.tracer import ForcedRows, Tracer

Row = Mapping[str, Any]
Prediction = dict[str, Any]

DEFAULT_MAX_NEW_TOKENS = 128
ATTENTION_METHOD = "omnitrace"


class UnknownMethodError(OmniTraceError):
    """A method name that ``omnitrace eval`` does not know, or whose module is missing."""


def _variant_configs() -> dict[str, TracerConfig]:
    base = TracerConfig()
    m, c = base.mapping, base.curation

    def mapping(**kw: Any) -> TracerConfig:
        return base.model_copy(update={"mapping": m.model_copy(update=kw)})

    def curation(**kw: Any) -> TracerConfig:
        return base.model_copy(update={"curation": c.model_copy(update=kw)})

    return {
        "omnitrace-peak": mapping(rule="peak"),
        "omnitrace-bias-none": mapping(bias_correction="none"),
        "omnitrace-bias-prompt": mapping(bias_correction="prompt"),
        "omnitrace-bias-running": mapping(bias_correction="running"),
        "omnitrace-producing-rows": mapping(token_rows="producing"),
        "omnitrace-reference-all": mapping(prompt_reference="after_sources"),
        "omnitrace-previous-mapping": mapping(token_rows="producing", prompt_reference="after_sources"),
        "omnitrace-no-curation": curation(enabled=False),
        "omnitrace-no-pos": curation(pos_weights={}, other_pos_weight=1.0),
        "omnitrace-gamma0": curation(gamma=0.0),
        "omnitrace-no-run-coherence": curation(alpha=0.0),
        "omnitrace-paper-curation": curation(min_relative=0.0),
        "omnitrace-top1": curation(max_citations=1),
    }


#: Ablations computed from the shared AttMean pass: name -> config.
VARIANTS: dict[str, TracerConfig] = _variant_configs()
GROUNDING_METHOD = "omnitrace-grounding"
#: Other signals: name -> signal (default config otherwise).
SIGNAL_METHODS: dict[str, str] = {
    "omnitrace-attmean": "attmean",
    "omnitrace-learned": "learned",
    "omnitrace-rawatt": "rawatt",
    "omnitrace-attgrads": "attgrads",
}
#: Peers: name -> module that implements them.
PEER_METHODS: dict[str, str] = {
    "self-cite": "omnitrace_core.evaluation.selfcite",
    "contextcite": "omnitrace_core.evaluation.contextcite_peer",
    "contextcite-matched": "omnitrace_core.evaluation.contextcite_peer",
}

METHODS: tuple[str, ...] = (
    ATTENTION_METHOD,
    *SIGNAL_METHODS,
    *VARIANTS,
    GROUNDING_METHOD,
    *PEER_METHODS,
)
#: What ``omnitrace eval`` runs when no ``--method`` / ``--baseline`` is given. AttGrads is left
#: out: one backward pass per token made it ~40x slower than a forward pass on the dev rows.
#: ``omnitrace-learned`` too: it needs a calibrated model, and where there is one it is the
#: default method (``omnitrace``) already, with ``omnitrace-attmean`` beside it.
DEFAULT_METHODS: tuple[str, ...] = tuple(
    m for m in METHODS if m not in {"omnitrace-attgrads", "omnitrace-learned"}
)


def check_methods(names: Sequence[str]) -> list[str]:
    """The requested method names, deduplicated in order (``all`` = every method).

    Raises:
        UnknownMethodError: naming an unknown method, or a peer whose module cannot be imported.
    """
    out: list[str] = []
    for name in names:
        for n in METHODS if name == "all" else (name,):
            if n not in METHODS:
                raise UnknownMethodError(f"unknown method {n!r}; choose from {', '.join(METHODS)} (or 'all')")
            if n in PEER_METHODS:
                try:
                    importlib.import_module(PEER_METHODS[n])
                except ImportError as exc:
                    raise UnknownMethodError(
                        f"method {n!r} needs {PEER_METHODS[n]}, which cannot be imported: {exc}"
                    ) from exc
            if n not in out:
                out.append(n)
    return out


def matched_ablations(row: Row) -> int:
    """ContextCite's small budget: one ablation per source (at least 2, for the surrogate)."""
    return max(2, len(row["sources"]))


# ---------------------------------------------------------------- one row


def cost(forward: int = 0, backward: int = 0, seconds: float = 0.0, **extra: Any) -> dict[str, Any]:
    """A prediction row's ``cost`` entry."""
    return {
        "forward_passes": int(forward),
        "backward_passes": int(backward),
        "seconds": float(seconds),
        **extra,
    }


def empty_prediction(row_id: str, text: str, method: str) -> Prediction:
    """A prediction with no sentence (the text to attribute is empty)."""
    return {"id": row_id, "text": text, "method": method, "sentences": [], "cost": cost()}


def _finish(prediction: Prediction, method: str, spent: dict[str, Any]) -> dict[str, Any]:
    prediction = {**prediction, "method": method, "cost": spent}
    problems = prediction_problems(prediction)
    if problems:
        return {"error": f"unusable prediction: {'; '.join(problems)}"}
    return {"prediction": prediction}


@dataclass
class ModelWorker:
    """Runs the requested methods on one row (a task dict) with one loaded tracer.

    A task is ``{"id", "row", "text", "methods"}``; ``text`` None means "generate it first with
    the default method". Returns ``{method: {"prediction": ...} | {"error": "..."}}`` of plain
    values (picklable back from a Ray actor); a method that raises fails alone.
    """

    tracer: Tracer
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    batch_size: int = 1
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self, task: Mapping[str, Any]) -> Any:
        """One task's results, or for a group ``{"id", "tasks": [...]}`` (see
        :func:`group_tasks`) the list of its tasks' results, in order."""
        with self._lock:  # one model, one row (or one group) at a time
            if "tasks" in task:
                return self._run_group(list(task["tasks"]))
            return self._run(task)

    def _run_group(self, tasks: list[Mapping[str, Any]]) -> list[dict[str, dict[str, Any]]]:
        """Generate the texts a group lacks with :meth:`Tracer.generate_batch`, then run each task.

        Each task's results equal :meth:`_run` on it alone (a row's batched answer is its
        answer alone); a row whose generation fails fails alone, the others keep theirs.
        """
        to_generate = [t for t in tasks if t.get("text") is None]
        generated: dict[int, dict[str, Any]] = {}
        if to_generate:
            t0 = time.perf_counter()
            try:
                answers: list[Any] = self.tracer.generate_batch(
                    [(t["row"]["sources"], t["row"]["question"]) for t in to_generate],
                    batch_size=self.batch_size,
                    max_new_tokens=self.max_new_tokens,
                    return_exceptions=True,
                )
            except Exception as exc:  # a bad call, not a bad row: every row of the group fails
                answers = [exc] * len(to_generate)
            wall = time.perf_counter() - t0
            for t, answer in zip(to_generate, answers, strict=True):
                if isinstance(answer, Exception):
                    generated[id(t)] = {"error": f"{type(answer).__name__}: {answer}"}
                    continue
                # The row's share of the batched decoding, plus its own replay (attribution).
                rows = answer.timings.get("batch_size", 1.0) or 1.0
                seconds = answer.timings.get("batch_decode_s", 0.0) / rows + answer.timings.get(
                    "total_s", 0.0
                )
                if "batch_decode_s" not in answer.timings and "total_s" not in answer.timings:
                    seconds = wall / len(to_generate)
                generated[id(t)] = self._generated(t["row"], answer, seconds)
        return [self._run(t, generated.get(id(t))) for t in tasks]

    def _run(
        self, task: Mapping[str, Any], generated: dict[str, Any] | None = None
    ) -> dict[str, dict[str, Any]]:
        """``generated``: the default method's result for this row when it was generated
        already (in a batch); None generates it here when the task has no ``text``."""
        row, wanted = task["row"], list(task["methods"])
        text: str | None = task.get("text")
        results: dict[str, dict[str, Any]] = {}
        if text is None:
            if generated is None:
                generated = self._generate(row)
            results[ATTENTION_METHOD] = generated
            if "prediction" not in generated:  # nothing to attribute: the others fail with it
                failed = {"error": f"generation failed: {generated['error']}"}
                return {ATTENTION_METHOD: generated, **{m: failed for m in wanted if m != ATTENTION_METHOD}}
            text = str(generated["prediction"]["text"])
            wanted = [m for m in wanted if m != ATTENTION_METHOD]
        if not text.strip():
            results.update({m: {"prediction": empty_prediction(row["id"], text, m)} for m in wanted})
            return results
        shared = [m for m in wanted if m in (ATTENTION_METHOD, GROUNDING_METHOD) or m in VARIANTS]
        if shared:
            results.update(self._shared_pass(row, text, shared))
        for method in wanted:
            if method in SIGNAL_METHODS:
                results[method] = self._guard(functools.partial(self._signal, row, text, method))
            elif method in PEER_METHODS:
                results[method] = self._guard(functools.partial(self._peer, row, text, method))
        return results

    @staticmethod
    def _guard(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        try:
            return run()
        except Exception as exc:  # one method failing on a row never stops the others
            return {"error": f"{type(exc).__name__}: {exc}"}

    def _layout(self, row: Row) -> tuple[list[Any], Any]:
        from omnitrace_core.sources import build_prompt, validate_sources

        cfg = self.tracer.config
        srcs = validate_sources(row["sources"])
        return srcs, build_prompt(
            self.tracer.tokenizer, srcs, row["question"], cfg.system_prompt, cfg.split_sources
        )

    def _generate(self, row: Row) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            t0 = time.perf_counter()
            answer = self.tracer.generate(row["sources"], row["question"], max_new_tokens=self.max_new_tokens)
            return self._generated(row, answer, time.perf_counter() - t0)

        return self._guard(run)

    def _generated(self, row: Row, answer: Any, seconds: float) -> dict[str, Any]:
        """The default method's result for a generated row (``seconds``: its decoding's cost)."""

        def run() -> dict[str, Any]:
            generation: dict[str, Any] = {"forward_passes": answer.generated_tokens, "seconds": seconds}
            if "batch_size" in answer.timings:
                generation["batch_size"] = int(answer.timings["batch_size"])
            # Attribution rides on the decoding: no pass of its own (overhead: benchmarks/overhead.py).
            return _finish(answer.to_prediction(row["id"]), ATTENTION_METHOD, cost(generation=generation))

        return self._guard(run)

    def _assemble(
        self,
        row: Row,
        srcs: list[Any],
        layout: Any,
        forced: ForcedRows,
        cfg: TracerConfig,
        method: str,
        spent: dict[str, Any],
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        answer = self.tracer.assemble_forced(srcs, layout, forced, cfg)
        prediction = answer.to_prediction(row["id"])
        if method == GROUNDING_METHOD:
            from omnitrace_core.grounding import assess_grounding

            verdict = assess_grounding(answer)
            for sentence, judged in zip(prediction["sentences"], verdict.sentences, strict=True):
                sentence["grounded"] = judged.label != "unsupported"
                sentence["grounding"] = judged.label
        spent = {**spent, "seconds": spent["seconds"] + time.perf_counter() - t0}
        return _finish(prediction, method, spent)

    def _shared_pass(self, row: Row, text: str, methods: list[str]) -> dict[str, dict[str, Any]]:

        try:
            t0 = time.perf_counter()
            srcs, layout = self._layout(row)
            forced = self.tracer.forced_rows(layout, text, self.tracer.signal_for(self.tracer.config.signal))
            seconds = time.perf_counter() - t0
        except Exception as exc:
            return {m: {"error": f"{type(exc).__name__}: {exc}"} for m in methods}
        base = self.tracer.config
        out = {}
        for method in methods:
            cfg = base
            if method in VARIANTS:  # the tracer's prompt and signal, the variant's mapping / curation
                v = VARIANTS[method]
                cfg = base.model_copy(update={"mapping": v.mapping, "curation": v.curation})
            assemble = functools.partial(
                self._assemble, row, srcs, layout, forced, cfg, method, cost(1, 0, seconds)
            )
            out[method] = self._guard(assemble)
        return out

    def _signal(self, row: Row, text: str, method: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        signal = self.tracer.signal_for(SIGNAL_METHODS[method])
        srcs, layout = self._layout(row)
        forced = self.tracer.forced_rows(layout, text, signal)
        backward = len(forced.rows) + len(forced.reference_rows) if signal.needs_gradients else 0
        cfg = self.tracer.config.model_copy(update={"signal": signal.name})
        calibration = self.tracer.calibration
        if signal.name == "attmean":  # the paper's signal with the library's own defaults
            plain = TracerConfig()
            cfg = cfg.model_copy(update={"mapping": plain.mapping, "curation": plain.curation})
        elif signal.name == "learned" and calibration is not None:  # with the defaults fitted with it
            fitted = calibration.model_copy(update={"default_signal": "learned"}).tracer_config()
            cfg = cfg.model_copy(update={"mapping": fitted.mapping, "curation": fitted.curation})
        return self._assemble(
            row, srcs, layout, forced, cfg, method, cost(1, backward, time.perf_counter() - t0)
        )

    def _peer(self, row: Row, text: str, method: str) -> dict[str, Any]:
        module = importlib.import_module(PEER_METHODS[method])
        if method == "self-cite":
            prediction, passes, seconds = module.self_cite_prediction(self.tracer, row, text)
        elif method == "contextcite":
            prediction, passes, seconds = module.contextcite_prediction(self.tracer, row, text, None)
        else:
            prediction, passes, seconds = module.contextcite_prediction(
                self.tracer, row, text, matched_ablations(row)
            )
        return _finish(prediction, method, cost(passes, 0, seconds))


# ---------------------------------------------------------------- loading the model in a worker

_loaded: dict[tuple[str, int | None], Tracer] = {}
_load_lock = threading.Lock()


def load_tracer(model: str, threads: int | None = None) -> Tracer:
    """The tracer for ``model``, loaded once per process (workers of one process share it)."""
    import torch

    from omnitrace_core.tracer import Tracer

    threads = threads or int(os.environ.get("OMNITRACE_THREADS", "0")) or None
    with _load_lock:
        key = (model, threads)
        if key not in _loaded:
            if threads:
                torch.set_num_threads(threads)
            _loaded[key] = Tracer.from_pretrained(model)
        return _loaded[key]


@dataclass(frozen=True)
class ModelWorkerFactory:
    """Builds a :class:`ModelWorker` in the worker's process (picklable: settings only).

    Attributes:
        model: Packaged model name or local folder, loaded by the worker.
        max_new_tokens: Decoding budget of generated rows.
        threads: torch threads per worker (None: ``OMNITRACE_THREADS`` or torch's default).
        tracer: An already loaded tracer to use instead (local engine only: it is not shipped).
        batch_size: Generated rows decoded together (:meth:`Tracer.generate_batch`); 1: one by one.
    """

    model: str = DEFAULT_MODEL
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    threads: int | None = None
    tracer: Any = field(default=None, compare=False, repr=False)
    batch_size: int = 1

    def __call__(self) -> ModelWorker:
        tracer = self.tracer if self.tracer is not None else load_tracer(self.model, self.threads)
        return ModelWorker(tracer, self.max_new_tokens, self.batch_size)

    def __reduce__(self) -> Any:
        if self.tracer is not None:
            raise TypeError(
                "a ModelWorkerFactory holding a loaded tracer cannot be shipped to another process"
            )
        return (
            ModelWorkerFactory,
            (self.model, self.max_new_tokens, self.threads, None, self.batch_size),
        )
