"""The shipped broker config (deploy/mosquitto) on a Mosquitto of our own: passwords, ACL, TLS.

Credentials are made with deploy/mosquitto/add-gate.sh (mosquitto_passwd) and certificates with
deploy/mosquitto/make-certs.sh (openssl), as an operator would.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from paho.mqtt.reasoncodes import ReasonCode

from maskgate.config import Config, MqttConfig
from maskgate.core import Action, DoorStatus
from maskgate.gate.comms import DoorLink
from maskgate.gate.doorsim import DoorSimulator
from maskgate.store import EventStore
from tests.gate.comms.brokers import (
    DEPLOY,
    Broker,
    Spy,
    add_gate,
    deploy_config,
    free_port,
    make_decision,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.security]

PASSWORDS = {
    "gate-a": "pw-gate-a",
    "door.gate-a": "pw-door-a",
    "gate-b": "pw-gate-b",
    "door.gate-b": "pw-door-b",
    "maskgate-dashboard": "pw-dashboard",
}


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> Iterator[Broker]:
    workdir = tmp_path_factory.mktemp("acl-broker")
    for gate in ("gate-a", "gate-b"):
        add_gate(workdir, gate, PASSWORDS[gate], PASSWORDS[f"door.{gate}"])
    dashboard = ["maskgate-dashboard", PASSWORDS["maskgate-dashboard"]]  # as docs/mqtt.md tells the operator
    passwd = ["mosquitto_passwd", "-b", str(workdir / "passwd")]
    subprocess.run([*passwd, *dashboard], check=True, capture_output=True)
    port, tls_port = free_port(), free_port()
    subprocess.run(
        [str(DEPLOY / "make-certs.sh"), str(workdir / "certs"), "127.0.0.1"], check=True, capture_output=True
    )
    running = Broker(workdir, deploy_config(workdir, port, tls_port), port).start()
    running.tls_port = tls_port  # type: ignore[attr-defined]
    yield running
    running.stop()


def as_user(broker: Broker, user: str | None, topics=(), password: str | None = None) -> Spy:
    secret = password if password is not None else PASSWORDS.get(user or "")
    return Spy(broker.port, topics, username=user, password=secret)


def refused(reason: object) -> bool:
    return isinstance(reason, ReasonCode) and reason.is_failure


def test_anonymous_and_wrong_password_clients_are_refused(broker):
    anonymous = as_user(broker, None)
    assert anonymous.refused, anonymous.connect_reason
    assert anonymous.connect_reason.getName() in ("Not authorized", "Bad user name or password")
    wrong = as_user(broker, "gate-a", password="guess")
    assert wrong.refused
    right = as_user(broker, "gate-a")
    assert not right.refused
    for client in (anonymous, wrong, right):
        client.close()


def test_gate_a_cannot_publish_to_gate_b_door(broker):
    door_b = as_user(broker, "door.gate-b", ["maskgate/gate-b/door/command"])
    gate_a = as_user(broker, "gate-a")
    gate_b = as_user(broker, "gate-b")
    try:
        forged = json.dumps({"action": "open"}).encode()
        assert refused(gate_a.publish("maskgate/gate-b/door/command", forged))  # PUBACK: not authorized
        assert not refused(gate_b.publish("maskgate/gate-b/door/command", b'{"genuine":1}'))
        received = door_b.wait_for("maskgate/gate-b/door/command", 1, timeout=3)
        assert [m.payload for m in received] == [b'{"genuine":1}']  # the forgery never arrived
    finally:
        for client in (door_b, gate_a, gate_b):
            client.close()


@pytest.mark.parametrize(
    ("user", "topic", "allowed"),
    [
        ("gate-a", "maskgate/gate-a/door/command", True),
        ("gate-a", "maskgate/gate-a/events", True),
        ("gate-a", "maskgate/gate-a/state", True),
        ("gate-a", "maskgate/gate-a/availability", True),
        ("gate-a", "homeassistant/sensor/maskgate_gate-a/fps/config", True),
        ("gate-a", "maskgate/gate-b/events", False),
        ("gate-a", "maskgate/gate-b/availability", False),
        ("gate-a", "maskgate/gate-a/door/ack", False),  # a gate cannot forge its own door's acks
        ("gate-a", "maskgate/models/active", False),  # only the dashboard announces models
        ("gate-a", "homeassistant/sensor/maskgate_gate-b/fps/config", False),
        ("door.gate-a", "maskgate/gate-a/door/ack", True),
        ("door.gate-a", "maskgate/gate-a/door/command", False),
        ("door.gate-a", "maskgate/gate-b/door/ack", False),
        ("door.gate-a", "maskgate/gate-a/events", False),
        # The gates' rights are each gate's own, not patterns every user shares: a door controller or
        # the dashboard cannot pose as a gate under its own user name.
        ("door.gate-a", "homeassistant/sensor/maskgate_door.gate-a/fps/config", False),
        ("door.gate-a", "maskgate/door.gate-a/door/command", False),
        ("door.gate-a", "maskgate/models/active", False),
        ("maskgate-dashboard", "maskgate/models/active", True),
        ("maskgate-dashboard", "maskgate/maskgate-dashboard/door/command", False),
        ("maskgate-dashboard", "homeassistant/sensor/maskgate_maskgate-dashboard/fps/config", False),
        ("maskgate-dashboard", "maskgate/gate-a/door/command", False),
    ],
)
def test_each_user_writes_only_its_own_topics(broker, user, topic, allowed):
    client = as_user(broker, user)
    try:
        assert refused(client.publish(topic, b"{}")) is not allowed
    finally:
        client.close()


def test_a_gate_cannot_read_another_gates_acks(broker):
    snooper = as_user(broker, "gate-a", ["maskgate/gate-b/door/ack"])
    door_b = as_user(broker, "door.gate-b")
    try:
        assert not refused(door_b.publish("maskgate/gate-b/door/ack", b"{}"))
        assert snooper.wait_for("maskgate/gate-b/door/ack", 1, timeout=1) == []
    finally:
        snooper.close()
        door_b.close()


def gate_config(url: str, user: str, secret: str = "acl-secret", **mqtt) -> Config:
    mqtt = {
        "username": user,
        "password": PASSWORDS[user],
        "command_secret": secret,
        "ack_timeout_s": 2.0,
        **mqtt,
    }
    return Config(gate_id="gate-a", mqtt=MqttConfig(url=url, **mqtt))


def run_gate_and_door(store: EventStore, gate: Config, door: Config) -> DoorStatus:
    controller = DoorSimulator(door, "gate-a", open_s=0.1)
    link = DoorLink(gate, store, on_active_model=lambda _m: None)
    controller.start()
    link.start()
    try:
        assert controller.client.wait_connected(10), "door controller did not connect"
        assert link.client.wait_connected(10), "gate did not connect"
        wait_until(lambda: False, timeout=0.2)
        event = link.submit(make_decision("gate-a", action=Action.ALLOW))
        wait_until(lambda: store.get_event(event.event_id).door_status is not None, 5)
        return store.get_event(event.event_id).door_status
    finally:
        link.stop()
        controller.stop()


def test_the_real_flow_works_within_the_acl(broker, store):
    gate = gate_config(broker.url, "gate-a", homeassistant_discovery=True)
    door = gate_config(broker.url, "door.gate-a")
    assert run_gate_and_door(store, gate, door) is DoorStatus.OPENED


def test_tls_listener_with_the_generated_ca(broker, store, tmp_path):
    ca = Path(broker.workdir) / "certs" / "ca.crt"
    url = f"mqtts://127.0.0.1:{broker.tls_port}"
    gate = gate_config(url, "gate-a", ca_file=str(ca))
    door = gate_config(url, "door.gate-a", ca_file=str(ca))
    assert run_gate_and_door(store, gate, door) is DoorStatus.OPENED


def test_tls_refuses_a_broker_it_cannot_verify(broker, tmp_path):
    from maskgate.gate.comms import MqttClient
    from maskgate.gate.comms.client import BrokerSettings

    subprocess.run(
        [str(DEPLOY / "make-certs.sh"), str(tmp_path / "other"), "127.0.0.1"], check=True, capture_output=True
    )
    url = f"mqtts://127.0.0.1:{broker.tls_port}"
    config = gate_config(url, "gate-a", ca_file=str(tmp_path / "other" / "ca.crt"))
    client = MqttClient(BrokerSettings.from_config(config.mqtt), "tls-untrusted")
    client.start()
    try:
        assert not client.wait_connected(2)
    finally:
        client.stop()
