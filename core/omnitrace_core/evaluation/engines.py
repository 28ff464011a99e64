"""Row engines: map a per-row function over benchmark rows, keeping order and recording failures.

An engine takes ``make_worker`` (called once per worker: it loads the model) and yields one
:class:`RowOutcome` per row, in row order. A row whose worker call raises becomes an outcome
with ``error`` set; the run goes on. ``local`` runs in this process; ``ray`` runs the rows on a
Ray Data actor pool (one worker, hence one model, per actor), locally or on a cluster. Both are
registered in :data:`ENGINES` and produce the same outcomes.

Ray is imported only inside :func:`ray_engine`, so ``omnitrace_core`` stays importable without it.
"""

from __future__ import annotations

import os
import pickle
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from omnitrace_core.errors import InvalidInputError, UnknownNameError
from omnitrace_core.log import get_logger

logger = get_logger()

Row = dict[str, Any]
Worker = Callable[[Row], Any]


@dataclass(frozen=True)
class RowOutcome:
    """What happened to one row: its result, or the error that stopped it."""

    index: int
    row_id: str
    result: Any = None
    error: str | None = None


class Engine(Protocol):
    def __call__(
        self, rows: Sequence[Row], make_worker: Callable[[], Worker], *, workers: int, address: str | None
    ) -> Iterator[RowOutcome]: ...


def _call(worker: Worker, index: int, row: Row) -> RowOutcome:
    row_id = str(row.get("id", index))
    try:
        return RowOutcome(index=index, row_id=row_id, result=worker(row))
    except Exception as exc:  # a crashing row is recorded, never the whole run
        return RowOutcome(index=index, row_id=row_id, error=f"{type(exc).__name__}: {exc}")


def local_engine(
    rows: Sequence[Row], make_worker: Callable[[], Worker], *, workers: int = 1, address: str | None = None
) -> Iterator[RowOutcome]:
    """Run every row in this process with one worker (``workers`` and ``address`` are ignored)."""
    if not rows:
        return
    worker = make_worker()
    for index, row in enumerate(rows):
        yield _call(worker, index, row)


_EVAL_EXTRA = "pip install 'omnitrace-integrations[eval]'"


@dataclass(frozen=True)
class _BuildFailure:
    """Sent instead of an outcome when ``make_worker`` raised inside an actor.

    The local engine lets that error escape; sending it back as data lets the driver raise the
    same exception at once, instead of Ray Data restarting the actor until its retry budget is
    spent and then raising its own ``ActorDiedError``.
    """

    error: BaseException | None
    text: str


class _RowActor:
    """Ray Data actor body: builds one worker and runs it on one-row batches.

    Ray Data constructs this class once per actor of the pool, so ``make_worker`` (which loads
    the model) runs once per actor, not once per row. Rows arrive pickled (``payload``) so that
    any row dict survives the trip, whatever its column types; the outcome goes back pickled too,
    so any picklable result (not only Arrow-friendly ones) comes through unchanged. The class is
    module-level (not built inside the engine) so that a cluster unpickles it by reference from
    the installed package.
    """

    def __init__(self, make_worker: Callable[[], Worker]) -> None:
        self._worker: Worker | None = None
        self._failure: bytes | None = None
        try:
            self._worker = make_worker()
        except Exception as exc:
            self._failure = _dump_failure(exc)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        indices = [int(index) for index in batch["index"]]
        if self._worker is None:
            assert self._failure is not None
            return {"index": indices, "outcome": [self._failure] * len(indices)}
        outcomes = [
            _dump_outcome(_call(self._worker, index, pickle.loads(payload)))
            for index, payload in zip(indices, batch["payload"], strict=True)
        ]
        return {"index": indices, "outcome": outcomes}


def _dump_failure(exc: Exception) -> bytes:
    text = "".join(traceback.format_exception(exc))
    try:
        return pickle.dumps(_BuildFailure(error=exc, text=text))
    except Exception:  # an unpicklable exception still reaches the driver as text
        return pickle.dumps(_BuildFailure(error=None, text=text))


def _dump_outcome(outcome: RowOutcome) -> bytes:
    """Pickle an outcome; an unpicklable result becomes that row's error instead of killing the run."""
    try:
        return pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        failed = RowOutcome(
            index=outcome.index,
            row_id=outcome.row_id,
            error=f"result of type {type(outcome.result).__name__} cannot be pickled back "
            f"to the driver ({type(exc).__name__}: {exc}); return a dict of plain values",
        )
        return pickle.dumps(failed, protocol=pickle.HIGHEST_PROTOCOL)


def _load_outcome(data: bytes) -> RowOutcome:
    """Unpickle an actor's outcome, raising the actor's ``make_worker`` error if it sent one."""
    outcome = pickle.loads(data)
    if isinstance(outcome, _BuildFailure):
        if outcome.error is None:
            raise RuntimeError(f"make_worker failed in a Ray actor:\n{outcome.text}")
        outcome.error.add_note(f"raised by make_worker in a Ray actor:\n{outcome.text}")
        raise outcome.error
    assert isinstance(outcome, RowOutcome)
    return outcome


def _import_ray() -> Any:
    """Import ray on first use: core must not need it, and the error must say which extra adds it."""
    try:
        import ray
        import ray.data  # ray[data] is the extra; bare ray lacks it
    except ImportError as exc:
        raise ImportError(
            f"the 'ray' engine needs Ray Data, which is not installed ({exc}); {_EVAL_EXTRA}"
        ) from exc
    return ray


