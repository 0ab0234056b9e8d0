"""Which door commands wait for an ack, their round-trip times, and which waited too long.

Single-threaded by design: only the door link's worker thread calls it.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass

from maskgate.core import DoorStatus


@dataclass(frozen=True, slots=True)
class AckOutcome:
    decision_id: uuid.UUID
    status: DoorStatus
    rtt_ms: float | None
    late: bool = False  # the ack came after we had recorded no_ack; the real status replaces it


class AckTracker:
    """Door commands published and not yet answered, keyed by decision id."""

    def __init__(self, timeout_s: float, late_window_s: float = 300.0, max_late: int = 10_000):
        self.timeout_s = timeout_s
        self.late_window_s = late_window_s
        self.max_late = max_late
        self._waiting: dict[uuid.UUID, float] = {}  # decision id -> monotonic publish time
        # Commands recorded as no_ack: a late ack still tells the truth about the door.
        self._late: OrderedDict[uuid.UUID, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._waiting)

    def expect(self, decision_id: uuid.UUID, published_at: float) -> None:
        """A command was (re)published at `published_at` (time.monotonic())."""
        self._late.pop(decision_id, None)
        self._waiting[decision_id] = published_at

    def forget(self, decision_id: uuid.UUID) -> None:
        """The publish did not happen after all (refused: it reached nobody)."""
        self._waiting.pop(decision_id, None)

    def lose(self, decision_id: uuid.UUID) -> None:
        """The publish's connection died before the broker acknowledged it.

        The command may have reached the door, but its ack cannot be counted on: stop timing
        it (the outbox publishes it again, or records it as no_ack when it expires) and keep
        it among the late ones, so that an ack that still comes is recorded.
        """
        published_at = self._waiting.pop(decision_id, None)
        if published_at is not None:
            self._late[decision_id] = published_at

    def resolve(self, decision_id: uuid.UUID, status: DoorStatus, received_at: float) -> AckOutcome | None:
        """The outcome for an ack, or None when nothing waits for it (a duplicate, or another run's)."""
        published_at = self._waiting.pop(decision_id, None)
        late = False
        if published_at is None:
            published_at = self._late.pop(decision_id, None)
            late = True
        if published_at is None:
            return None
        return AckOutcome(decision_id, status, max(0.0, (received_at - published_at) * 1000.0), late)

    def overdue(self, now: float) -> list[uuid.UUID]:
        """Commands whose ack is overdue at `now`; they move to the late list."""
        due = [d for d, published_at in self._waiting.items() if now - published_at >= self.timeout_s]
        for decision_id in due:
            self._late[decision_id] = self._waiting.pop(decision_id)
        while self._late and (
            len(self._late) > self.max_late or self._oldest_late_age(now) > self.late_window_s
        ):
            self._late.popitem(last=False)
        return due

    def next_deadline(self) -> float | None:
        """The monotonic time of the earliest ack deadline, if any command waits."""
        return min(self._waiting.values()) + self.timeout_s if self._waiting else None

    def _oldest_late_age(self, now: float) -> float:
        return now - next(iter(self._late.values()))
