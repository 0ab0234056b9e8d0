"""Test helpers: private Mosquitto processes, a plain paho client that watches, waiting.

The system broker at 127.0.0.1:1883 is shared: tests use unique topic prefixes there and
never stop it. Tests that need an ACL, TLS or an outage start their own broker on a free port.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties

ROOT = Path(__file__).parents[3]
DEPLOY = ROOT / "deploy" / "mosquitto"
SYSTEM_PORT = 1883


def wait_until(condition: Callable[[], object], timeout: float = 5.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def binary(name: str) -> str:
    """A Mosquitto tool; .ci/run installs them (Debian package `mosquitto`)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/usr/local/sbin")
    if not found:
        raise RuntimeError(f"{name} not found: install mosquitto (.ci/run does)")
    return found


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Broker:
    """A Mosquitto process of our own, on a free port; can be killed and restarted mid-test."""

    def __init__(self, workdir: Path, config_text: str, port: int):
        self.workdir, self.port = workdir, port
        self.config_file = workdir / "mosquitto.conf"
        self.config_file.write_text(config_text)
        self.log_file = workdir / "mosquitto.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> Broker:
        log = self.log_file.open("ab")
        self.process = subprocess.Popen(
            [binary("mosquitto"), "-c", str(self.config_file)], stdout=log, stderr=log
        )
        if not wait_until(lambda: port_open(self.port), timeout=10):
            self.stop()
            raise RuntimeError(f"mosquitto did not start on {self.port}: {self.log_file.read_text()[-2000:]}")
        return self

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no persistence save, clients just lose the connection."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None
        wait_until(lambda: not port_open(self.port), timeout=5)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


def plain_config(port: int, workdir: Path, persistence: bool = False) -> str:
    """An anonymous broker on loopback (TCP_NODELAY like the deploy config)."""
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        "set_tcp_nodelay true",
        f"user {getpass.getuser()}",
    ]
    if persistence:
        # Autosave after every change: a SIGKILL keeps the sessions stored so far.
        lines += [
            "persistence true",
            f"persistence_location {workdir}/",
            "autosave_interval 1",
            "autosave_on_changes true",
        ]
    return "\n".join(lines) + "\n"


def deploy_config(workdir: Path, port: int, tls_port: int | None = None) -> str:
    """deploy/mosquitto/mosquitto.conf (and tls.conf) as shipped, with paths and ports moved into `workdir`.

    Only deployment paths, ports, the include and persistence change; authentication, the
    ACL and every other setting are the shipped ones.
    """
    text = (DEPLOY / "mosquitto.conf").read_text()
    if tls_port is not None:
        tls = (DEPLOY / "tls.conf").read_text().replace("listener 8883", f"listener {tls_port} 127.0.0.1")
        text = text.replace("include_dir /etc/mosquitto/maskgate/conf.d", tls)
    text = text.replace("include_dir /etc/mosquitto/maskgate/conf.d", "")
    text = text.replace("listener 1883 127.0.0.1", f"listener {port} 127.0.0.1")
    text = text.replace("/etc/mosquitto/maskgate", str(workdir))
    text = text.replace("persistence true", "persistence false")
    text = text.replace("persistence_location /var/lib/mosquitto/", f"persistence_location {workdir}/")
    assert "/etc/" not in "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    return text + f"\nuser {getpass.getuser()}\n"


def add_gate(workdir: Path, gate: str, gate_password: str, door_password: str) -> None:
    """deploy/mosquitto/add-gate.sh, as an operator would run it."""
    env = {
        "PATH": "/usr/sbin:/usr/bin:/bin:/usr/local/bin",
        "GATE_PASSWORD": gate_password,
        "DOOR_PASSWORD": door_password,
    }
    subprocess.run(
        [str(DEPLOY / "add-gate.sh"), "-d", str(workdir), gate], check=True, env=env, capture_output=True
    )


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    properties: Properties | None
    at: float  # time.monotonic()


class Spy:
    """A plain paho client, no maskgate code in it: what an integrator's system would see."""

    def __init__(
        self,
        port: int = SYSTEM_PORT,
        topics: Iterable[str] = (),
        *,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        clean_start: bool = True,
        session_expiry_s: int | None = None,
        reconnect: bool = False,
    ):
        self.messages: list[Received] = []
        self.connect_reason: object = None
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._acks: dict[int, object] = {}
        self._topics = list(topics)
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"spy-{uuid.uuid4().hex[:10]}",
            protocol=paho.MQTTv5,
            reconnect_on_failure=reconnect,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_publish = lambda _c, _u, mid, reason, _p: self._acks.__setitem__(mid, reason)
        properties = None
        if session_expiry_s is not None:
            from paho.mqtt.packettypes import PacketTypes

            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = session_expiry_s
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", port, keepalive=10, clean_start=clean_start, properties=properties)
        self.client.loop_start()
        self._connected.wait(5)
        if self._topics and not self.refused:
            self._subscribed.wait(5)

    def _on_connect(self, client, _userdata, _flags, reason, _properties) -> None:
        self.connect_reason = reason
        if not reason.is_failure and self._topics:
            client.subscribe([(topic, 1) for topic in self._topics])
        self._connected.set()

    def _on_message(self, _client, _userdata, message) -> None:
        with self._lock:
            self.messages.append(
                Received(
                    message.topic,
                    bytes(message.payload),
                    bool(message.retain),
                    message.properties,
                    time.monotonic(),
                )
            )

    @property
    def refused(self) -> bool:
        return self.connect_reason is None or self.connect_reason.is_failure

    def on(self, topic: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(self, topic: str, count: int = 1, timeout: float = 5.0) -> list[Received]:
        wait_until(lambda: len(self.on(topic)) >= count, timeout)
        return self.on(topic)

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float = 5.0,
    ) -> object:
        """Publish and return the broker's PUBACK reason code (QoS 1)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        wait_until(lambda: info.mid in self._acks, timeout)
        return self._acks.get(info.mid)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def clear_retained(port: int, topics: Iterable[str]) -> None:
    """Empty retained messages so the shared broker keeps nothing from a test."""
    spy = Spy(port)
    for topic in topics:
        spy.publish(topic, b"", retain=True)
    spy.close()


def make_config(prefix: str, gate_id: str = "gate-1", url: str = f"mqtt://127.0.0.1:{SYSTEM_PORT}", **mqtt):
    """A Config for tests: the given broker, a private topic prefix, short timeouts."""
    from maskgate.config import Config, MqttConfig

    settings = {"door_command_ttl_s": 3.0, "ack_timeout_s": 1.5, **mqtt}
    return Config(gate_id=gate_id, mqtt=MqttConfig(url=url, topic_prefix=prefix, **settings))


def make_decision(gate_id: str = "gate-1", action=None, label=None, **overrides):
    """A real Decision; numpy scalars by default, as the classifier produces them."""
    import numpy as np

    from maskgate.core import DEFAULT_ACTIONS, Decision, Label

    label = label or Label.WITH_MASK
    action = action or DEFAULT_ACTIONS[label]
    fields = {
        "gate_id": gate_id,
        "track_id": np.int64(7),
        "action": action,
        "label": label,
        "confidence": np.float32(0.973),
        "probabilities": {label: np.float32(0.973)},
        "model_version": "test-1",
        "latency_ms": np.float64(210.5),
        **overrides,
    }
    return Decision(**fields)
