"""A paho-mqtt 2 client (MQTT 5, ``CallbackAPIVersion.VERSION2``) that rides out broker outages.

Why a fresh paho client per connection: paho keeps unacknowledged QoS 1 messages in memory
and re-sends them after a reconnect however old they are, and the broker starts a message's
MQTT 5 expiry only when it receives it. A door command re-sent that way would be an "open"
delivered late. So here each TCP connection gets its own paho client; when the connection is
lost, that client and its queue are dropped, and the caller (the outbox, which knows every
message's deadline) decides what is still worth publishing on the next one.

Every (re)connection: clean start, the Last Will set, the subscriptions renewed, then the
``on_connect`` hook (which publishes ``online``). Handlers run on paho's network thread; an
exception in one is logged and never reaches paho.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from maskgate.config import MqttConfig, mqtt_url_problem
from maskgate.const import MQTT_DEFAULT_PORTS

log = logging.getLogger("maskgate.mqtt")

CONNACK_TIMEOUT_S = 10.0
# QoS 1 publishes paho keeps on the wire at once (its default, set explicitly: the door link keeps
# its event messages under it); more wait in paho's own queue, behind the ones handed over before.
MAX_INFLIGHT = 20


class MqttConfigError(ValueError):
    """The [mqtt] settings cannot work (bad URL, missing TLS file)."""


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Where and how to connect, from the [mqtt] config section."""

    host: str
    port: int
    tls: bool = False
    username: str = ""
    password: str = field(default="", repr=False)
    ca_file: str = ""
    client_cert: str = ""
    client_key: str = ""
    keepalive_s: int = 30

    @classmethod
    def from_config(cls, mqtt: MqttConfig) -> BrokerSettings:
        if problem := mqtt_url_problem(mqtt.url):  # the config's own rule, for configs built in code
            raise MqttConfigError(f"mqtt.url: {problem}")
        parts = urlsplit(mqtt.url)
        port = parts.port or MQTT_DEFAULT_PORTS[parts.scheme]
        if bool(mqtt.client_cert) != bool(mqtt.client_key):
            raise MqttConfigError("mqtt.client_cert and mqtt.client_key go together")
        for key in ("ca_file", "client_cert", "client_key"):
            path = getattr(mqtt, key)
            if path and not Path(path).is_file():
                raise MqttConfigError(f"mqtt.{key}: no file at {path!r}")
        if parts.scheme == "mqtts":
            _check_tls_files(mqtt)
        return cls(
            host=parts.hostname,
            port=port,
            tls=parts.scheme == "mqtts",
            username=mqtt.username,
            password=mqtt.password,
            ca_file=mqtt.ca_file,
            client_cert=mqtt.client_cert,
            client_key=mqtt.client_key,
            keepalive_s=mqtt.keepalive_s,
        )

    def describe(self) -> str:
        who = f" as {self.username}" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}{who}"

    def tls_files(self) -> str:
        """The TLS files in use, for error messages."""
        files = {"ca_file": self.ca_file, "client_cert": self.client_cert, "client_key": self.client_key}
        return ", ".join(f"mqtt.{key} {path!r}" for key, path in files.items() if path) or "system CAs"


def _check_tls_files(mqtt: MqttConfig) -> None:
    """Load the TLS files as paho will on every connect, so that a bad one stops the start, named."""
    context = ssl.create_default_context()
    if mqtt.ca_file:
        try:
            context.load_verify_locations(mqtt.ca_file)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise MqttConfigError(
                f"mqtt.ca_file {mqtt.ca_file!r}: not a usable CA certificate file: {exc}"
            ) from None
    if mqtt.client_cert:
        try:
            context.load_cert_chain(mqtt.client_cert, mqtt.client_key)
        except (OSError, ValueError) as exc:
            raise MqttConfigError(
                f"mqtt.client_cert {mqtt.client_cert!r} / mqtt.client_key {mqtt.client_key!r}: "
                f"not a usable certificate and key: {exc}"
            ) from None


