"""Hypothesis: nothing on any subscribed topic crashes a parser, the door link or the door controller.

Subscribed topics: the door controller's ``door/command``; the gate's ``door/ack``,
``models/active`` and ``homeassistant/status``. Every parser raises only PayloadError; every
handler returns normally, and each rejected message leaves a WARNING log line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maskgate.core import utcnow
from maskgate.gate.comms import DoorLink
from maskgate.gate.comms.client import IncomingMessage
from maskgate.gate.comms.payloads import (
    DoorCommand,
    PayloadError,
    format_time,
    parse_active_model,
    parse_availability,
    parse_door_ack,
    parse_door_command,
    parse_gate_state,
    parse_ha_status,
)
from maskgate.gate.doorsim import DoorSimulator
from maskgate.store import EventStore, make_engine, migrate
from tests.gate.comms.brokers import make_config, make_decision

SECRET = "fuzz-secret"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PARSERS = [
    parse_door_command,
    lambda raw: parse_door_command(raw, SECRET),
    parse_door_ack,
    lambda raw: parse_door_ack(raw, SECRET),
    parse_gate_state,
    parse_active_model,
    parse_ha_status,
    parse_availability,
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
times = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
).map(lambda t: t.isoformat())

pytestmark = pytest.mark.security


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def warnings_logged() -> Iterator[_Lines]:
    lines = _Lines()
    logger = logging.getLogger("maskgate")
    logger.addHandler(lines)
    try:
        yield lines
    finally:
        logger.removeHandler(lines)


def valid_command(secret: str = "", **changes) -> dict:
    payload = DoorCommand.from_decision(make_decision(), ttl_s=3.0).to_payload()
    payload.update(changes)
    from maskgate.gate.comms import signing

    return signing.sign(payload, secret) if secret else payload


@st.composite
def mutated_commands(draw) -> bytes:
    """A valid command with one field replaced, removed or added: the near misses."""
    payload = valid_command()
    key = draw(st.sampled_from([*payload, "sig", "extra"]))
    if draw(st.booleans()) and key in payload:
        del payload[key]
    else:
        payload[key] = draw(json_values | times)
    return json.dumps(payload).encode()


def messages_for(topic: str) -> st.SearchStrategy[IncomingMessage]:
    payloads = (
        st.binary(max_size=3000) | mutated_commands() | json_values.map(lambda v: json.dumps(v).encode())
    )
    return st.builds(
        IncomingMessage,
        topic=st.just(topic),
        payload=payloads,
        retain=st.booleans(),
        response_topic=st.none() | st.text(max_size=30),
        correlation_data=st.none() | st.binary(max_size=40),
    )


@FUZZ
@given(raw=st.binary(max_size=5000) | mutated_commands(), parser=st.sampled_from(PARSERS))
def test_parsers_raise_only_payload_errors_on_bytes(raw, parser):
    with suppress(PayloadError):
        parser(raw)


@FUZZ
@given(value=json_values, parser=st.sampled_from(PARSERS))
def test_parsers_raise_only_payload_errors_on_any_json(value, parser):
    with suppress(PayloadError):
        parser(json.dumps(value).encode())


@pytest.fixture(scope="module")
def door() -> DoorSimulator:
    config = make_config("fuzz", command_secret=SECRET)
    return DoorSimulator(config, "gate-1", open_s=0.0)  # not started: handle() is called directly


@FUZZ
@given(message=messages_for("fuzz/gate-1/door/command"))
def test_door_controller_survives_anything_and_logs_each_rejection(door, message):
    with warnings_logged() as lines:
        ack = door.handle(message)
    if ack is None:  # dropped: malformed, oversized, ...
        assert any("REJECTED" in r.getMessage() for r in lines.records)
    else:  # only signed, fresh, well-formed commands are acted on; these are not
        assert ack.status.value in ("refused", "expired")
        assert lines.records


@FUZZ
@given(issued=times, expires=times)
def test_door_controller_refuses_signed_commands_at_odd_times(door, issued, expires):
    payload = valid_command(SECRET, issued_at=issued, expires_at=expires)
    with warnings_logged():
        ack = door.handle(IncomingMessage("fuzz/gate-1/door/command", json.dumps(payload).encode()))
    assert ack is None or ack.status.value in ("refused", "expired")


def test_door_controller_rejects_stale_unsigned_oversized_malformed(door):
    stale = valid_command(
        SECRET,
        issued_at=format_time(utcnow() - timedelta(seconds=10)),
        expires_at=format_time(utcnow() - timedelta(seconds=7)),
    )
    cases = {
        "stale": json.dumps(stale).encode(),
        "unsigned": json.dumps(valid_command()).encode(),
        "oversized": b'{"v":1,' + b" " * 5000 + b"}",
        "malformed": b"{not json",
    }
    for name, raw in cases.items():
        with warnings_logged() as lines:
            ack = door.handle(IncomingMessage("fuzz/gate-1/door/command", raw))
        assert lines.records, name
        if name == "stale":
            assert ack.status.value == "expired"
        elif name == "unsigned":
            assert ack.status.value == "refused" and ack.reason.value == "unsigned"
        else:
            assert ack is None


@pytest.fixture(scope="module")
def link(tmp_path_factory) -> DoorLink:
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.sqlite'}")
    migrate.upgrade(engine)
    config = make_config("fuzz", command_secret=SECRET, homeassistant_discovery=True)
    return DoorLink(config, EventStore(engine), on_active_model=lambda _model: None)  # not started


@FUZZ
@given(data=st.data(), topic=st.sampled_from(["ack", "model", "ha"]))
def test_door_link_handlers_survive_anything_and_log_each_rejection(link, data, topic):
    handler, name = {
        "ack": (link._on_ack_message, "fuzz/gate-1/door/ack"),
        "model": (link._on_model_message, "fuzz/models/active"),
        "ha": (link._on_ha_status, "homeassistant/status"),
    }[topic]
    message = data.draw(messages_for(name))
    accepted_before = link._inbox.qsize()
    with warnings_logged() as lines:
        handler(message)
    accepted = link._inbox.qsize() > accepted_before
    if not accepted and message.payload and not _is_valid_ha_or_model(topic, message.payload):
        assert lines.records, message.payload[:80]


def _is_valid_ha_or_model(topic: str, raw: bytes) -> bool:
    try:
        if topic == "ha":
            parse_ha_status(raw)
            return True
        if topic == "model":
            parse_active_model(raw)
            return True
    except PayloadError:
        pass
    return False


def test_unsigned_acks_are_rejected_by_a_signing_gate(link):
    from maskgate.core import DoorStatus
    from maskgate.gate.comms.payloads import DoorAck

    ack = DoorAck(make_decision().decision_id, "gate-1", DoorStatus.OPENED, utcnow())
    before = link._inbox.qsize()
    with warnings_logged() as lines:
        link._on_ack_message(IncomingMessage("fuzz/gate-1/door/ack", ack.encode()))
        link._on_ack_message(IncomingMessage("fuzz/gate-1/door/ack", ack.encode("wrong-secret")))
    assert link._inbox.qsize() == before
    assert [("unsigned" in r.getMessage(), "bad signature" in r.getMessage()) for r in lines.records] == [
        (True, False),
        (False, True),
    ]
    link._on_ack_message(IncomingMessage("fuzz/gate-1/door/ack", ack.encode(SECRET)))
    assert link._inbox.qsize() == before + 1
