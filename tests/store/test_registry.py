"""Model versions and training runs on both databases, including the cross-process run lock."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from maskgate.const import MODEL_STATUSES, TRAINING_RUN_STATUSES
from maskgate.core import utcnow
from maskgate.store import (
    ModelRegistry,
    ModelStatus,
    RegistryError,
    RunStatus,
    RunTrigger,
    TrainingRuns,
    make_engine,
)
from maskgate.store.registry import ActiveModelChanged
from maskgate.store.schema import ModelVersionRow


@pytest.fixture
def registry(migrated_engine) -> ModelRegistry:
    return ModelRegistry(migrated_engine)


@pytest.fixture
def runs(migrated_engine) -> TrainingRuns:
    return TrainingRuns(migrated_engine)


def _register(registry: ModelRegistry, *versions: str) -> None:
    for version in versions:
        registry.register(version, f"models/{version}", "ab" * 32, {"macro_f1": 0.9}, card_sha256="cd" * 32)


def _active_count(engine) -> int:
    with engine.connect() as connection:
        query = select(func.count()).where(ModelVersionRow.status == "active")
        return connection.execute(query).scalar_one()


def test_statuses_match_the_schema_constraints():
    assert tuple(ModelStatus) == MODEL_STATUSES
    assert tuple(RunStatus) == TRAINING_RUN_STATUSES


def test_register_lists_newest_first_as_candidates(registry):
    _register(registry, "v1", "v2")
    versions = registry.list_versions()
    assert [v.version for v in versions] == ["v2", "v1"]
    assert all(v.status is ModelStatus.CANDIDATE for v in versions)
    assert versions[0].metrics == {"macro_f1": 0.9}
    assert (versions[0].sha256, versions[0].card_sha256) == ("ab" * 32, "cd" * 32)
    assert registry.active() is None


def test_duplicate_version_is_refused(registry):
    _register(registry, "v1")
    with pytest.raises(RegistryError, match="already registered"):
        _register(registry, "v1")


def test_promote_keeps_exactly_one_active(registry, migrated_engine):
    _register(registry, "v1", "v2")
    assert registry.promote("v1").is_active
    promoted = registry.promote("v2")
    assert promoted.is_active and promoted.promoted_at is not None
    assert registry.get("v1").status is ModelStatus.RETIRED
    assert registry.get("v1").retired_at is not None
    assert registry.active().version == "v2"
    assert registry.promote("v2").version == "v2"  # idempotent
    assert _active_count(migrated_engine) == 1


def test_promote_unknown_version(registry):
    with pytest.raises(RegistryError, match="no model version 'nope'"):
        registry.promote("nope")


def test_rollback_walks_back_through_promotions(registry):
    _register(registry, "a", "b", "c")
    start = utcnow()
    for i, version in enumerate(["a", "b", "c"]):
        registry.promote(version, now=start + timedelta(seconds=i))
    assert registry.rollback().version == "b"
    assert registry.get("c").status is ModelStatus.CANDIDATE  # rolled back: out of the rollback history
    assert registry.rollback().version == "a"
    with pytest.raises(RegistryError, match="no earlier model"):
        registry.rollback()
    assert registry.active().version == "a"


def test_a_version_rolled_back_is_never_a_rollback_target_again(registry):
    """Promote A, then B; B is rolled back (faulty); next night D is promoted and rolled back: A, not B."""
    _register(registry, "a", "b", "d")
    start = utcnow()
    registry.promote("a", now=start)
    registry.promote("b", now=start + timedelta(minutes=1))
    assert registry.rollback(now=start + timedelta(minutes=2)).version == "a"
    registry.promote("d", now=start + timedelta(minutes=3))
    assert registry.rollback(now=start + timedelta(minutes=4)).version == "a"
    rolled_back = registry.get("b")
    assert rolled_back.status is ModelStatus.CANDIDATE
    # its history stays: when it was promoted, and when it was rolled back
    assert (rolled_back.promoted_at, rolled_back.retired_at) == (
        start + timedelta(minutes=1),
        start + timedelta(minutes=2),
    )
    with pytest.raises(RegistryError, match="no earlier model"):
        registry.rollback(now=start + timedelta(minutes=5))
    assert registry.promote("b", now=start + timedelta(minutes=6)).is_active  # staff may promote it again
    assert registry.rollback(now=start + timedelta(minutes=7)).version == "a"


def test_a_promotion_expecting_another_active_model_changes_nothing(registry):
    """Compare-and-set: a run promotes its candidate only if its champion is still the active model."""
    _register(registry, "a", "b", "c")
    start = utcnow()
    registry.promote("a", now=start)
    registry.promote("b", now=start + timedelta(seconds=1))
    registry.rollback(now=start + timedelta(seconds=2))  # meanwhile staff roll b back
    with pytest.raises(ActiveModelChanged, match="the active model is a, not b") as changed:
        registry.promote("c", expected_active="b")
    assert (changed.value.expected, changed.value.actual) == ("b", "a")
    assert registry.active().version == "a" and registry.get("c").status is ModelStatus.CANDIDATE
    assert registry.promote("c", expected_active="a").is_active


def test_a_first_promotion_stands_back_for_one_made_meanwhile(registry):
    """The first retraining run makes the gates' starting model active, unless staff made one active
    while it started: theirs stands."""
    _register(registry, "theirs", "start")
    assert registry.promote("theirs", first=True).is_active  # none was active: it goes through
    with pytest.raises(ActiveModelChanged, match="the active model is theirs, not none"):
        registry.promote("start", first=True)
    assert registry.active().version == "theirs" and registry.get("start").status is ModelStatus.CANDIDATE


def test_a_check_that_refuses_the_version_changes_nothing(registry):
    """The dashboard's folder check runs before the change, inside its transaction."""
    _register(registry, "a", "b")
    start = utcnow()
    registry.promote("a", now=start)
    registry.promote("b", now=start + timedelta(seconds=1))

    def refuse(model):
        raise ValueError(f"{model.version}: its folder does not verify")

    with pytest.raises(ValueError, match="a: its folder does not verify"):
        registry.rollback(check=refuse)
    with pytest.raises(ValueError, match="a: its folder does not verify"):
        registry.promote("a", check=refuse)
    assert registry.active().version == "b" and registry.get("a").status is ModelStatus.RETIRED
    checked = []
    assert registry.rollback(check=checked.append).version == "a"
    assert [model.version for model in checked] == ["a"]


