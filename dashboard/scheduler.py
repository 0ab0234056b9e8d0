"""APScheduler wiring: the nightly retraining and "run now", in exactly one process.

Only `maskgate dashboard` starts a scheduler (never `create_app`, so a test client, a
second WSGI worker or a reloader's watcher process runs none), and a process refuses to
start a second one. Jobs have fixed ids, so re-adding replaces instead of doubling. Across
processes and machines the database lock in :class:`maskgate.store.TrainingRuns` makes
sure that two dashboards sharing a database never train at the same time.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from maskgate.core import utcnow
from maskgate.dashboard.jobs import RetrainingJob
from maskgate.store import RunStatus, RunTrigger, TrainingRun

log = logging.getLogger(__name__)

NIGHTLY_JOB_ID = "retrain-nightly"
MANUAL_JOB_ID = "retrain-manual"

_started_lock = threading.Lock()
_started: DashboardScheduler | None = None  # the one running in this process, if any


class SchedulerNotRunning(RuntimeError):
    """This process runs no scheduler (a test client, or a second web worker)."""


class RunInProgress(RuntimeError):
    """Another training run holds the lock."""


def parse_cron(expression: str) -> CronTrigger:
    """A trigger for a five-field crontab line (minute hour day month weekday), local time."""
    try:
        return CronTrigger.from_crontab(expression)
    except ValueError as exc:
        raise ValueError(
            f"dashboard.retrain_cron {expression!r} is not a crontab line "
            f"(minute hour day month weekday, e.g. '0 2 * * *'): {exc}"
        ) from None


class DashboardScheduler:
    def __init__(self, cron: str, job: RetrainingJob):
        self.cron = cron
        self.trigger = parse_cron(cron)
        self.job = job
        self._scheduler = BackgroundScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600}
        )

    @property
    def running(self) -> bool:
        return self._scheduler.running

    def start(self) -> None:
        global _started
        with _started_lock:
            if _started is not None:
                raise RuntimeError("a scheduler already runs in this process; jobs would run twice")
            self._scheduler.add_job(
                self.job.run_scheduled, self.trigger, id=NIGHTLY_JOB_ID, replace_existing=True
            )
            self._scheduler.start()
            _started = self
        log.info("scheduler started: retraining %r, next at %s", self.cron, self.next_run_at())

    def shutdown(self, wait: bool = False) -> None:
        global _started
        with _started_lock:
            if self._scheduler.running:
                self._scheduler.shutdown(wait=wait)
            if _started is self:
                _started = None

    def next_run_at(self, now: datetime | None = None) -> datetime | None:
        """When the nightly job fires next, in UTC (from the cron line, whether or not this process runs it).

        The cron line is in the server's local time, and so is what APScheduler answers.
        """
        job = self._scheduler.get_job(NIGHTLY_JOB_ID) if self.running else None
        if job is not None:
            when = job.next_run_time
        else:
            when = self.trigger.get_next_fire_time(None, (now or utcnow()).astimezone(self.trigger.timezone))
        return when.astimezone(UTC) if when is not None else None

    def run_now(self) -> TrainingRun:
        """Start a manual run in the background; its id comes back at once."""
        if not self.running:
            raise SchedulerNotRunning("this process runs no scheduler: start it with `maskgate dashboard`")
        run = self.job.start(RunTrigger.MANUAL)
        if run is None:
            raise RunInProgress("a training run is already in progress")
        try:
            self._scheduler.add_job(
                self.job.execute, "date", args=[run.run_id], id=MANUAL_JOB_ID, replace_existing=True
            )
        except Exception as exc:  # release the lock: nothing will execute this run
            self.job.runs.finish(run.run_id, RunStatus.FAILED, reason=f"could not be scheduled: {exc}")
            raise
        return run
