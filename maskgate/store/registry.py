"""Model versions and training runs: which model is active, and one retraining run at a time.

Two repositories over the ``model_versions`` and ``training_runs`` tables:

- :class:`ModelRegistry` registers model folders as candidates and promotes or rolls back,
  keeping exactly one version active once any has been promoted;
- :class:`TrainingRuns` records retraining runs. :meth:`TrainingRuns.try_start` is the
  "one run at a time" lock shared by every process that uses the database: the lock *is*
  the row in status ``running``, so it needs no connection held open for the hours a run
  may take and it is visible in the run history.

Both change state in short transactions that take turns with concurrent writers of the
same kind: on PostgreSQL through a transaction-scoped advisory lock, on SQLite because the
transaction's first statement is a write, which takes the database's single write lock.
Check-then-write inside such a transaction is therefore safe across processes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from maskgate.core import utcnow
from maskgate.store.db import StoreError
from maskgate.store.schema import ModelVersionRow, TrainingRunRow

# Fixed advisory lock keys, so that every process serialises on the same ones.
_MODELS_LOCK = 0x6D61_736B_0001  # "mask" + 1
_TRAINING_LOCK = 0x6D61_736B_0002

# A run still "running" after this long is taken to belong to a process that died.
DEFAULT_STALE_AFTER = timedelta(hours=12)


class RegistryError(StoreError):
    """A model or run cannot be changed as asked (unknown version, nothing to roll back to...)."""


class ActiveModelChanged(RegistryError):
    """A promotion expected another version to be active (someone promoted or rolled back meanwhile)."""

    def __init__(self, expected: str | None, actual: str | None):
        super().__init__(f"the active model is {actual or 'none'}, not {expected or 'none'}")
        self.expected, self.actual = expected, actual


class ModelStatus(enum.StrEnum):
    CANDIDATE = "candidate"  # registered, never promoted; or rolled back (promoted_at, retired_at say when)
    ACTIVE = "active"  # the one the gates run
    RETIRED = "retired"  # was active until another was promoted: a roll back may return to it


class RunStatus(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # a candidate was trained and promoted
    FAILED = "failed"  # an error; the log says which
    REJECTED = "rejected"  # a candidate was trained but not better than the active model


class RunTrigger(enum.StrEnum):
    SCHEDULE = "schedule"
    MANUAL = "manual"  # "run now" in the dashboard
    CLI = "cli"


@dataclass(frozen=True, slots=True)
class ModelVersion:
    version: str
    sha256: str  # of model.tflite
    card_sha256: str | None  # of card.json, which pins every file (None: registered before it was kept)
    path: str  # the model folder (model.tflite, card.json, plots)
    status: ModelStatus
    metrics: Mapping[str, Any]
    created_at: datetime
    promoted_at: datetime | None
    retired_at: datetime | None

    @property
    def is_active(self) -> bool:
        return self.status is ModelStatus.ACTIVE


@dataclass(frozen=True, slots=True)
class TrainingRun:
    run_id: int
    trigger: RunTrigger
    status: RunStatus
    started_at: datetime
    finished_at: datetime | None
    candidate_version: str | None
    metrics: Mapping[str, Any] | None
    reason: str | None
    log: str

    @property
    def is_running(self) -> bool:
        return self.status is RunStatus.RUNNING


def _take_turn(connection: Connection, key: int) -> None:
    """Make this transaction wait for any other one that changes the same kind of row."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    else:
        # SQLite has one writer at a time: a write as the first statement (even one that
        # matches nothing) takes the write lock now, so the reads that follow are current.
        connection.execute(update(ModelVersionRow).where(ModelVersionRow.id == -1).values(id=-1))


# Called with the version about to become active, inside the registry's transaction; raises to refuse it.
ModelCheck = Callable[[ModelVersion], object]