@dataclass(frozen=True, slots=True)
class Will:
    """The Last Will: what the broker publishes for us when we vanish without a clean disconnect."""

    topic: str
    payload: str
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A received message, independent of paho (handlers and tests build these directly)."""

    topic: str
    payload: bytes
    retain: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None
    received_at: float = 0.0  # time.monotonic() on arrival, for round-trip times

    @classmethod
    def from_paho(cls, message: paho.MQTTMessage) -> IncomingMessage:
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        return cls(
            topic=message.topic,
            payload=bytes(message.payload),
            retain=bool(message.retain),
            response_topic=response_topic if isinstance(response_topic, str) else None,
            correlation_data=bytes(correlation) if isinstance(correlation, bytes | bytearray) else None,
            received_at=time.monotonic(),
        )


MessageHandler = Callable[[IncomingMessage], None]


class PublishState(enum.Enum):
    PENDING = "pending"  # handed to the connection, no PUBACK yet
    SENT = "sent"  # the broker acknowledged it (QoS 1) or it was written (QoS 0)
    FAILED = "failed"  # refused (not connected, not authorized, ...); see `error`
    LOST = "lost"  # its connection died before the PUBACK: it may or may not have arrived


class Publication:
    """One publish on one connection."""

    def __init__(self, info: paho.MQTTMessageInfo | None, connection: _Connection | None, error: str = ""):
        self._info, self._connection = info, connection
        self._final: PublishState | None = PublishState.FAILED if error else None
        self.error = error

    @property
    def state(self) -> PublishState:
        if self._final is not None:
            return self._final
        info, connection = self._info, self._connection
        assert info is not None and connection is not None
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return self._finish(PublishState.FAILED, paho.error_string(info.rc))
        if info.is_published():
            reason = connection.puback_reasons.pop(info.mid, None)
            if reason is not None and reason.is_failure:
                return self._finish(PublishState.FAILED, f"broker refused: {reason}")
            return self._finish(PublishState.SENT)
        if connection.lost.is_set():
            return self._finish(PublishState.LOST, "connection lost before the broker acknowledged it")
        return PublishState.PENDING

    def wait(self, timeout: float) -> PublishState:
        deadline = time.monotonic() + timeout
        while (state := self.state) is PublishState.PENDING and time.monotonic() < deadline:
            time.sleep(0.002)
        return state

    def _finish(self, state: PublishState, error: str = "") -> PublishState:
        self._final, self.error = state, error
        return state


class _Connection:
    """One paho client for one TCP connection; discarded when the connection ends."""

    def __init__(self, client: paho.Client):
        self.client = client
        self.up = False
        self.connack = threading.Event()
        self.lost = threading.Event()
        self.refused = ""
        self.puback_reasons: dict[int, Any] = {}

    def close(self) -> None:
        self.client.loop_stop()


class MqttClient:
    """A named MQTT 5 client with a reconnect loop, a Last Will and standing subscriptions."""

    def __init__(
        self,
        settings: BrokerSettings,
        client_id: str,
        *,
        will: Will | None = None,
        on_connect: Callable[[], None] | None = None,
        on_published: Callable[[], None] | None = None,
        reconnect_min_s: float = 0.2,
        reconnect_max_s: float = 5.0,
    ):
        self.settings, self.client_id, self.will = settings, client_id, will
        self._on_connect_hook, self._on_published = on_connect, on_published
        self._reconnect = (reconnect_min_s, reconnect_max_s)
        self._subscriptions: dict[str, tuple[int, MessageHandler]] = {}
        self._connection: _Connection | None = None
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._connected_event = threading.Event()
        self._thread: threading.Thread | None = None
        self.connections = 0  # successful connections so far (tests and logs)

    # -- public ------------------------------------------------------------------------------

    def subscribe(self, topic_filter: str, handler: MessageHandler, qos: int = 1) -> None:
        """Route messages matching `topic_filter` to `handler`, now and after every reconnect."""
        self._subscriptions[topic_filter] = (qos, handler)
        connection = self._connection
        if connection is not None and connection.up:
            connection.client.subscribe([(topic_filter, SubscribeOptions(qos=qos))])

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"MQTT client {self.client_id} already started")
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{self.client_id}", daemon=True)
        self._thread.start()

    @property
    def connected(self) -> bool:
        connection = self._connection
        return connection is not None and connection.up

    def wait_connected(self, timeout: float) -> bool:
        return self._connected_event.wait(timeout)

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> Publication:
        """Hand one message to the current connection; FAILED at once when there is none."""
        connection = self._connection
        if connection is None or not connection.up:
            return Publication(None, None, error="not connected to the broker")
        info = connection.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        return Publication(info, connection)

    def stop(self, final: Sequence[tuple[str, str, bool]] = (), timeout: float = 2.0) -> None:
        """Publish `final` (topic, payload, retain) at QoS 1, then disconnect cleanly: no Last Will."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        connection = self._connection
        if connection is None:
            return
        if connection.up:
            deadline = time.monotonic() + timeout
            for publication in [
                self.publish(topic, payload, retain=retain) for topic, payload, retain in final
            ]:
                publication.wait(max(0.0, deadline - time.monotonic()))
            connection.client.disconnect()
        connection.close()
        self._connection = None
        self._connected_event.clear()

    # -- the connection loop -------------------------------------------------------------------

    def _run(self) -> None:
        delay, reported_failure = self._reconnect[0], False
        while not self._stopping.is_set():
            connection, error = self._connect_once()
            if connection is None:
                if not reported_failure:
                    log.warning(
                        "MQTT %s: cannot connect to %s: %s (retrying)",
                        self.client_id,
                        self.settings.describe(),
                        error,
                    )
                    reported_failure = True
                else:
                    log.debug("MQTT %s: still cannot connect: %s", self.client_id, error)
                self._stopping.wait(delay)
                delay = min(delay * 2, self._reconnect[1])
                continue
            delay, reported_failure = self._reconnect[0], False
            while not self._stopping.is_set() and not connection.lost.is_set():
                self._wake.wait(1.0)
                self._wake.clear()
            if self._stopping.is_set():
                return  # stop() closes the live connection cleanly
            self._connected_event.clear()
            connection.close()
            log.warning(
                "MQTT %s: connection to %s lost; reconnecting", self.client_id, self.settings.describe()
            )

    def _connect_once(self) -> tuple[_Connection | None, str]:
        try:
            client = self._new_paho_client()
        except (OSError, ValueError) as exc:  # tls_set reads the TLS files again: one went bad since start
            return None, f"cannot load the TLS files ({self.settings.tls_files()}): {exc}"
        connection = _Connection(client)
        self._bind_callbacks(connection)
        self._connection = connection
        try:
            client.connect(
                self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s, clean_start=True
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            return None, str(exc) or type(exc).__name__
        client.loop_start()
        deadline = time.monotonic() + CONNACK_TIMEOUT_S
        while (
            not connection.connack.wait(0.05) and time.monotonic() < deadline and not self._stopping.is_set()
        ):
            pass
        if not connection.up:
            connection.close()
            return None, connection.refused or "no CONNACK from the broker"
        return connection, ""

    def _new_paho_client(self) -> paho.Client:
        # reconnect_on_failure=False: when this connection ends, its client ends (see module doc).
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5,
            reconnect_on_failure=False,
        )
        client.max_inflight_messages_set(MAX_INFLIGHT)
        settings = self.settings
        if settings.username:
            client.username_pw_set(settings.username, settings.password or None)
        if settings.tls:
            client.tls_set(
                ca_certs=settings.ca_file or None,
                certfile=settings.client_cert or None,
                keyfile=settings.client_key or None,
            )
        if self.will is not None:
            client.will_set(self.will.topic, self.will.payload, qos=self.will.qos, retain=self.will.retain)
        return client

    def _bind_callbacks(self, connection: _Connection) -> None:
        client = connection.client

        def on_connect(_client, _userdata, _flags, reason_code, _properties) -> None:
            if reason_code.is_failure:
                connection.refused = f"broker refused the connection: {reason_code}"
                connection.connack.set()
                return
            connection.up = True
            self.connections += 1
            log.info("MQTT %s: connected to %s", self.client_id, self.settings.describe())
            if self._subscriptions:
                client.subscribe(
                    [(topic, SubscribeOptions(qos=qos)) for topic, (qos, _) in self._subscriptions.items()]
                )
            if self._on_connect_hook is not None:
                _guarded(self._on_connect_hook, f"MQTT {self.client_id} on_connect hook")
            self._connected_event.set()
            connection.connack.set()

        def on_disconnect(_client, _userdata, _flags, reason_code, _properties) -> None:
            connection.up = False
            connection.lost.set()
            self._wake.set()
            if not self._stopping.is_set() and connection.connack.is_set():
                log.debug("MQTT %s: disconnected: %s", self.client_id, reason_code)

        def on_publish(_client, _userdata, mid, reason_code, _properties) -> None:
            connection.puback_reasons[mid] = reason_code
            if reason_code.is_failure:
                log.warning(
                    "MQTT %s: the broker refused a publish: %s (check the ACL)", self.client_id, reason_code
                )
            if self._on_published is not None:
                _guarded(self._on_published, f"MQTT {self.client_id} on_published hook")

        def on_subscribe(_client, _userdata, _mid, reason_codes, _properties) -> None:
            for code in reason_codes:
                if code.is_failure:
                    log.error(
                        "MQTT %s: a subscription was refused: %s (check the broker ACL)", self.client_id, code
                    )

        def on_message(_client, _userdata, message: paho.MQTTMessage) -> None:
            self._dispatch(message)

        client.on_socket_open = _no_delay
        client.on_connect, client.on_disconnect = on_connect, on_disconnect
        client.on_publish, client.on_subscribe, client.on_message = on_publish, on_subscribe, on_message

    def _dispatch(self, message: paho.MQTTMessage) -> None:
        try:
            incoming = IncomingMessage.from_paho(message)
        except Exception:  # a broker cannot crash us with odd properties
            log.exception("MQTT %s: unreadable message on %r", self.client_id, message.topic)
            return
        for topic_filter, (_qos, handler) in list(self._subscriptions.items()):
            if paho.topic_matches_sub(topic_filter, incoming.topic):
                _guarded(lambda h=handler: h(incoming), f"MQTT {self.client_id} handler for {topic_filter}")


def _no_delay(_client, _userdata, sock) -> None:
    # MQTT packets are small and answered at once (PUBLISH -> PUBACK -> ack): with Nagle's
    # algorithm on, each exchange waits for a delayed TCP ACK, ~40 ms per hop on Linux. Brokers
    # need the same (`set_tcp_nodelay true` in deploy/mosquitto/mosquitto.conf).
    with contextlib.suppress(OSError, AttributeError):  # not a TCP socket
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _guarded(action: Callable[[], None], what: str) -> None:
    """Run `action`; log (never raise) what it throws, so paho's network thread keeps running."""
    try:
        action()
    except Exception:
        log.exception("%s failed", what)


def connect_once(settings: BrokerSettings, client_id: str, timeout: float = 10.0) -> MqttClient:
    """A started client that is connected, or MqttConnectError after `timeout` (for one-shot publishers)."""
    client = MqttClient(settings, client_id)
    client.start()
    if not client.wait_connected(timeout):
        client.stop()
        raise MqttConnectError(f"cannot connect to {settings.describe()} within {timeout:g} s")
    return client


class MqttConnectError(RuntimeError):
    """No connection to the broker within the time allowed."""
