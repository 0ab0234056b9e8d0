"""Payload builders and strict parsers, signatures, topics (no broker needed)."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from maskgate.core import AckReason, Action, DoorStatus, Label
from maskgate.gate.comms import signing
from maskgate.gate.comms.homeassistant import discovery_messages
from maskgate.gate.comms.payloads import (
    MAX_COMMAND_BYTES,
    ActiveModel,
    DoorAck,
    DoorAction,
    DoorCommand,
    GateState,
    PayloadError,
    SignatureError,
    encode_event,
    format_time,
    parse_active_model,
    parse_availability,
    parse_door_ack,
    parse_door_command,
    parse_gate_state,
    parse_ha_status,
    truncate_ms,
)
from maskgate.gate.comms.topics import TopicError, Topics, all_gates, models_active_topic
from tests.gate.comms.brokers import make_decision

SECRET = "per-gate-secret"


def command(**changes) -> DoorCommand:
    return DoorCommand.from_decision(make_decision(**changes), ttl_s=3.0)


def test_door_command_from_a_decision_with_numpy_values():
    decision = make_decision(action=Action.ALLOW)
    cmd = DoorCommand.from_decision(decision, ttl_s=3.0)
    payload = json.loads(cmd.encode())
    assert payload["action"] == "open" and payload["label"] == "with_mask"
    assert payload["decision_id"] == str(decision.decision_id)
    assert type(payload["confidence"]) is float and payload["confidence"] == 0.973
    assert type(payload["track_id"]) is int
    issued = datetime.fromisoformat(payload["issued_at"])
    assert datetime.fromisoformat(payload["expires_at"]) - issued == timedelta(seconds=3)
    assert payload["issued_at"].endswith("Z") and "sig" not in payload


@pytest.mark.parametrize(
    ("action", "door"),
    [(Action.ALLOW, DoorAction.OPEN), (Action.DENY, DoorAction.DENY), (Action.WARN, DoorAction.WARN)],
)
def test_action_mapping(action, door):
    assert command(action=action).action is door


def test_door_command_round_trip_signed_and_unsigned():
    cmd = command()
    assert parse_door_command(cmd.encode()) == cmd
    signed = parse_door_command(cmd.encode(SECRET), SECRET)
    assert signed.signature == json.loads(cmd.encode(SECRET))["sig"]
    assert signed.decision_id == cmd.decision_id


def test_signatures_do_not_depend_on_key_order_or_spacing():
    payload = command().to_payload(SECRET)
    reordered = json.dumps(dict(reversed(list(payload.items()))), indent=2).encode()
    assert str(parse_door_command(reordered, SECRET).decision_id) == payload["decision_id"]
    assert signing.verify(json.loads(reordered), SECRET)


def test_canonical_writes_whole_numbers_as_integers():
    assert signing.canonical({"b": 1.0, "a": 0.5, "sig": "x"}) == b'{"a":0.5,"b":1}'


@pytest.mark.parametrize(
    ("mutate", "unsigned"),
    [
        (lambda p: p.pop("sig"), True),
        (lambda p: p.update(sig="0" * 64), False),
        (lambda p: p.update(action="open" if p["action"] != "open" else "deny"), False),
        (lambda p: p.update(expires_at=format_time(datetime.now(UTC) + timedelta(hours=1))), False),
    ],
    ids=["unsigned", "bad-signature", "tampered-action", "tampered-expiry"],
)
def test_signature_failures_carry_the_untrusted_command(mutate, unsigned):
    payload = command().to_payload(SECRET)
    mutate(payload)
    with pytest.raises(SignatureError) as caught:
        parse_door_command(json.dumps(payload).encode(), SECRET)
    assert caught.value.unsigned is unsigned
    assert isinstance(caught.value.message, DoorCommand)


def test_a_wrong_secret_is_a_bad_signature():
    with pytest.raises(SignatureError, match="bad signature"):
        parse_door_command(command().encode(SECRET), "another-secret")


def valid_command_payload() -> dict:
    return command().to_payload()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.pop("expires_at"), "missing expires_at"),
        (lambda p: p.update(extra=1), "unknown field"),
        (lambda p: p.update(v=2), "schema version"),
        (lambda p: p.update(v=True), "schema version"),
        (lambda p: p.update(action="unlock"), "action must be"),
        (lambda p: p.update(label="mask_weared_incorrect"), "label must be"),  # aliases are input-only
        (lambda p: p.update(confidence=1.5), "confidence must be"),
        (lambda p: p.update(confidence=True), "confidence must be"),
        (lambda p: p.update(confidence="0.9"), "confidence must be"),
        (lambda p: p.update(track_id=-1), "track_id must be"),
        (lambda p: p.update(track_id=1.5), "track_id must be"),
        (lambda p: p.update(decision_id="not-a-uuid"), "decision_id must be"),
        (lambda p: p.update(gate_id="gate/2"), "gate_id must be"),
        (lambda p: p.update(issued_at="2026-01-01T00:00:00"), "issued_at must be"),  # no zone
        (lambda p: p.update(issued_at="yesterday"), "issued_at must be"),
        (lambda p: p.update(expires_at=p["issued_at"]), "expires_at must be after"),
        (lambda p: p.update(model=""), "model must be"),
        (lambda p: p.update(sig="zz"), "sig must be"),
    ],
)
def test_door_command_parser_refuses(change, message):
    payload = valid_command_payload()
    change(payload)
    with pytest.raises(PayloadError, match=message):
        parse_door_command(json.dumps(payload).encode())


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"v": NaN}', "not valid JSON"),
        (b'{"v": 1, "v": 1}', "duplicate key"),
        (b"[" * 5000, "over the"),
        (b"{" + b" " * MAX_COMMAND_BYTES + b"}", "over the 2048-byte limit"),
        ("text", "not bytes"),
    ],
)
def test_malformed_and_oversized_payloads(raw, message):
    with pytest.raises(PayloadError, match=message):
        parse_door_command(raw)


def test_deeply_nested_json_is_a_payload_error():
    with pytest.raises(PayloadError):
        parse_door_command(b"[" * 1500 + b"]" * 1500)


def test_door_ack_round_trip_and_refusals():
    ack = DoorAck(
        uuid.uuid4(), "gate-1", DoorStatus.OPENED, datetime.now(UTC).replace(microsecond=0), AckReason.OPENED
    )
    assert parse_door_ack(ack.encode()) == ack
    assert parse_door_ack(ack.encode(SECRET), SECRET).status is DoorStatus.OPENED
    with pytest.raises(SignatureError):
        parse_door_ack(ack.encode(), SECRET)
    no_ack = json.loads(ack.encode())
    no_ack["status"] = "no_ack"  # the gate's own verdict, never a controller's
    with pytest.raises(PayloadError, match="status must be"):
        parse_door_ack(json.dumps(no_ack).encode())
    no_ack.update(status="opened", reason="Because")
    with pytest.raises(PayloadError, match="reason"):
        parse_door_ack(json.dumps(no_ack).encode())
    # An optional field is absent or valid: a null is a field left unfilled, not "no reason".
    for field in ("reason", "sig"):
        with pytest.raises(PayloadError, match=field):
            parse_door_ack(json.dumps(json.loads(ack.encode()) | {field: None}).encode())


def test_gate_state_round_trip_with_numpy_fps():
    state = GateState("gate-1", True, np.float32(12.345), "m-3", decisions=4, allowed=3, denied=1)
    payload = json.loads(state.encode())
    assert payload["fps"] == 12.35 and payload["compliance"] == 0.75
    assert payload["counters"] == {"decisions": 4, "allow": 3, "deny": 1, "warn": 0}
    parsed = parse_gate_state(state.encode())
    assert parsed.allowed == 3 and parsed.compliance == 0.75
    assert GateState("g", True, 0.0, "m").to_payload()["compliance"] is None


def test_active_model_round_trip_and_refusals():
    model = ActiveModel("2026.05.01-1", "a" * 64, "c" * 64, "models/2026.05.01-1")
    assert parse_active_model(model.encode()).version == "2026.05.01-1"
    bad = model.to_payload() | {"sha256": "A" * 64}
    with pytest.raises(PayloadError, match="sha256"):
        parse_active_model(json.dumps(bad).encode())
    bad = model.to_payload() | {"location": "models/\nx"}
    with pytest.raises(PayloadError, match="control characters"):
        parse_active_model(json.dumps(bad).encode())


def test_event_message_is_the_stored_event_under_the_payload_rules(make_event):
    event = make_event(Label.WITHOUT_MASK)
    payload = json.loads(encode_event(event))
    stored = event.to_json()
    assert payload["v"] == 1 and set(payload) == {"v", *stored}  # every payload has "v": 1
    assert {key: payload[key] for key in stored if key not in ("occurred_at",)} == {
        key: value for key, value in stored.items() if key != "occurred_at"
    }
    # times in UTC with milliseconds and Z, as every time on the wire
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", payload["occurred_at"])
    assert datetime.fromisoformat(payload["occurred_at"]) == truncate_ms(event.occurred_at)
    answered = replace(event, door_at=event.occurred_at)
    assert json.loads(encode_event(answered))["door_at"] == payload["occurred_at"]
    with pytest.raises(ValueError, match="NaN"):
        encode_event(replace(event, latency_ms=float("nan")))


def test_plain_text_topics():
    assert parse_availability(b"stopped") == "stopped"
    assert parse_ha_status(b"online") == "online"
    for raw in (b"Online", b"online ", b"x" * 100, b"\xff"):
        with pytest.raises(PayloadError):
            parse_ha_status(raw)


def test_topics():
    topics = Topics("maskgate", "gate-1")
    assert topics.availability == "maskgate/gate-1/availability"
    assert topics.door_command == "maskgate/gate-1/door/command"
    assert topics.door_ack == "maskgate/gate-1/door/ack"
    assert topics.events == "maskgate/gate-1/events"
    assert topics.state == "maskgate/gate-1/state"
    assert topics.models_active == models_active_topic("maskgate") == "maskgate/models/active"
    assert all_gates("site/a", "events") == "site/a/+/events"
    for gate in ("", "a/b", "+", "#", "door.gate-1", "x" * 65, "gate 1"):
        with pytest.raises(TopicError):
            Topics("maskgate", gate)
    for prefix in ("", "/maskgate", "mask/+", "a/b/c/d/e"):
        with pytest.raises(TopicError):
            Topics(prefix, "gate-1")


def test_home_assistant_discovery_configs():
    topics = Topics("maskgate", "gate-1")
    configs = dict(discovery_messages(topics))
    assert set(configs) == {
        f"homeassistant/sensor/maskgate_gate-1/{name}/config"
        for name in ("last_decision", "fps", "compliant", "decisions", "compliance")
    }
    for payload in configs.values():
        config = json.loads(payload)
        assert config["availability_topic"] == topics.availability
        assert config["device"]["identifiers"] == ["maskgate_gate-1"]
        assert config["unique_id"].startswith("maskgate_gate-1_")
    assert (
        json.loads(configs["homeassistant/sensor/maskgate_gate-1/fps/config"])["state_topic"] == topics.state
    )
