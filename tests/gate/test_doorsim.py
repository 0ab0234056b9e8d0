"""The reference door controller: each validation step, the relay, and `maskgate door-sim` itself."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from maskgate.core import AckReason, Action, DoorStatus, utcnow
from maskgate.gate.comms import signing
from maskgate.gate.comms.client import IncomingMessage
from maskgate.gate.comms.payloads import DoorCommand, format_time, parse_door_ack
from maskgate.gate.doorsim import DoorSimulator, Relay
from tests.gate.comms.brokers import ROOT, SYSTEM_PORT, Spy, make_config, make_decision, wait_until

pytestmark = pytest.mark.security

SECRET = "door-test-secret"
TOPIC = "doortest/gate-1/door/command"


class Clock:
    def __init__(self):
        self.now = utcnow()

    def __call__(self):
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def door(clock) -> DoorSimulator:
    controller = DoorSimulator(
        make_config("doortest", command_secret=SECRET), "gate-1", open_s=0.05, clock=clock
    )
    yield controller
    controller.relay.close()


def command_bytes(clock: Clock, secret: str = SECRET, action=Action.ALLOW, gate="gate-1", **changes) -> bytes:
    decision = make_decision(gate, action=action, decided_at=clock.now)
    payload = DoorCommand.from_decision(decision, ttl_s=3.0).to_payload()
    payload.update(changes)
    return json.dumps(signing.sign(payload, secret) if secret else payload).encode()


def send(door: DoorSimulator, raw: bytes):
    return door.handle(IncomingMessage(TOPIC, raw))


def test_a_fresh_signed_open_opens_the_door(door, clock):
    ack = send(door, command_bytes(clock))
    assert ack.status is DoorStatus.OPENED and ack.reason is AckReason.OPENED
    assert door.relay.is_open and door.relay.openings == 1
    assert wait_until(lambda: not door.relay.is_open, timeout=2)  # closes after open_s


@pytest.mark.parametrize(
    ("action", "reason"), [(Action.DENY, AckReason.DENIED), (Action.WARN, AckReason.WARNED)]
)
def test_deny_and_warn_keep_the_door_shut(door, clock, action, reason):
    ack = send(door, command_bytes(clock, action=action))
    assert ack.status is DoorStatus.REFUSED and ack.reason is reason
    assert door.relay.openings == 0


def test_stale_commands_expire_strictly(door, clock, caplog):
    raw = command_bytes(clock)
    clock.now += timedelta(seconds=3, milliseconds=1)  # 1 ms past expires_at
    with caplog.at_level(logging.WARNING):
        ack = send(door, raw)
    assert ack.status is DoorStatus.EXPIRED and ack.reason is AckReason.STALE
    assert door.relay.openings == 0
    assert "EXPIRED" in caplog.text


def test_clock_skew_tolerance_applies_to_issued_at_only(door, clock):
    ahead = command_bytes(clock, issued_at=format_time(clock.now + timedelta(seconds=0.4)))
    assert send(door, ahead).status is DoorStatus.OPENED  # within max_skew_s (0.5 s)
    too_far = command_bytes(clock, issued_at=format_time(clock.now + timedelta(seconds=1)))
    ack = send(door, too_far)
    assert ack.status is DoorStatus.REFUSED and ack.reason is AckReason.FROM_FUTURE


def test_a_command_that_claims_a_long_life_is_refused(door, clock):
    raw = command_bytes(clock, expires_at=format_time(clock.now + timedelta(minutes=5)))
    assert send(door, raw).reason is AckReason.TTL_TOO_LONG


@pytest.mark.parametrize(("secret", "reason"), [("", AckReason.UNSIGNED), ("wrong", AckReason.BAD_SIGNATURE)])
def test_unsigned_and_forged_commands_are_refused(door, clock, secret, reason, caplog):
    raw = command_bytes(clock, secret=secret)
    with caplog.at_level(logging.WARNING):
        ack = send(door, raw)
    assert ack.status is DoorStatus.REFUSED and ack.reason is reason
    assert door.relay.openings == 0 and "REFUSED" in caplog.text


def test_a_forgery_does_not_block_the_real_command_with_the_same_id(door, clock):
    real = json.loads(command_bytes(clock))
    forged = dict(real, sig="0" * 64)
    assert send(door, json.dumps(forged).encode()).reason is AckReason.BAD_SIGNATURE
    assert send(door, json.dumps(real).encode()).status is DoorStatus.OPENED


def test_a_duplicate_is_acked_again_but_not_acted_on(door, clock):
    raw = command_bytes(clock)
    first = send(door, raw)
    again = send(door, raw)  # a QoS 1 redelivery, or the gate's outbox retrying
    assert first == again and first.status is DoorStatus.OPENED
    assert door.relay.openings == 1 and door.outcomes["duplicate"] == 1


def test_a_replay_with_other_content_is_refused(door, clock):
    payload = json.loads(command_bytes(clock))
    send(door, json.dumps(signing.sign(payload, SECRET)).encode())
    replay = {k: v for k, v in payload.items() if k != "sig"} | {"track_id": 99}
    ack = send(door, json.dumps(signing.sign(replay, SECRET)).encode())
    assert ack.status is DoorStatus.REFUSED and ack.reason is AckReason.REPLAY
    assert door.relay.openings == 1


def test_replay_memory_is_bounded_by_expiry(door, clock):
    for _ in range(5):
        send(door, command_bytes(clock, action=Action.DENY))
    clock.now += timedelta(seconds=10)
    send(door, command_bytes(clock, action=Action.DENY))
    assert len(door._seen) == 1


def test_a_command_for_another_gate_is_refused(door, clock):
    ack = send(door, command_bytes(clock, gate="gate-2"))
    assert ack.status is DoorStatus.REFUSED and ack.reason is AckReason.WRONG_GATE


def test_malformed_and_oversized_commands_are_dropped_with_a_log_line(door, caplog):
    with caplog.at_level(logging.WARNING):
        for raw in (b"", b"nope", b'{"v":1}', b"{" + b" " * 4096 + b"}", b"\xc3\x28"):
            assert send(door, raw) is None
    assert caplog.text.count("REJECTED") == 5
    assert door.outcomes["rejected"] == 5


def test_without_a_secret_signatures_are_not_required(clock):
    door = DoorSimulator(make_config("doortest"), "gate-1", open_s=0.0, clock=clock)
    assert send(door, command_bytes(clock, secret="")).status is DoorStatus.OPENED


def test_relay_extends_an_opening():
    relay = Relay("door test")
    relay.open_for(0.2)
    time.sleep(0.1)
    relay.open_for(0.2)
    time.sleep(0.15)
    assert relay.is_open and relay.openings == 2
    assert wait_until(lambda: not relay.is_open, timeout=1)


@pytest.mark.parametrize("seconds", [1e300, math.inf, math.nan, 61.0, -1.0])
def test_a_relay_is_never_held_open_by_an_odd_time(seconds):
    """1e300 or inf killed the relay's timer thread (OverflowError) and the relay stayed open."""
    relay = Relay("door test")
    with pytest.raises(ValueError, match="a relay opens for 0 to 60 s"):
        relay.open_for(seconds)
    assert not relay.is_open and relay.openings == 0
    with pytest.raises(ValueError, match="a relay opens for 0 to 60 s"):
        DoorSimulator(make_config("doortest"), "gate-1", open_s=seconds)
    relay.open_for(0.05)  # a sane time still opens it, and it closes again by itself
    assert relay.is_open and wait_until(lambda: not relay.is_open, timeout=1)


