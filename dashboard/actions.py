"""The state changes an admin makes, shared by the HTML pages and the JSON API.

Each takes core types and returns core types; errors are :class:`ActionError` subclasses
that carry the HTTP status the caller should answer with.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Callable

from maskgate.core import Event, Label, Review, UnknownLabelError, utcnow
from maskgate.dashboard.scheduler import DashboardScheduler, RunInProgress, SchedulerNotRunning
from maskgate.modelcard import ModelFileError
from maskgate.store import EventStore, ModelRegistry, ModelVersion, RegistryError, TrainingRun, User
from maskgate.training.retrain import verify_model_folder

log = logging.getLogger(__name__)

MAX_NOTE_CHARS = 2000


class ActionError(Exception):
    status = 400


class NotFound(ActionError):
    status = 404


class Conflict(ActionError):
    status = 409


class Unavailable(ActionError):
    status = 503


class NotAnnounced(ActionError):
    """The change was made, but the gates were not told (the broker did not take the announcement)."""

    status = 502


class ReviewKind(enum.StrEnum):
    CONFIRM = "confirm"  # the classifier's label is right: the crop joins the pool as it is
    RELABEL = "relabel"  # the true class is another: the crop joins the pool with that label
    FALSE_POSITIVE = "false_positive"  # no real incident (not a face, a glitch): nothing to learn


def parse_review_kind(value: str | None) -> ReviewKind:
    try:
        return ReviewKind(value or "")
    except ValueError:
        choices = ", ".join(kind.value for kind in ReviewKind)
        raise ActionError(f"unknown review action {str(value)[:40]!r}: choose {choices}") from None


def review_event(
    store: EventStore,
    event_id: uuid.UUID,
    kind: ReviewKind,
    user: User,
    true_label: str | None = None,
    note: str | None = None,
) -> Event:
    """Record an admin's review. Confirmed and relabelled events are pinned: they are training data;
    a false positive is not, and is unpinned (an earlier confirm had pinned it). `note` replaces the
    earlier review's note; None keeps it (an API call that says nothing of it)."""
    event = store.get_event(event_id)
    if event is None:
        raise NotFound(f"no event {event_id}")
    note = (event.review.note if event.review else "") if note is None else note.strip()
    if len(note) > MAX_NOTE_CHARS:
        raise ActionError(f"the note is {len(note)} characters long: at most {MAX_NOTE_CHARS}")
    now = utcnow()
    if kind is ReviewKind.FALSE_POSITIVE:
        review = Review(user.username, now, false_positive=True, note=note)
        log.info("event %s reviewed by %s: %s", event_id, user.username, kind.value)
        return store.review_event(event_id, review, pinned=False)
    label = event.label if kind is ReviewKind.CONFIRM else _label(true_label)
    review = Review(user.username, now, true_label=label, note=note)
    log.info("event %s reviewed by %s: %s -> %s", event_id, user.username, kind.value, label.value)
    return store.review_event(event_id, review, pinned=True)


def _label(value: str | None) -> Label:
    if not value:
        raise ActionError("relabel needs the true label")
    if not isinstance(value, str):  # a JSON number or list; Label.parse would fail on .strip()
        raise ActionError("the true label must be a label name")
    try:
        return Label.parse(value)
    except UnknownLabelError:
        raise ActionError(f"unknown label {value[:40]!r}") from None


# Called with the new active version after the change (announces it); raises if the gates were not told.
ModelHook = Callable[[ModelVersion], None]


def promote(registry: ModelRegistry, version: str, on_change: ModelHook, user: User) -> ModelVersion:
    """Make `version` active, only if its folder verifies (the gates would refuse it), then announce it."""
    try:
        model = registry.promote(version, check=_verified)
    except RegistryError as exc:
        raise NotFound(str(exc)) from None
    log.info("model %s promoted by %s", model.version, user.username)
    _announce(on_change, model)
    return model


def rollback(registry: ModelRegistry, on_change: ModelHook, user: User) -> ModelVersion:
    """Reactivate the previous version, only if its folder verifies, then announce it."""
    try:
        model = registry.rollback(check=_verified)
    except RegistryError as exc:
        raise Conflict(str(exc)) from None
    log.info("rolled back to model %s by %s", model.version, user.username)
    _announce(on_change, model)
    return model


def _verified(model: ModelVersion) -> None:
    """Checked inside the registry's transaction, before `model` becomes active: raising cancels it."""
    try:
        verify_model_folder(model)  # what the announcement checks, and the gates after it
    except ModelFileError as exc:
        reason = f"model {model.version} cannot be made active, the gates would refuse it: {exc}"
        raise Conflict(reason) from None


def _announce(on_change: ModelHook, model: ModelVersion) -> None:
    try:
        on_change(model)
    except Exception as exc:  # the change stands: say that the gates still run the previous model
        reason = f"model {model.version} is active, but the gates were not told ({exc})"
        raise NotAnnounced(f"{reason}; promote it again to re-send") from None


def run_now(scheduler: DashboardScheduler, user: User) -> TrainingRun:
    try:
        run = scheduler.run_now()
    except RunInProgress as exc:
        raise Conflict(str(exc)) from None
    except SchedulerNotRunning as exc:
        raise Unavailable(str(exc)) from None
    log.info("training run %s started by %s", run.run_id, user.username)
    return run
