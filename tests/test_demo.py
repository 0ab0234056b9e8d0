"""`maskgate demo` end to end: database, broker, door controller, dashboard and agent together."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.integration
@pytest.mark.slow
def test_demo_runs_the_whole_system(tmp_path):
    env = {
        **os.environ,
        "MASKGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite'}",
        "MASKGATE_PATHS__SNAPSHOTS": str(tmp_path / "snapshots"),
        "MASKGATE_PATHS__ACTIVE_MODEL": str(ROOT / "models" / "default"),
        "MASKGATE_DASHBOARD__PORT": "0",
        "MASKGATE_GATE_ID": f"demo-{uuid.uuid4().hex[:8]}",  # alone on the shared broker
    }
    maskgate = str(Path(sys.executable).parent / "maskgate")
    result = subprocess.run(
        [maskgate, "demo", "--no-wait"], env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.findall(r"^\S+ track \d+: (\w+) ", out, re.MULTILINE) == ["ALLOW", "DENY", "WARN"]
    assert re.findall(r"door for track \d+: (\w+)", out) == ["opened", "refused", "refused"]
    assert "opened 1 time(s)" in out
    assert re.search(r"dashboard on http://127\.0\.0\.1:\d+/ \(user 'demo'", out)
    assert len(list((tmp_path / "snapshots").rglob("*.jpg"))) == 2