@pytest.mark.parametrize("seconds", [1e300, math.inf, math.nan, 61.0, -1.0])
def test_a_clock_skew_tolerance_out_of_range_is_refused(seconds):
    with pytest.raises(ValueError, match="the clock skew tolerance is 0 to 60 s"):
        DoorSimulator(make_config("doortest"), "gate-1", max_skew_s=seconds)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--open-s", "1e300", "maskgate: --open-s: a relay opens for 0 to 60 s, not 1e+300"),
        ("--open-s", "61", "maskgate: --open-s: a relay opens for 0 to 60 s, not 61.0"),
        ("--open-s", "inf", "argument --open-s: expected a finite number, 0 or more, got 'inf'"),
        ("--open-s", "-1", "argument --open-s: expected a finite number, 0 or more, got '-1'"),
        ("--max-skew-s", "nan", "argument --max-skew-s: expected a finite number, 0 or more, got 'nan'"),
        ("--max-skew-s", "inf", "argument --max-skew-s: expected a finite number, 0 or more, got 'inf'"),
        (
            "--max-skew-s",
            "1e300",
            "maskgate: --max-skew-s: the clock skew tolerance is 0 to 60 s, not 1e+300",
        ),
    ],
)
def test_door_sim_refuses_odd_numbers_before_it_starts(option, value, message):
    """They gave a traceback (nan, inf) or a door-sim whose relay could stay open for ever (1e300)."""
    maskgate = str(Path(sys.executable).parent / "maskgate")
    prefix = f"doorsim-{uuid.uuid4().hex[:6]}"  # should one start after all, it talks to no one's door
    env = {**os.environ, "MASKGATE_MQTT__TOPIC_PREFIX": prefix}
    result = subprocess.run(
        [maskgate, "door-sim", "--gate", "gate-1", option, value],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.integration
def test_door_sim_command_end_to_end():
    """`maskgate door-sim --gate ID` as a process: command in, ack out, clean stop on SIGTERM."""
    prefix, gate = f"doorsim-{uuid.uuid4().hex[:6]}", "gate-7"
    env = {**os.environ, "MASKGATE_MQTT__TOPIC_PREFIX": prefix, "MASKGATE_MQTT__COMMAND_SECRET": SECRET}
    process = subprocess.Popen(
        [sys.executable, "-m", "maskgate.cli", "door-sim", "--gate", gate, "--open-s", "0.1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    spy = Spy(SYSTEM_PORT, [f"{prefix}/{gate}/door/ack"])
    try:
        decision = make_decision(gate)
        raw = DoorCommand.from_decision(decision, ttl_s=5.0).encode(SECRET)
        acks = []
        deadline = time.monotonic() + 20
        while not acks and time.monotonic() < deadline:  # until its subscription is up
            spy.publish(f"{prefix}/{gate}/door/command", raw)
            acks = spy.wait_for(f"{prefix}/{gate}/door/ack", 1, timeout=1)
        ack = parse_door_ack(acks[0].payload, SECRET)
        assert ack.decision_id == decision.decision_id and ack.status is DoorStatus.OPENED
        spy.publish(f"{prefix}/{gate}/door/command", b"garbage")
    finally:
        spy.close()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output
    assert f"door-sim {gate}: listening on {prefix}/{gate}/door/command" in output
    assert "signed commands required" in output
    assert "OPENED for decision" in output and "REJECTED" in output
    assert "stopped (" in output


def test_door_sim_needs_a_gate(capsys):
    from maskgate.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["door-sim"])
    assert exited.value.code == 2
    assert main(["door-sim", "--gate", "bad/gate"]) == 2
    assert "gate id" in capsys.readouterr().err
