"""The agent's metrics and health endpoint, over real HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from maskgate.core import Action, Decision, Label
from maskgate.gate.metrics import AgentMetrics, AgentMonitor, Health, MetricsServer


@pytest.fixture
def served():
    metrics = AgentMetrics("gate-7")
    state = {"camera": True, "database": True}
    health = Health({name: (lambda name=name: state[name]) for name in state})
    server = MetricsServer(metrics, health, port=0).start()
    yield metrics, state, f"http://127.0.0.1:{server.port}"
    server.stop()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_metrics_are_exposed(served):
    metrics, _, base = served
    metrics.frames.inc(3)
    metrics.observe_stage("detect", 12.0)
    probabilities = {label: 1 / 3 for label in Label}
    metrics.observe_decision(
        Decision("gate-7", 1, Action.DENY, Label.WITHOUT_MASK, 0.9, probabilities, "v1", 180)
    )
    metrics.set_model("v1")
    status, text = get(f"{base}/metrics")
    assert status == 200
    assert "maskgate_frames_total 3.0" in text
    assert 'maskgate_stage_seconds_bucket{le="0.02",stage="detect"} 1.0' in text
    assert 'maskgate_decisions_total{action="deny",label="without_mask"} 1.0' in text
    assert 'maskgate_decision_latency_seconds_bucket{le="0.2"} 1.0' in text
    assert 'maskgate_model_info{version="v1"} 1.0' in text and 'gate_id="gate-7"' in text


def test_health_names_what_is_wrong(served):
    _, state, base = served
    status, body = get(f"{base}/healthz")
    assert status == 200 and json.loads(body)["healthy"] is True
    state["camera"] = False
    status, body = get(f"{base}/healthz")
    assert status == 503 and json.loads(body)["checks"] == {"camera": False, "database": True}


def test_a_crashing_check_is_unhealthy_not_an_error():
    def broken() -> bool:
        raise RuntimeError("database gone")

    assert Health({"database": broken}).report() == (False, {"database": False})


def test_unknown_paths_are_404(served):
    assert get(f"{served[2]}/admin")[0] == 404


def test_spool_depth_and_central_database_are_read_at_each_scrape():
    metrics = AgentMetrics("gate-7")
    server = MetricsServer(metrics, Health(), port=0).start()
    now = {"pending": 3, "central": False, "quarantined": 0}
    monitor = AgentMonitor(
        metrics,
        server,
        None,
        database_ok=lambda: now["central"],
        spool_pending=lambda: now["pending"],
        spool_quarantined=lambda: now["quarantined"],
    )
    try:
        text = get(f"http://127.0.0.1:{server.port}/metrics")[1]
        assert "maskgate_spool_pending 3.0" in text and "maskgate_database_ok 0.0" in text
        assert "maskgate_spool_quarantined 0.0" in text
        now.update(pending=0, central=True, quarantined=1)
        text = get(f"http://127.0.0.1:{server.port}/metrics")[1]
        assert "maskgate_spool_pending 0.0" in text and "maskgate_database_ok 1.0" in text
        assert "maskgate_spool_quarantined 1.0" in text
    finally:
        monitor.stop()


def test_a_failing_reading_is_nan_not_a_broken_scrape():
    metrics = AgentMetrics("gate-7")
    server = MetricsServer(metrics, Health(), port=0).start()

    def broken() -> int:
        raise RuntimeError("spool unreadable")

    monitor = AgentMonitor(metrics, server, None, spool_pending=broken)
    try:
        status, text = get(f"http://127.0.0.1:{server.port}/metrics")
        assert status == 200 and "maskgate_spool_pending NaN" in text
    finally:
        monitor.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_a_running_agent_serves_its_metrics_and_health(tmp_path):
    import os
    import re
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "MASKGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "MASKGATE_PATHS__SNAPSHOTS": str(tmp_path / "snaps"),
        "MASKGATE_PATHS__ACTIVE_MODEL": str(Path(__file__).parents[2] / "models" / "default"),
        "MASKGATE_METRICS_PORT": str(port),
        "MASKGATE_PATHS__SPOOL": str(tmp_path / "spool.sqlite"),
    }
    maskgate = str(Path(sys.executable).parent / "maskgate")
    subprocess.run([maskgate, "db", "upgrade"], env=env, check=True, capture_output=True)
    agent = subprocess.Popen(
        [maskgate, "agent", "--source", "synthetic", "--no-mqtt", "--realtime"],
        env=env,
        stdout=subprocess.PIPE,
    )
    try:
        frames, deadline = 0.0, time.monotonic() + 60
        while frames == 0 and time.monotonic() < deadline:
            time.sleep(1)
            try:
                status, text = get(f"http://127.0.0.1:{port}/metrics")
            except urllib.error.URLError:  # not listening yet: the agent is still starting
                continue
            found = re.search(r"^maskgate_frames_total (\S+)$", text, re.MULTILINE) if status == 200 else None
            frames = float(found.group(1)) if found else 0.0
        assert frames > 0
        assert 'maskgate_stage_seconds_count{stage="detect"}' in text
        # The spool's counts come from the running forwarder (a reading that failed would be NaN).
        assert re.search(r"^maskgate_spool_pending \d", text, re.MULTILINE)
        assert "\nmaskgate_spool_quarantined 0.0\n" in text
        status, body = get(f"http://127.0.0.1:{port}/healthz")
        checks = {"agent": True, "camera": True, "database": True, "spool": True}
        assert status == 200 and json.loads(body)["checks"] == checks
    finally:
        agent.terminate()
        agent.wait(timeout=30)


def test_a_busy_metrics_port_names_the_address():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError) as busy:
            MetricsServer(AgentMetrics("gate-7"), Health(), port=port)
    assert busy.value.filename == f"metrics_host:metrics_port 127.0.0.1:{port}"
    assert "in use" in busy.value.strerror
