"""Load (issue #10): bench/load.py's harness, shorter and with fewer gates, as a test.

5 gates at 5 decisions/s for 10 s through the real broker into a scratch PostgreSQL database,
the dashboard served and in use meanwhile. Nothing may be lost or duplicated: in PostgreSQL,
on the wire, at the doors. No timing is asserted; the figures are printed
(`python bench/load.py` runs the full 20 gates for 60 s).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from tests.conftest import POSTGRES_ADMIN_URL
from tests.gate.comms.brokers import SYSTEM_PORT, port_open

pytestmark = [
    pytest.mark.load,
    pytest.mark.integration,
    pytest.mark.skipif(not port_open(SYSTEM_PORT), reason="no MQTT broker on 127.0.0.1:1883"),
]

BENCH = Path(__file__).parents[2] / "bench"


@pytest.fixture
def load(monkeypatch: pytest.MonkeyPatch):
    """bench/load.py as a module (it imports its neighbours, bench/mqtt.py and bench/store.py)."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("load")


@pytest.mark.parametrize("topology", ["spool", "direct"])  # direct: gates share one database
def test_five_gates_for_ten_seconds_lose_and_duplicate_nothing(load, topology):
    args = load.parse_args(
        ["--gates", "5", "--seconds", "10", "--topology", topology, "--postgres", POSTGRES_ADMIN_URL]
    )
    figures = load.run(args)
    print("\n" + load.report(figures))
    assert figures["submitted"] > 0 and figures["spool_drained"]
    assert figures["lost"] == figures["extra"] == 0  # PostgreSQL holds exactly what was decided
    assert figures["lost_on_the_wire"] == figures["duplicates"] == 0  # each event published once
    assert figures["door_duplicates"] == 0  # each door command delivered once
    recorded, doors = figures["door_outcomes"], figures["door_outcomes_in_doors"]
    for outcome in ("opened", "refused"):  # what the doors did is what is recorded
        assert recorded.get(outcome, 0) == doors.get(outcome, 0), (recorded, doors)
    assert all(page["requests"] > 0 and page["errors"] == 0 for page in figures["pages"].values())
