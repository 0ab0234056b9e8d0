"""The retraining job as the dashboard runs it: lock, run the trainer, record the outcome.

The training itself belongs to the retraining issue. It plugs in as a *trainer*: a callable
``trainer(run, log) -> RunResult`` that trains and evaluates a candidate, registers and
promotes it when it is better (``maskgate.store.ModelRegistry``) and says what happened.
`load_trainer` finds it as ``trainer`` in the module :data:`TRAINER_MODULE`; until that
exists, runs are recorded as failed with the reason said plainly.

Everything around the trainer lives here: taking the database-wide "one run at a time"
lock (:meth:`maskgate.store.TrainingRuns.try_start`), saving the log while the run goes so
the schedule page shows progress, and recording the result, or the traceback of a crash.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from maskgate.core import utcnow
from maskgate.store import RegistryError, RunStatus, RunTrigger, TrainingRun, TrainingRuns

log = logging.getLogger(__name__)

TRAINER_MODULE = "maskgate.training.retrain"
MAX_LOG_CHARS = 200_000  # a run's log is kept to its last this many characters


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a trainer reports: succeeded (promoted), rejected (not better) or failed."""

    status: RunStatus
    candidate_version: str | None = None
    metrics: Mapping[str, Any] | None = None
    reason: str = ""


class Trainer(Protocol):
    def __call__(self, run: TrainingRun, log: Callable[[str], None]) -> RunResult: ...


def no_trainer(run: TrainingRun, log: Callable[[str], None]) -> RunResult:
    """Stands in until the retraining job is installed: records an honest failure."""
    log(f"no retraining job installed: {TRAINER_MODULE}.trainer does not exist yet")
    return RunResult(RunStatus.FAILED, reason="no retraining job installed")


def load_trainer(module_name: str = TRAINER_MODULE) -> Trainer:
    """The installed trainer, or `no_trainer` when its module is not there yet."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:  # the module exists but something it imports is missing
            raise
        return no_trainer
    return getattr(module, "trainer", no_trainer)


class RunLog:
    """A run's log lines, saved to the database at most every `save_every_s` and at the end."""

    def __init__(self, runs: TrainingRuns, run_id: int, save_every_s: float = 2.0):
        self.runs, self.run_id, self.save_every_s = runs, run_id, save_every_s
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._saved_at = 0.0

    def __call__(self, line: str) -> None:
        stamped = f"{utcnow():%Y-%m-%d %H:%M:%S}Z {line.rstrip()}"
        with self._lock:
            self._lines.append(stamped)
            due = time.monotonic() - self._saved_at >= self.save_every_s
        if due:
            self.save()

    def text(self) -> str:
        with self._lock:
            joined = "\n".join(self._lines) + ("\n" if self._lines else "")
        return joined[-MAX_LOG_CHARS:]

    def save(self) -> None:
        self._saved_at = time.monotonic()
        self.runs.set_log(self.run_id, self.text())


class RetrainingJob:
    """Starts runs under the database lock and executes them with the trainer."""

    def __init__(self, runs: TrainingRuns, trainer: Trainer = no_trainer):
        self.runs = runs
        self.trainer = trainer
        self._executing: dict[int, RunLog] = {}  # runs this process is executing now, by id
        self._executing_lock = threading.Lock()

    def start(self, trigger: RunTrigger) -> TrainingRun | None:
        """Take the lock and record a running run; None when another run (any process) holds it."""
        return self.runs.try_start(trigger)

    def execute(self, run_id: int) -> TrainingRun:
        """Run the trainer for a started run and record its outcome; never raises for a trainer error."""
        run = self.runs.get(run_id)
        if run is None or not run.is_running:
            raise ValueError(f"training run {run_id} is not running")
        run_log = RunLog(self.runs, run_id)
        with self._executing_lock:
            self._executing[run_id] = run_log
        run_log(f"run {run_id} started ({run.trigger.value})")
        try:
            result = self.trainer(run, run_log)
        except Exception as exc:
            log.exception("training run %s failed", run_id)
            run_log(traceback.format_exc())
            result = RunResult(RunStatus.FAILED, reason=f"{type(exc).__name__}: {exc}")
        with self._executing_lock:
            if self._executing.pop(run_id, None) is None:  # interrupt() recorded it as failed already
                return self.runs.get(run_id) or run
        if result.status is RunStatus.RUNNING:
            result = RunResult(RunStatus.FAILED, reason="the trainer returned without finishing the run")
        run_log(f"run {run_id} {result.status.value}" + (f": {result.reason}" if result.reason else ""))
        try:
            return self.runs.finish(
                run_id,
                result.status,
                candidate_version=result.candidate_version,
                metrics=result.metrics,
                reason=result.reason or None,
                log=run_log.text(),
            )
        except Exception as exc:  # e.g. numpy numbers in the metrics: JSON cannot store them
            # The run must not stay "running": that would hold the lock for DEFAULT_STALE_AFTER.
            log.exception("training run %s: its result could not be recorded", run_id)
            run_log(f"the result could not be recorded: {type(exc).__name__}: {exc}")
            reason = f"the trainer's result could not be recorded ({type(exc).__name__})"
            return self.runs.finish(run_id, RunStatus.FAILED, reason=reason, log=run_log.text())

    def interrupt(self, reason: str) -> list[int]:
        """Record the runs this process is executing as failed with `reason`, and their ids: the process
        is stopping without waiting for them, and a run left `running` would hold the lock for hours."""
        with self._executing_lock:
            executing, self._executing = self._executing, {}
        for run_id, run_log in executing.items():
            run_log(f"run {run_id} failed: {reason}")
            try:
                self.runs.finish(run_id, RunStatus.FAILED, reason=reason, log=run_log.text())
            except RegistryError:  # abandoned as stale by another process meanwhile
                log.warning("training run %s was not running any more", run_id)
        return list(executing)

    def run_scheduled(self) -> TrainingRun | None:
        """The nightly job: start and execute, or skip when a run is already going somewhere."""
        run = self.start(RunTrigger.SCHEDULE)
        if run is None:
            log.info("nightly retraining skipped: another run is in progress")
            return None
        return self.execute(run.run_id)