class ModelRegistry:
    """Model versions: register candidates, promote one, roll back to the previous one."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def register(
        self,
        version: str,
        path: str,
        sha256: str,
        metrics: Mapping[str, Any] | None = None,
        *,
        card_sha256: str | None = None,
    ) -> ModelVersion:
        """Record a new model folder as a candidate."""
        values = {
            "version": version,
            "sha256": sha256,
            "card_sha256": card_sha256,
            "path": path,
            "status": ModelStatus.CANDIDATE.value,
            "metrics": dict(metrics or {}),
            "created_at": utcnow(),
        }
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(ModelVersionRow).values(**values))
        except IntegrityError:
            raise RegistryError(f"model version {version!r} is already registered") from None
        return self._require(version)

    def get(self, version: str) -> ModelVersion | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(ModelVersionRow).where(ModelVersionRow.version == version)
            ).first()
        return _model(row) if row else None

    def active(self) -> ModelVersion | None:
        with self.engine.connect() as connection:
            row = _active_row(connection)
        return _model(row) if row else None

    def list_versions(self) -> list[ModelVersion]:
        """Every version, newest first."""
        query = select(ModelVersionRow).order_by(ModelVersionRow.created_at.desc(), ModelVersionRow.id.desc())
        with self.engine.connect() as connection:
            return [_model(row) for row in connection.execute(query)]

    def promote(
        self,
        version: str,
        now: datetime | None = None,
        *,
        expected_active: str | None = None,
        first: bool = False,
        check: ModelCheck | None = None,
    ) -> ModelVersion:
        """Make `version` the active model; the previous one is retired. Idempotent.

        `expected_active`: promote only if that version is still the active one, else raise
        :class:`ActiveModelChanged` (a run judged its candidate against it an hour ago). `first`:
        promote only if no version is active yet, else raise the same (staff promoted one meanwhile).
        `check` is called with `version` before anything changes; what it raises cancels the change.
        Both happen inside the locked transaction, so no other promotion or roll back slips between.
        """
        now = now or utcnow()
        with self.engine.begin() as connection:
            _take_turn(connection, _MODELS_LOCK)
            target = connection.execute(
                select(ModelVersionRow).where(ModelVersionRow.version == version)
            ).first()
            if target is None:
                raise RegistryError(f"no model version {version!r}")
            if expected_active is not None or first:
                active = _active_row(connection)
                actual = active.version if active else None
                if actual != expected_active:
                    raise ActiveModelChanged(expected_active, actual)
            if check is not None:
                check(_model(target))
            if target.status != ModelStatus.ACTIVE.value:
                _retire_active(connection, now)
                connection.execute(
                    update(ModelVersionRow)
                    .where(ModelVersionRow.id == target.id)
                    .values(status=ModelStatus.ACTIVE.value, promoted_at=now, retired_at=None)
                )
        return self._require(version)

    def rollback(self, now: datetime | None = None, *, check: ModelCheck | None = None) -> ModelVersion:
        """Reactivate the version that was active before the current one; returns it.

        Walks back through promotions: rolling back twice after promoting A, B, C leaves A
        active. The previous version keeps its original promotion time for that reason. The
        version rolled back from becomes a candidate again (its promotion and retirement times
        stay): a later roll back never returns to it, only promoting it again does.
        `check` is called with the version about to be reactivated; what it raises cancels the change.
        """
        now = now or utcnow()
        with self.engine.begin() as connection:
            _take_turn(connection, _MODELS_LOCK)
            current = _active_row(connection)
            if current is None:
                raise RegistryError("no active model to roll back from")
            previous = connection.execute(
                select(ModelVersionRow)
                .where(
                    ModelVersionRow.status == ModelStatus.RETIRED.value,
                    ModelVersionRow.promoted_at < current.promoted_at,
                )
                .order_by(ModelVersionRow.promoted_at.desc(), ModelVersionRow.id.desc())
                .limit(1)
            ).first()
            if previous is None:
                raise RegistryError(f"no earlier model to roll back to from {current.version!r}")
            if check is not None:
                check(_model(previous))
            connection.execute(
                update(ModelVersionRow)
                .where(ModelVersionRow.id == current.id)
                .values(status=ModelStatus.CANDIDATE.value, retired_at=now)
            )
            connection.execute(
                update(ModelVersionRow)
                .where(ModelVersionRow.id == previous.id)
                .values(status=ModelStatus.ACTIVE.value, retired_at=None)
            )
        return self._require(previous.version)

    def _require(self, version: str) -> ModelVersion:
        model = self.get(version)
        if model is None:
            raise RegistryError(f"no model version {version!r}")
        return model


def _active_row(connection: Connection) -> Any:
    """The active version's row, or None."""
    return connection.execute(
        select(ModelVersionRow).where(ModelVersionRow.status == ModelStatus.ACTIVE.value)
    ).first()


def _retire_active(connection: Connection, now: datetime) -> None:
    connection.execute(
        update(ModelVersionRow)
        .where(ModelVersionRow.status == ModelStatus.ACTIVE.value)
        .values(status=ModelStatus.RETIRED.value, retired_at=now)
    )


def _model(row: Any) -> ModelVersion:
    return ModelVersion(
        version=row.version,
        sha256=row.sha256,
        card_sha256=row.card_sha256,
        path=row.path,
        status=ModelStatus(row.status),
        metrics=dict(row.metrics or {}),
        created_at=row.created_at,
        promoted_at=row.promoted_at,
        retired_at=row.retired_at,
    )


