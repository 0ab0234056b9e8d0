"""The retraining job and its scheduler: run now, one run at a time, outcomes, one scheduler per process."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from maskgate.dashboard.app import services
from maskgate.dashboard.jobs import RetrainingJob, RunResult, load_trainer, no_trainer
from maskgate.dashboard.scheduler import (
    MANUAL_JOB_ID,
    NIGHTLY_JOB_ID,
    DashboardScheduler,
    parse_cron,
)
from maskgate.store import RunStatus, RunTrigger, TrainingRuns


def _wait_finished(runs: TrainingRuns, run_id: int, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = runs.get(run_id)
        if not run.is_running:
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} still running after {timeout} s")


@pytest.fixture
def started(app):
    scheduler = services(app).scheduler
    scheduler.start()
    yield scheduler
    scheduler.shutdown(wait=True)


def test_run_now_records_the_default_trainers_honest_failure(admin, app, started):
    response = admin.api_post("/api/v1/schedule/run")
    assert response.status_code == 202 and response.json["trigger"] == "manual"
    run = _wait_finished(services(app).runs, response.json["run_id"])
    assert run.status is RunStatus.FAILED and run.reason == "no retraining job installed"
    assert "does not exist yet" in run.log


def test_run_now_from_the_page_with_a_trainer(admin, app, started):
    def trainer(run, log):
        log("training on 12 crops")
        return RunResult(
            RunStatus.SUCCEEDED, candidate_version="m2", metrics={"macro_f1": 0.93}, reason="better"
        )

    started.job.trainer = trainer
    response = admin.post("/schedule/run")
    assert response.status_code == 302
    run_id = int(response.headers["Location"].rsplit("/", 1)[1])
    run = _wait_finished(services(app).runs, run_id)
    assert run.status is RunStatus.SUCCEEDED and run.candidate_version == "m2"
    assert "training on 12 crops" in run.log
    page = admin.get(f"/schedule/runs/{run_id}").text
    assert "training on 12 crops" in page and "0.9300" in page


def test_run_now_while_a_run_is_in_progress_is_409(admin, app, started):
    services(app).runs.try_start(RunTrigger.SCHEDULE)  # e.g. another dashboard process
    response = admin.api_post("/api/v1/schedule/run")
    assert response.status_code == 409 and "already in progress" in response.json["error"]
    assert admin.post("/schedule/run").status_code == 409


def test_a_crashing_trainer_is_recorded_as_failed_with_its_traceback(migrated_engine):
    def trainer(run, log):
        raise RuntimeError("out of memory")

    runs = TrainingRuns(migrated_engine)
    job = RetrainingJob(runs, trainer)
    run = job.run_scheduled()
    assert run.status is RunStatus.FAILED and run.reason == "RuntimeError: out of memory"
    assert "Traceback" in run.log and run.trigger is RunTrigger.SCHEDULE
    assert runs.running() is None  # the lock is released


def test_a_result_that_cannot_be_stored_still_releases_the_lock(migrated_engine):
    import numpy as np

    runs = TrainingRuns(migrated_engine)
    metrics = {"macro_f1": np.float32(0.9)}  # DESIGN's trap: JSON cannot encode numpy numbers
    run = RetrainingJob(runs, lambda run, log: RunResult(RunStatus.SUCCEEDED, "m2", metrics)).run_scheduled()
    assert run.status is RunStatus.FAILED and "could not be recorded" in run.reason
    assert "float32" in run.log
    assert runs.running() is None and runs.try_start(RunTrigger.MANUAL) is not None


def test_a_trainer_that_forgets_to_finish_is_failed(migrated_engine):
    runs = TrainingRuns(migrated_engine)
    run = RetrainingJob(runs, lambda run, log: RunResult(RunStatus.RUNNING)).run_scheduled()
    assert run.status is RunStatus.FAILED


def test_a_run_interrupted_by_a_stopping_process_is_failed_and_its_lock_released(migrated_engine):
    """`maskgate dashboard` stops without waiting for the run it trains: it records the run as failed."""
    runs = TrainingRuns(migrated_engine)
    training, release = threading.Event(), threading.Event()

    def trainer(run, log):
        log("training...")
        training.set()
        release.wait(10)
        return RunResult(RunStatus.SUCCEEDED, "m2", reason="promoted")

    job = RetrainingJob(runs, trainer)
    run = job.start(RunTrigger.SCHEDULE)
    finished: list = []
    thread = threading.Thread(target=lambda: finished.append(job.execute(run.run_id)))
    thread.start()
    try:
        assert training.wait(10)
        assert job.interrupt("interrupted: the dashboard stopped") == [run.run_id]
        interrupted = runs.get(run.run_id)
        assert (
            interrupted.status is RunStatus.FAILED
            and interrupted.reason == "interrupted: the dashboard stopped"
        )
        assert (
            "training..." in interrupted.log
            and "failed: interrupted: the dashboard stopped" in interrupted.log
        )
        assert runs.running() is None  # the next run need not wait 12 hours
        assert job.interrupt("again") == []
    finally:
        release.set()
        thread.join(10)
    # had the process lived on, the trainer's late result would not overwrite what was recorded
    assert finished[0].status is RunStatus.FAILED and runs.get(run.run_id).reason == interrupted.reason


def test_the_nightly_job_skips_while_another_run_holds_the_lock(migrated_engine):
    runs = TrainingRuns(migrated_engine)
    holder = runs.try_start(RunTrigger.MANUAL)
    assert RetrainingJob(runs, no_trainer).run_scheduled() is None
    assert [r.run_id for r in runs.list_runs()] == [holder.run_id]


def test_jobs_have_fixed_ids_and_one_scheduler_per_process(admin, app, started, migrated_engine):
    assert started.running
    assert [job.id for job in started._scheduler.get_jobs()] == [NIGHTLY_JOB_ID]
    started._scheduler.pause()  # keep the manual job queued, to see its id
    release = threading.Event()
    started.job.trainer = lambda run, log: release.wait(10) and RunResult(RunStatus.SUCCEEDED)
    response = admin.api_post("/api/v1/schedule/run")
    assert response.status_code == 202
    assert {job.id for job in started._scheduler.get_jobs()} == {NIGHTLY_JOB_ID, MANUAL_JOB_ID}
    started._scheduler.resume()
    release.set()
    assert _wait_finished(services(app).runs, response.json["run_id"]).status is RunStatus.SUCCEEDED
    other = DashboardScheduler("0 3 * * *", RetrainingJob(TrainingRuns(migrated_engine)))
    with pytest.raises(RuntimeError, match="already runs in this process"):
        other.start()
    assert not other.running
    started.shutdown()
    other.start()  # once the first is gone, another may start
    other.shutdown()


def test_next_run_follows_the_cron_line(migrated_engine):
    scheduler = DashboardScheduler("30 2 * * *", RetrainingJob(TrainingRuns(migrated_engine)))
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    when = scheduler.next_run_at(now)
    assert when > now and when.minute == 30 and when.astimezone(scheduler.trigger.timezone).hour == 2
    assert when.tzinfo is UTC  # the cron line is local time; what the dashboard shows and serves is UTC
    assert when - now <= timedelta(days=1)


def test_next_run_of_a_running_scheduler_is_utc(admin, started):
    when = started.next_run_at()
    assert when.tzinfo is UTC and when.astimezone(started.trigger.timezone).hour == 2
    assert admin.get("/api/v1/schedule").json["next_run_at"].endswith("+00:00")


def test_bad_cron_lines_are_explained():
    with pytest.raises(ValueError, match="not a crontab line"):
        parse_cron("0 2 * *")
    with pytest.raises(ValueError, match="not a crontab line"):
        parse_cron("61 2 * * *")


def test_load_trainer_falls_back_until_the_retraining_job_exists():
    assert load_trainer("maskgate.no_such_module_here") is no_trainer
    assert load_trainer("maskgate.const") is no_trainer  # a module without `trainer`
