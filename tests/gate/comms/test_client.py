"""The MQTT client wrapper: settings from config, and no stale re-sends after a reconnect."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from maskgate.config import MqttConfig
from maskgate.gate.comms.client import BrokerSettings, MqttClient, MqttConfigError, PublishState
from tests.gate.comms.brokers import DEPLOY, Broker, Spy, free_port, plain_config, wait_until

TRUNCATED = "-----BEGIN CERTIFICATE-----\ntruncated during rotation\n"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """A CA, a broker certificate for 127.0.0.1 and a client certificate (deploy/mosquitto/make-certs.sh)."""
    folder = tmp_path_factory.mktemp("certs")
    subprocess.run(
        [str(DEPLOY / "make-certs.sh"), str(folder), "127.0.0.1", "gate-1"], check=True, capture_output=True
    )
    return folder


def test_settings_from_config(certs):
    ca = certs / "ca.crt"
    plain = BrokerSettings.from_config(
        MqttConfig(url="mqtt://broker.local", username="gate-1", password="pw")
    )
    assert (plain.host, plain.port, plain.tls, plain.username) == ("broker.local", 1883, False, "gate-1")
    assert "pw" not in repr(plain) and plain.describe() == "mqtt://broker.local:1883 as gate-1"
    tls = BrokerSettings.from_config(MqttConfig(url="mqtts://10.0.0.5", ca_file=str(ca)))
    assert (tls.port, tls.tls, tls.ca_file) == (8883, True, str(ca))
    assert BrokerSettings.from_config(MqttConfig(url="mqtt://[::1]:1884")).port == 1884


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"url": "tcp://broker"}, "use mqtt://"),
        ({"url": "mqtt://"}, "no host"),
        ({"url": "mqtt://broker:99999"}, "bad port"),
        ({"url": "mqtt://broker/path"}, "no path"),
        ({"url": "mqtt://u:p@broker"}, "credentials"),
        ({"client_cert": "/x.crt"}, "go together"),
        ({"url": "mqtts://broker", "client_cert": "/no.crt", "client_key": "/no.key"}, "no file"),
    ],
)
def test_bad_settings(settings, message):
    with pytest.raises(MqttConfigError, match=message):
        BrokerSettings.from_config(MqttConfig(**settings))


def test_a_tls_file_that_cannot_be_loaded_stops_the_start_naming_it(certs, tmp_path):
    broken = tmp_path / "broken.crt"
    broken.write_text(TRUNCATED)
    good = {"ca_file": str(certs / "ca.crt"), "client_cert": str(certs / "gate-1.crt")}
    assert BrokerSettings.from_config(
        MqttConfig(url="mqtts://b", **good, client_key=str(certs / "gate-1.key"))
    )
    with pytest.raises(MqttConfigError, match=re.escape(f"mqtt.ca_file {str(broken)!r}")):
        BrokerSettings.from_config(MqttConfig(url="mqtts://b", ca_file=str(broken)))
    with pytest.raises(MqttConfigError, match=re.escape(f"mqtt.client_key {str(broken)!r}")):
        BrokerSettings.from_config(MqttConfig(url="mqtts://b", **good, client_key=str(broken)))


@pytest.mark.integration
def test_a_ca_file_broken_while_running_is_a_failed_connect_retried(certs, tmp_path, caplog):
    """paho reads the TLS files on every connect: a CA file caught mid-rotation at a reconnect is logged,
    naming it, and retried like a broker that does not answer (it once ended the MQTT thread for good)."""
    port, tls_port = free_port(), free_port()
    tls_listener = (
        f"listener {tls_port} 127.0.0.1\n"
        f"certfile {certs / 'broker.crt'}\nkeyfile {certs / 'broker.key'}\ncafile {certs / 'ca.crt'}\n"
    )
    broker = Broker(tmp_path, plain_config(port, tmp_path) + tls_listener, port).start()
    ca = tmp_path / "ca.crt"
    ca.write_bytes((certs / "ca.crt").read_bytes())
    settings = BrokerSettings.from_config(MqttConfig(url=f"mqtts://127.0.0.1:{tls_port}", ca_file=str(ca)))
    client = MqttClient(settings, "tls-rotation", reconnect_max_s=0.3)
    client.start()
    try:
        assert client.wait_connected(5)
        caplog.set_level(logging.WARNING, logger="maskgate.mqtt")
        ca.write_text(TRUNCATED)  # the rotation writes the new CA file...
        broker.kill()
        broker.start()
        assert wait_until(lambda: any(str(ca) in r.getMessage() for r in caplog.records), timeout=10)
        assert not client.connected
        ca.write_bytes((certs / "ca.crt").read_bytes())  # ... and finishes it
        assert wait_until(lambda: client.connected, timeout=10)
        assert client.connections == 2
    finally:
        client.stop()
        broker.stop()


@pytest.mark.integration
def test_a_publish_lost_with_its_connection_is_not_resent_later(tmp_path):
    """paho would re-send it after the reconnect, however old; a door command must not be."""
    port = free_port()
    broker = Broker(tmp_path, plain_config(port, tmp_path), port).start()
    client = MqttClient(
        BrokerSettings(host="127.0.0.1", port=port, keepalive_s=2), "lost-publish", reconnect_max_s=0.3
    )
    client.start()
    try:
        assert client.wait_connected(5)
        os.kill(broker.process.pid, signal.SIGSTOP)  # frozen: takes the packet, never answers
        publication = client.publish("t/door/command", b"open", qos=1)
        assert publication.wait(0.5) is PublishState.PENDING
        broker.kill()  # the connection dies with the message unacknowledged
        assert wait_until(lambda: publication.state is not PublishState.PENDING, timeout=10)
        assert publication.state is PublishState.LOST
        broker.start()
        watcher = Spy(port, ["t/#"])
        assert wait_until(lambda: client.connected, timeout=30)  # slow reconnects on a loaded CI box
        assert client.connections == 2
        later = client.publish("t/later", b"fresh", qos=1)
        assert later.wait(5) is PublishState.SENT
        watcher.wait_for("t/later")
        assert [m.topic for m in watcher.messages] == ["t/later"]  # the stale "open" never came back
        watcher.close()
    finally:
        client.stop()
        broker.stop()


@pytest.mark.integration
def test_publishing_without_a_connection_fails_at_once():
    client = MqttClient(BrokerSettings(host="127.0.0.1", port=free_port()), "nobody-home")
    client.start()
    try:
        publication = client.publish("t/x", b"1")
        assert publication.state is PublishState.FAILED and "not connected" in publication.error
        assert not client.wait_connected(0.5)
    finally:
        client.stop()


@pytest.mark.integration
def test_contrast_stock_paho_resends_a_stale_message_after_reconnecting(tmp_path):
    """Why the wrapper uses a fresh paho client per connection (see gate/comms/client.py)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    port = free_port()
    broker = Broker(tmp_path, plain_config(port, tmp_path), port).start()
    stock = paho.Client(CallbackAPIVersion.VERSION2, client_id="stock-paho", protocol=paho.MQTTv5)
    stock.reconnect_delay_set(0.1, 0.3)
    stock.connect("127.0.0.1", port, keepalive=2)
    stock.loop_start()
    try:
        assert wait_until(stock.is_connected, timeout=5)
        os.kill(broker.process.pid, signal.SIGSTOP)
        stock.publish("t/door/command", b"open", qos=1)
        wait_until(lambda: False, timeout=0.3)
        broker.kill()
        wait_until(lambda: not stock.is_connected(), timeout=10)
        broker.start()
        watcher = Spy(port, ["t/#"])
        assert watcher.wait_for("t/door/command", timeout=10)[0].payload == b"open"  # seconds late
        watcher.close()
    finally:
        stock.loop_stop()
        broker.stop()


@pytest.mark.integration
def test_local_broker_uses_the_configured_one_or_starts_its_own():
    from maskgate.config import Config
    from maskgate.gate.comms.localbroker import local_broker

    configured = Config(mqtt=MqttConfig(url="mqtt://127.0.0.1:1883"))
    with local_broker(configured) as url:
        assert url == "mqtt://127.0.0.1:1883"
    absent = Config(mqtt=MqttConfig(url=f"mqtt://127.0.0.1:{free_port()}"))
    with local_broker(absent) as url:
        assert url != absent.mqtt.url
        client = MqttClient(BrokerSettings.from_config(MqttConfig(url=url)), "local-broker-test")
        client.start()
        assert client.wait_connected(5)
        client.stop()