class TrainingRuns:
    """Retraining runs, and the database-wide lock that lets only one run at a time."""

    def __init__(self, engine: Engine, stale_after: timedelta = DEFAULT_STALE_AFTER):
        self.engine = engine
        self.stale_after = stale_after

    def try_start(self, trigger: RunTrigger, now: datetime | None = None) -> TrainingRun | None:
        """Record a new running run and return it, or None if another run holds the lock.

        Safe across processes and machines sharing the database. A run left ``running``
        for longer than `stale_after` (its process died) is marked failed first.
        """
        now = now or utcnow()
        with self.engine.begin() as connection:
            _take_turn(connection, _TRAINING_LOCK)
            self._abandon_stale(connection, now)
            running = connection.execute(
                select(TrainingRunRow.id).where(TrainingRunRow.status == RunStatus.RUNNING.value).limit(1)
            ).first()
            if running is not None:
                return None
            run_id = connection.execute(
                insert(TrainingRunRow)
                .values(
                    trigger=RunTrigger(trigger).value, status=RunStatus.RUNNING.value, started_at=now, log=""
                )
                .returning(TrainingRunRow.id)
            ).scalar_one()
        return self._require(run_id)

    def finish(
        self,
        run_id: int,
        status: RunStatus,
        *,
        candidate_version: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        reason: str | None = None,
        log: str | None = None,
        now: datetime | None = None,
    ) -> TrainingRun:
        """Close a running run with its outcome, which releases the lock."""
        if status is RunStatus.RUNNING:
            raise ValueError("a run finishes as succeeded, failed or rejected")
        values: dict[str, Any] = {
            "status": status.value,
            "finished_at": now or utcnow(),
            "candidate_version": candidate_version,
            "metrics": dict(metrics) if metrics is not None else None,
            "reason": reason,
        }
        if log is not None:
            values["log"] = log
        with self.engine.begin() as connection:
            changed = connection.execute(
                update(TrainingRunRow)
                .where(TrainingRunRow.id == run_id, TrainingRunRow.status == RunStatus.RUNNING.value)
                .values(**values)
            ).rowcount
        if changed != 1:
            raise RegistryError(f"training run {run_id} is not running (finished already, or abandoned)")
        return self._require(run_id)

    def set_log(self, run_id: int, log: str) -> None:
        """Replace a run's log, so that the dashboard shows a running job's progress."""
        with self.engine.begin() as connection:
            connection.execute(update(TrainingRunRow).where(TrainingRunRow.id == run_id).values(log=log))

    def get(self, run_id: int) -> TrainingRun | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(TrainingRunRow).where(TrainingRunRow.id == run_id)).first()
        return _run(row) if row else None

    def running(self) -> TrainingRun | None:
        with self.engine.connect() as connection:
            query = select(TrainingRunRow).where(TrainingRunRow.status == RunStatus.RUNNING.value).limit(1)
            row = connection.execute(query).first()
        return _run(row) if row else None

    def list_runs(self, limit: int = 50, before: int | None = None) -> list[TrainingRun]:
        """The newest runs first; pass the last run id as `before` for the next page.

        Without their logs (`log` is ""): a log may be 200,000 characters, and only the run's
        own page (:meth:`get`) shows it.
        """
        query = select(*_LISTED_RUN_COLUMNS).order_by(TrainingRunRow.id.desc()).limit(limit)
        if before is not None:
            query = query.where(TrainingRunRow.id < before)
        with self.engine.connect() as connection:
            return [_run(row) for row in connection.execute(query)]

    def count(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(TrainingRunRow)).scalar_one())

    def _abandon_stale(self, connection: Connection, now: datetime) -> None:
        connection.execute(
            update(TrainingRunRow)
            .where(
                TrainingRunRow.status == RunStatus.RUNNING.value,
                TrainingRunRow.started_at < now - self.stale_after,
            )
            .values(
                status=RunStatus.FAILED.value,
                finished_at=now,
                reason=f"abandoned: still running after {self.stale_after} (its process stopped?)",
            )
        )

    def _require(self, run_id: int) -> TrainingRun:
        run = self.get(run_id)
        if run is None:
            raise RegistryError(f"no training run {run_id}")
        return run


_LISTED_RUN_COLUMNS = [column for column in TrainingRunRow.__table__.columns if column.key != "log"]


def _run(row: Any) -> TrainingRun:
    return TrainingRun(
        run_id=row.id,
        trigger=RunTrigger(row.trigger),
        status=RunStatus(row.status),
        started_at=row.started_at,
        finished_at=row.finished_at,
        candidate_version=row.candidate_version,
        metrics=dict(row.metrics) if row.metrics is not None else None,
        reason=row.reason,
        log=row._mapping.get("log") or "",  # listings leave it out
    )