def _ensure_ray(ray: Any, workers: int, address: str | None) -> None:
    """Connect to Ray, reusing an initialized instance (whatever its address).

    ``address=None`` starts a private local instance sized to ``workers`` CPUs (one per actor),
    without the dashboard and quietly. Any other address (``"auto"``, ``"ray://head:10001"``)
    connects to that cluster, whose own resources size the pool. ``RAY_AUTH_MODE`` defaults to
    ``disabled`` so a local run needs no token; set it yourself for an authenticated cluster.
    The instance is left up, so a second call in the same process (``omnitrace eval`` maps
    predictions, then faithfulness) does not pay Ray's startup again; Ray shuts it down at exit.

    Raises:
        ConnectionError: ``address`` names a cluster that cannot be reached.
        InvalidInputError: without ``address``, the Ray instance already running has fewer CPUs
            than ``workers``: the pool's actors (one CPU each) would wait forever.
    """
    if not ray.is_initialized():
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        quiet: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": False}
        if address is None:
            ray.init(num_cpus=workers, include_dashboard=False, **quiet)
        else:
            try:
                ray.init(address=address, **quiet)
            except ConnectionError as exc:
                raise ConnectionError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from exc
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if cpus < workers:
        if address is None:
            raise InvalidInputError(
                f"workers={workers} but the running Ray instance has {cpus} CPU(s); each worker is an "
                "actor holding one CPU, so the run would never start: lower workers or ray.shutdown() first"
            )
        # An autoscaling cluster may add nodes once the actors are requested: only warn.
        logger.warning("ray_cluster_short_of_cpus", address=address, cpus=cpus, workers=workers)


def ray_engine(
    rows: Sequence[Row], make_worker: Callable[[], Worker], *, workers: int = 1, address: str | None = None
) -> Iterator[RowOutcome]:
    """Run the rows on a Ray Data pool of ``workers`` actors, each holding one worker.

    Ray is imported here, eagerly, so a missing extra fails at the call rather than midway
    through a caller's setup; Ray itself is started lazily, on the first outcome requested.
    Outcomes stream back as actors finish rows and are yielded in row order (a small reorder
    buffer holds only the outcomes that overtook a slower row). ``make_worker`` and the rows are
    shipped to the actors with cloudpickle, so a cluster's Python environment must be able to
    import whatever they reference (this package, the packaged model). An initialized Ray is
    reused; otherwise one is started (``address=None``) or joined, and left up for later calls.

    Raises:
        ImportError: Ray Data is not installed (the message names the extra to install).
    """
    if not rows:
        return iter(())
    return _ray_outcomes(_import_ray(), rows, make_worker, workers=workers, address=address)


def _ray_outcomes(
    ray: Any, rows: Sequence[Row], make_worker: Callable[[], Worker], *, workers: int, address: str | None
) -> Iterator[RowOutcome]:
    """The ray engine's generator: nothing (not even Ray) starts until the first outcome is asked for."""
    _ensure_ray(ray, workers, address)
    items = [
        {"index": index, "payload": pickle.dumps(row, protocol=pickle.HIGHEST_PROTOCOL)}
        for index, row in enumerate(rows)
    ]
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _RowActor,
        fn_constructor_args=(make_worker,),
        compute=ray.data.ActorPoolStrategy(size=workers),
        batch_size=1,
        batch_format="numpy",
        num_cpus=1,
    )
    del items  # from_items put the rows in the object store; don't keep a second driver copy
    # One block per row lets an idle actor take the next row (rows are slow: one model
    # generation each). preserve_order keeps the output in row order, and the reorder
    # buffer below guarantees it anyway. Other Ray Data settings (progress bars, logging)
    # come from ray.data.DataContext.get_current(), so a caller can tune them.
    dataset.context.execution_options.preserve_order = True
    records = iter(dataset.iter_rows())
    try:
        yield from _in_order((_load_outcome(record["outcome"]) for record in records), len(rows))
    finally:
        # Stop Ray Data's executor now (on an error or an early break), while Ray is surely
        # up: left to garbage collection it could run after a ray.shutdown() and restart Ray.
        close = getattr(records, "close", None)
        if close is not None:
            close()


def _in_order(outcomes: Iterator[RowOutcome], total: int) -> Iterator[RowOutcome]:
    """Yield outcomes by ascending index as soon as each next index is available.

    Raises:
        RuntimeError: if the engine returned fewer outcomes than rows; dropping rows silently
            would skew every metric computed from the outcomes.
    """
    pending: dict[int, RowOutcome] = {}
    expected = 0
    for outcome in outcomes:
        pending[outcome.index] = outcome
        while expected in pending:
            yield pending.pop(expected)
            expected += 1
    if expected != total:
        raise RuntimeError(
            f"ray engine returned no outcome for row {expected} of {total}; the run is incomplete"
        )


ENGINES: dict[str, Engine] = {"local": local_engine, "ray": ray_engine}


def map_rows(
    rows: Sequence[Row],
    make_worker: Callable[[], Worker],
    *,
    engine: str = "local",
    workers: int = 1,
    address: str | None = None,
) -> Iterator[RowOutcome]:
    """Outcomes of ``make_worker()(row)`` for every row, in row order."""
    if engine not in ENGINES:
        raise UnknownNameError(f"unknown engine {engine!r}; available: {', '.join(sorted(ENGINES))}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return ENGINES[engine](rows, make_worker, workers=workers, address=address)