def test_rollback_without_an_active_model(registry):
    _register(registry, "a")
    with pytest.raises(RegistryError, match="no active model"):
        registry.rollback()


def test_concurrent_promotions_leave_one_active(database_url, migrated_engine):
    registry = ModelRegistry(migrated_engine)
    versions = [f"v{i}" for i in range(6)]
    _register(registry, *versions)
    engines = [make_engine(database_url) for _ in versions]
    barrier = threading.Barrier(len(versions))
    errors: list[BaseException] = []

    def promote(engine, version):
        barrier.wait()
        try:
            ModelRegistry(engine).promote(version)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=pair) for pair in zip(engines, versions, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for engine in engines:
        engine.dispose()
    assert errors == []
    assert _active_count(migrated_engine) == 1


def test_concurrent_promotions_and_rollbacks_leave_one_active(database_url, migrated_engine):
    registry = ModelRegistry(migrated_engine)
    versions = [f"v{i}" for i in range(6)]
    _register(registry, *versions)
    start = utcnow()
    for i, version in enumerate(versions[:3]):  # a history to roll back through
        registry.promote(version, now=start + timedelta(seconds=i))
    calls = [lambda r: r.promote("v3"), lambda r: r.promote("v4"), lambda r: r.promote("v5")]
    calls += [lambda r: r.rollback()] * 3
    engines = [make_engine(database_url) for _ in calls]
    barrier = threading.Barrier(len(calls))
    errors: list[BaseException] = []

    def call(engine, change):
        barrier.wait()
        try:
            change(ModelRegistry(engine))
        except RegistryError:
            pass  # a rollback may find nothing earlier: that is an answer, not a race
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=pair) for pair in zip(engines, calls, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for engine in engines:
        engine.dispose()
    assert errors == []
    assert _active_count(migrated_engine) == 1
    active = registry.active()
    assert active is not None and active.retired_at is None and active.promoted_at is not None


def test_run_lifecycle(runs):
    run = runs.try_start(RunTrigger.MANUAL)
    assert run is not None and run.is_running and run.trigger is RunTrigger.MANUAL
    assert runs.running() == run
    runs.set_log(run.run_id, "epoch 1\n")
    assert runs.get(run.run_id).log == "epoch 1\n"
    done = runs.finish(
        run.run_id, RunStatus.REJECTED, candidate_version="v2", metrics={"macro_f1": 0.8}, reason="worse"
    )
    assert done.status is RunStatus.REJECTED and done.finished_at is not None
    assert (done.candidate_version, done.metrics, done.reason, done.log) == (
        "v2",
        {"macro_f1": 0.8},
        "worse",
        "epoch 1\n",
    )
    assert runs.running() is None
    with pytest.raises(RegistryError, match="not running"):
        runs.finish(run.run_id, RunStatus.FAILED)


def test_only_one_run_at_a_time(runs):
    first = runs.try_start(RunTrigger.SCHEDULE)
    assert first is not None
    assert runs.try_start(RunTrigger.MANUAL) is None
    runs.finish(first.run_id, RunStatus.SUCCEEDED)
    second = runs.try_start(RunTrigger.MANUAL)
    assert second is not None and second.run_id != first.run_id
    assert [r.run_id for r in runs.list_runs()] == [second.run_id, first.run_id]
    assert [r.run_id for r in runs.list_runs(before=second.run_id)] == [first.run_id]


def test_listed_runs_come_without_their_logs(runs):
    run = runs.try_start(RunTrigger.SCHEDULE)
    runs.finish(run.run_id, RunStatus.FAILED, reason="boom", log="x" * 200_000)
    assert [(r.run_id, r.reason, r.log) for r in runs.list_runs()] == [(run.run_id, "boom", "")]
    assert runs.get(run.run_id).log == "x" * 200_000


def test_a_stale_run_is_abandoned(runs):
    old = runs.try_start(RunTrigger.SCHEDULE, now=utcnow() - timedelta(hours=13))
    fresh = runs.try_start(RunTrigger.MANUAL)
    assert fresh is not None
    abandoned = runs.get(old.run_id)
    assert abandoned.status is RunStatus.FAILED and "abandoned" in abandoned.reason


def test_racing_lock_attempts_from_two_engines_never_both_succeed(database_url, migrated_engine):
    """Many rounds of two connections (as two processes) asking for the lock at the same instant."""
    engines = [make_engine(database_url), make_engine(database_url)]
    stores = [TrainingRuns(engine) for engine in engines]
    try:
        for _ in range(15):
            barrier = threading.Barrier(2)
            results: list = []

            def attempt(store: TrainingRuns, barrier: threading.Barrier, results: list) -> None:
                barrier.wait()
                results.append(store.try_start(RunTrigger.MANUAL))

            threads = [threading.Thread(target=attempt, args=(store, barrier, results)) for store in stores]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            started = [run for run in results if run is not None]
            assert len(started) == 1
            stores[0].finish(started[0].run_id, RunStatus.SUCCEEDED)
    finally:
        for engine in engines:
            engine.dispose()


class _SlowRuns(TrainingRuns):
    """Pauses inside the locking transaction, between taking its turn and checking for a run."""

    def __init__(self, engine, inside: threading.Event):
        super().__init__(engine)
        self.inside = inside

    def _abandon_stale(self, connection, now):
        super()._abandon_stale(connection, now)
        self.inside.set()
        time.sleep(0.5)


def test_a_second_attempt_waits_for_the_first_transaction(database_url, migrated_engine):
    """The widest possible race: the second attempt arrives while the first is mid-transaction."""
    engines = [make_engine(database_url), make_engine(database_url)]
    inside = threading.Event()
    slow = _SlowRuns(engines[0], inside)
    results: dict[str, object] = {}
    thread = threading.Thread(target=lambda: results.update(slow=slow.try_start(RunTrigger.SCHEDULE)))
    thread.start()
    try:
        assert inside.wait(10)
        results["fast"] = TrainingRuns(engines[1]).try_start(RunTrigger.MANUAL)
        thread.join()
        assert results["slow"] is not None
        assert results["fast"] is None
    finally:
        thread.join()
        for engine in engines:
            engine.dispose()
