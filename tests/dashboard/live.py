"""Start the real dashboard (`maskgate dashboard`, waitress and its scheduler) as a subprocess."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .conftest import SECRET


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def maskgate_command() -> str:
    """The installed `maskgate` script next to this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "maskgate"
    found = str(beside) if beside.exists() else shutil.which("maskgate")
    assert found, "the maskgate command is not installed (pip install -e .)"
    return found


def dashboard_environment(database_url: str, folder: Path, **extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("MASKGATE_")}
    env.update(
        MASKGATE_DATABASE_URL=database_url,
        MASKGATE_DASHBOARD__SECRET_KEY=SECRET,
        MASKGATE_DASHBOARD__SECURE_COOKIES="false",
        MASKGATE_PATHS__SNAPSHOTS=str(folder / "snapshots"),
        MASKGATE_PATHS__MODELS=str(folder / "models"),
        MASKGATE_LOG_LEVEL="INFO",
        **extra,
    )
    return env


@dataclass
class LiveDashboard:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def live_dashboard(
    database_url: str, folder: Path, timeout: float = 30.0, **extra_env: str
) -> Iterator[LiveDashboard]:
    port = free_port()
    log_path = folder / "dashboard.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [maskgate_command(), "dashboard", "--host", "127.0.0.1", "--port", str(port)],
            env=dashboard_environment(database_url, folder, **extra_env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = LiveDashboard(f"http://127.0.0.1:{port}", process, log_path)
    try:
        _wait_healthy(server, timeout)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_healthy(server: LiveDashboard, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"the dashboard exited with {server.process.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(server.url + "/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"the dashboard did not answer within {timeout} s:\n{server.log()}")
