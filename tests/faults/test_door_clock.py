"""The door controller's clock is wrong (issue #10).

The contract (docs/mqtt.md, "What a door controller must do"): a door command carries
``issued_at`` and ``expires_at = issued_at + mqtt.door_command_ttl_s`` (3 s here), signed with
the rest of it. The controller checks them against its own clock: past ``expires_at`` ->
``expired`` (``stale``), strictly, with no tolerance; ``issued_at`` more than ``max_skew_s``
(door-sim default 0.5 s) ahead of it -> ``refused`` (``from_future``). That tolerance exists
only for ``issued_at``, so that a controller slightly behind does not refuse fresh commands.

So a controller clock ahead by more than the TTL expires every command, and one behind by more
than ``max_skew_s`` refuses every fresh one: the door stays shut (never a late opening), and
each event records the outcome as an incident. Within those bounds the door works. Once the
clock is right again, the next command opens the door: the recovery time printed. (A clock d
behind, within the tolerance, would accept a command that reached it up to d late: hence the
0.5 s default and NTP on both sides.)

Through the real broker, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest

from maskgate.core import AckReason, DoorStatus, utcnow
from maskgate.store import EventStore
from tests.faults.conftest import Gate, MakeGate
from tests.gate.comms.brokers import make_decision, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

COMMANDS = 5


class SkewedClock:
    """The door controller's wall clock, `offset_s` off (settable: NTP puts it right)."""

    def __init__(self, offset_s: float):
        self.offset_s = offset_s

    def __call__(self) -> datetime:
        return utcnow() + timedelta(seconds=self.offset_s)


@pytest.fixture
def gate_store(store: EventStore) -> EventStore:
    """Both databases (overrides the conftest's SQLite): the door outcome is what is stored."""
    return store


def open_commands(gate: Gate, count: int) -> list:
    """`count` people let in by the gate, one after another; their decisions."""
    decisions = [make_decision(gate.link.gate_id, track_id=n) for n in range(count)]
    for decision in decisions:
        gate.link.submit(decision)
    return decisions


@pytest.mark.parametrize(
    ("offset_s", "status", "reason"),
    [
        (+10.0, DoorStatus.EXPIRED, AckReason.STALE),  # ahead by more than the TTL
        (-10.0, DoorStatus.REFUSED, AckReason.FROM_FUTURE),  # behind by more than the tolerance
        (-2.0, DoorStatus.REFUSED, AckReason.FROM_FUTURE),  # ... even by less than the TTL
        (+2.0, DoorStatus.OPENED, AckReason.OPENED),  # ahead, within the TTL: still fresh
        (-0.3, DoorStatus.OPENED, AckReason.OPENED),  # behind, within the tolerance
    ],
    ids=["ahead-10s", "behind-10s", "behind-2s", "ahead-2s", "behind-0.3s"],
)
def test_a_door_with_a_skewed_clock_never_opens_late(make_gate: MakeGate, offset_s, status, reason, caplog):
    clock = SkewedClock(offset_s)
    gate = make_gate(door_clock=clock)
    skewed = open_commands(gate, COMMANDS)
    gate.settle()
    events = {e.event_id: e for e in gate.events()}
    assert [events[d.decision_id].door_status for d in skewed] == [status] * COMMANDS
    assert [events[d.decision_id].door_reason for d in skewed] == [reason] * COMMANDS  # why, kept
    # a clock refusal is an operator's problem, so the gate says it out loud; an opening is not
    warned = f"door controller turned down decision {skewed[0].decision_id}: {reason.value}" in caplog.text
    assert warned is (status is not DoorStatus.OPENED)
    assert all(events[d.decision_id].is_incident is (status is not DoorStatus.OPENED) for d in skewed)
    acks = {a["decision_id"]: a for a in gate.door_acks()}
    assert [acks[str(d.decision_id)]["reason"] for d in skewed] == [reason.value] * COMMANDS
    assert gate.door.relay.openings == (COMMANDS if status is DoorStatus.OPENED else 0)

    clock.offset_s = 0.0  # NTP puts the door's clock right
    fixed = time.monotonic()
    (after,) = open_commands(gate, 1)
    assert wait_until(lambda: gate.store.get_event(after.decision_id).door_status is not None, timeout=10)
    recovery_s = time.monotonic() - fixed
    assert gate.store.get_event(after.decision_id).door_status is DoorStatus.OPENED
    print(
        f"\ndoor clock {offset_s:+g} s: {COMMANDS} x {status.value} ({reason.value}); "
        f"clock fixed -> the next command opened the door in {recovery_s:.3f} s"
    )
    gate.check_delivery([*skewed, after], {d.decision_id: offset_s for d in skewed})
