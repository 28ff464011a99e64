"""Row engines (local, ray): order kept, failures recorded per row, the run goes on."""

from __future__ import annotations

import os
import pickle
import sys

import pytest

from omnitrace_core.errors import InvalidInputError, UnknownNameError
from omnitrace_core.evaluation.engines import RowOutcome, _dump_outcome, _in_order, map_rows

# Ray Data deep-copies its DataContext for each dataset, which trips its own deprecation warnings.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


def _make_worker():
    def work(row):
        if row["id"] == "bad":
            raise ValueError("row is broken")
        return row["x"] * 2

    return work


def test_local_engine_keeps_order_and_records_failures():
    rows = [{"id": "a", "x": 1}, {"id": "bad", "x": 0}, {"id": "c", "x": 3}]
    outcomes = list(map_rows(rows, _make_worker))
    assert [o.row_id for o in outcomes] == ["a", "bad", "c"]
    assert [o.result for o in outcomes] == [2, None, 6]
    assert outcomes[1].error == "ValueError: row is broken"


def test_unknown_engine_is_named():
    with pytest.raises(UnknownNameError, match="unknown engine 'spark'"):
        map_rows([{"id": "a"}], _make_worker, engine="spark")


def test_no_rows_builds_no_worker():
    built = []
    assert list(map_rows([], lambda: built.append(1) or (lambda r: r))) == []
    assert built == []


# --- the ray engine -------------------------------------------------------------------------
# One Ray instance for the module (starting Ray costs seconds); the order/failure/one-build
# tests share one 20-row run on 2 actors, since each Ray Data run starts its actors afresh.

_BUILDS = 0  # per process: each Ray actor is its own process, so this counts builds per actor


def _make_counting_worker():
    """Module-level (picklable by reference) factory whose results say which actor ran the row."""
    global _BUILDS
    _BUILDS += 1
    builds = _BUILDS
    work = _make_worker()

    def counting(row):
        return {"value": work(row), "pid": os.getpid(), "builds": builds}

    return counting


def _make_broken_worker():
    raise OSError("weights folder /nowhere is missing")


ROWS_20 = [{"id": f"r{i:02d}", "x": i} for i in range(19)]
ROWS_20.insert(7, {"id": "bad", "x": 0})


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="the ray engine needs ray[data] (the eval extra)")
    pytest.importorskip("ray.data", reason="the ray engine needs ray[data] (the eval extra)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        try:
            yield ray
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def ray_outcomes(ray_local):
    return list(map_rows(ROWS_20, _make_counting_worker, engine="ray", workers=2))


def _without_actor(outcomes):
    return [
        RowOutcome(o.index, o.row_id, None if o.result is None else o.result["value"], o.error)
        for o in outcomes
    ]


def test_ray_engine_matches_local_engine(ray_outcomes):
    local = list(map_rows(ROWS_20, _make_counting_worker))
    assert _without_actor(ray_outcomes) == _without_actor(local)


def test_ray_engine_keeps_row_order_and_records_the_failing_row(ray_outcomes):
    assert [o.index for o in ray_outcomes] == list(range(20))
    assert [o.row_id for o in ray_outcomes] == [row["id"] for row in ROWS_20]
    (failed,) = [o for o in ray_outcomes if o.error]
    assert (failed.index, failed.row_id, failed.result) == (7, "bad", None)
    assert failed.error == "ValueError: row is broken"


def test_ray_engine_builds_one_worker_per_actor(ray_outcomes):
    ran = [o.result for o in ray_outcomes if o.result is not None]
    pids = {r["pid"] for r in ran}
    assert os.getpid() not in pids  # rows ran in actors, not in the driver
    assert 1 <= len(pids) <= 2  # workers=2: at most two actors
    assert {r["builds"] for r in ran} == {1}  # make_worker ran once per actor, not per row


def test_ray_engine_raises_the_worker_build_error(ray_local):
    with pytest.raises(OSError, match="weights folder /nowhere is missing"):
        list(map_rows(ROWS_20[:3], _make_broken_worker, engine="ray", workers=2))


def test_ray_engine_refuses_more_workers_than_the_running_instance_has_cpus(ray_local):
    with pytest.raises(InvalidInputError, match=r"workers=3 but the running Ray instance has 2 CPU"):
        list(map_rows(ROWS_20[:3], _make_counting_worker, engine="ray", workers=3))


def test_ray_engine_is_listed_when_the_engine_name_is_unknown():
    with pytest.raises(UnknownNameError, match=r"available: local, ray"):
        map_rows([{"id": "a"}], _make_worker, engine="rya")


def test_ray_engine_without_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'omnitrace-integrations\[eval\]'"):
        map_rows([{"id": "a"}], _make_worker, engine="ray")


def test_ray_engine_without_rows_needs_no_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    assert list(map_rows([], _make_worker, engine="ray")) == []


def test_unpicklable_result_becomes_the_rows_error():
    outcome = pickle.loads(_dump_outcome(RowOutcome(3, "c", result=lambda: None)))
    assert (outcome.index, outcome.row_id, outcome.result) == (3, "c", None)
    assert "result of type function cannot be pickled" in outcome.error


def test_reorder_buffer_yields_in_index_order_and_refuses_lost_rows():
    shuffled = [RowOutcome(i, str(i)) for i in (2, 0, 1, 4, 3)]
    assert [o.index for o in _in_order(iter(shuffled), 5)] == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError, match="no outcome for row 1 of 3"):
        list(_in_order(iter([RowOutcome(0, "0"), RowOutcome(2, "2")]), 3))
