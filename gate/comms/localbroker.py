"""A broker for local runs (`maskgate demo`): the configured one if it answers, else a private Mosquitto.

    with local_broker(config) as url:
        config = dataclasses.replace(config, mqtt=dataclasses.replace(config.mqtt, url=url))
        ...

The private broker listens on loopback only, on a free port, anonymous, with
``set_tcp_nodelay`` (see deploy/mosquitto); it is stopped when the block ends.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from maskgate.config import Config
from maskgate.gate.comms.client import BrokerSettings


class NoBrokerError(RuntimeError):
    """The configured broker does not answer and no `mosquitto` binary is installed."""


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def local_broker(config: Config) -> Iterator[str]:
    """The URL of a broker to use: the configured one if reachable, else one started here."""
    settings = BrokerSettings.from_config(config.mqtt)
    if reachable(settings.host, settings.port):
        yield config.mqtt.url
        return
    binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        raise NoBrokerError(
            f"no MQTT broker at {settings.describe()} and no `mosquitto` to start one (apt install mosquitto)"
        )
    with tempfile.TemporaryDirectory(prefix="maskgate-broker-") as folder:
        port = _free_port()
        conf = Path(folder) / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n")
        process = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            _wait_for(port, process)
            yield f"mqtt://127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise NoBrokerError(f"mosquitto exited at start: {error.strip()[:500]}")
        if reachable("127.0.0.1", port, timeout=0.2):
            return
        time.sleep(0.05)
    process.kill()
    raise NoBrokerError(f"mosquitto did not listen on 127.0.0.1:{port} within 10 s")
