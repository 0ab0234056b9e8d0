"""Load (issue #10): many gates through the real broker into PostgreSQL while the dashboard is in use.

For --seconds (default 60), --gates gates (default 20) each submit --rate decisions/s (default 5)
through their own DoorLink and the real broker (--url, default the local Mosquitto). Their door
controllers ack from a process of their own and a building system's subscriber counts the events
(both from bench/mqtt.py). Everything lands in one scratch PostgreSQL database, created on the
--postgres server for the run, migrated, and dropped afterwards. Each gate has its own connection:

  --topology spool (default, docs/operations.md "Local spool"): each gate records into its own
      SQLite spool and its SpoolForwarder copies events and door outcomes to PostgreSQL;
  --topology direct: each gate's DoorLink works on PostgreSQL itself (an agent without
      paths.spool), so all the gates' outboxes are one table.

Meanwhile `maskgate dashboard` (waitress, in its own process) serves that database, and a user
signed in through the login form (in another process) requests the overview, events, incidents
and gates pages and /api/v1/events in turn, each as soon as the last came back.

Prints the events/s sustained (delivered to the subscriber), what was lost or duplicated (in
PostgreSQL, on the wire, at the doors), the door outcomes, the ack round trip p50/p95, and the
latency p50/p95/max of each page during the load. --json OUT writes the same figures.

    .venv/bin/python bench/load.py [--gates 20] [--rate 5] [--seconds 60] [--topology spool] [--json OUT]
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from mqtt import run_gates  # bench/mqtt.py: the gates, their doors, the subscriber
from sqlalchemy import select
from stats import percentile  # bench/stats.py
from store import postgres_database  # bench/store.py: a scratch database, dropped afterwards

from maskgate.store import EventStore, UserStore, make_engine, migrate
from maskgate.store.schema import EventRow
from maskgate.store.spool import SpoolForwarder, prepare_spool

ROOT = Path(__file__).resolve().parents[1]
PAGES = {
    "overview": "/",
    "events": "/events",
    "incidents": "/incidents",
    "gates": "/gates",
    "API events": "/api/v1/events",
}
GOAL_MS = 200.0
USER, PASSWORD = "load", "load-bench-password"


# -- the dashboard user, in a process of its own ------------------------------------------------


def probe(url: str, user: str, password: str) -> None:
    """`--probe`: sign in, say "ready", on "go" request the pages in turn until "stop", print the times."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    login = opener.open(f"{url}/login", timeout=30).read().decode()
    token = re.search(r'name="csrf_token" value="([^"]+)"', login)
    assert token, "no CSRF token on the login page"
    form = {"username": user, "password": password, "csrf_token": token.group(1), "next": "/"}
    with opener.open(f"{url}/login", urllib.parse.urlencode(form).encode(), timeout=30) as response:
        assert urllib.parse.urlsplit(response.url).path == "/", f"sign-in failed: landed on {response.url}"
    for path in PAGES.values():  # compile the templates, open the pool: not part of the load
        opener.open(url + path, timeout=30).read()
    print("ready", flush=True)
    stop = threading.Event()
    assert sys.stdin.readline().strip() == "go"
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    times: dict[str, list[float]] = {name: [] for name in PAGES}
    errors: dict[str, list[str]] = {name: [] for name in PAGES}
    while not stop.is_set():
        for name, path in PAGES.items():
            start = time.perf_counter()
            try:
                with opener.open(url + path, timeout=30) as response:
                    response.read()
                    status = response.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            times[name].append((time.perf_counter() - start) * 1000)
            if status != 200:
                errors[name].append(str(status))
    print(json.dumps({"times": times, "errors": errors}), flush=True)


class DashboardUser:
    """The `--probe` process: signed in at start; times the pages while :meth:`using` is entered."""

    def __init__(self, url: str):
        command = [sys.executable, __file__, "--probe", url, USER, PASSWORD]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == "ready"
        self.times: dict[str, list[float]] = {}
        self.errors: dict[str, list[str]] = {}

    @contextmanager
    def using(self) -> Iterator[None]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        try:
            yield
        finally:
            self.process.stdin.write("stop\n")
            self.process.stdin.flush()
            result = json.loads(self.process.stdout.readline())
            self.times, self.errors = result["times"], result["errors"]
            self.process.wait(30)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@contextmanager
def dashboard(database_url: str, folder: Path) -> Iterator[str]:
    """`maskgate dashboard` on the database, as tests/dashboard/live.py starts it; yields its URL."""
    sys.path.insert(0, str(ROOT))  # the repository's tests package, not installed
    from tests.dashboard.live import live_dashboard

    (folder / "snapshots").mkdir()
    (folder / "models").mkdir()
    with live_dashboard(database_url, folder) as server:
        yield server.url


# -- the run ------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    """Everything measured, as a dict of plain numbers (see --json)."""
    tag = uuid.uuid4().hex[:6]
    prefix, gates = f"load-{tag}", [f"load-{tag}-{n:02d}" for n in range(args.gates)]
    with tempfile.TemporaryDirectory() as tmp, postgres_database(args.postgres) as url, ExitStack() as stack:
        folder = Path(tmp)
        engine = make_engine(url)
        stack.callback(engine.dispose)
        migrate.upgrade(engine)
        UserStore(engine).add(USER, PASSWORD, "viewer")
        user = DashboardUser(stack.enter_context(dashboard(url, folder)))
        stack.callback(user.close)
        central = {gate: EventStore(make_engine(url)) for gate in gates}  # a connection pool each
        for store in central.values():
            stack.callback(store.engine.dispose)
        stores, forwarders = central, []
        if args.topology == "spool":
            stores = {gate: spool_store(folder / f"{gate}.sqlite") for gate in gates}
            forwarders = [SpoolForwarder(stores[g].engine, central[g], g).start() for g in gates]
        gate_run = run_gates(args.url, prefix, stores, args.seconds, args.rate, user.using())
        drained = all(forwarder.wait_drained(120) for forwarder in forwarders)
        for forwarder in forwarders:
            forwarder.stop()
        with engine.connect() as connection:
            rows = connection.execute(select(EventRow.id, EventRow.door_status)).all()
    submitted = {uuid.UUID(e) for e in gate_run.submitted}
    in_database = [row.id for row in rows]
    summary = gate_run.summary()
    rtts = [e.door_rtt_ms for e in gate_run.stored.values() if e is not None and e.door_rtt_ms is not None]
    return {
        "gates": args.gates,
        "rate": args.rate,
        "seconds": args.seconds,
        "topology": args.topology,
        "submitted": len(submitted),
        "submit_per_s": summary["submit_per_s"],
        "events_per_s": summary["events_per_s"],
        "stored": len(set(in_database)),
        "lost": len(submitted - set(in_database)),
        "extra": len(set(in_database) - submitted),
        "delivered": summary["delivered"],
        "lost_on_the_wire": len(submitted) - summary["delivered"],
        "duplicates": summary["duplicates"],
        "door_duplicates": gate_run.doors["duplicate"],
        "door_outcomes": dict(sorted(Counter(row.door_status or "none" for row in rows).items())),
        "door_outcomes_in_doors": dict(gate_run.doors),
        "spool_drained": drained,
        "ack_p50_ms": percentile(rtts, 50),
        "ack_p95_ms": percentile(rtts, 95),
        "delivery_p50_ms": summary["delivery_p50"],
        "delivery_p95_ms": summary["delivery_p95"],
        "pages": {
            name: {
                "requests": len(times),
                "p50_ms": percentile(times, 50),
                "p95_ms": percentile(times, 95),
                "max_ms": max(times, default=float("nan")),
                "errors": len(user.errors[name]),
            }
            for name, times in user.times.items()
        },
    }


def spool_store(path: Path) -> EventStore:
    engine = make_engine(f"sqlite:///{path}")
    prepare_spool(engine)
    return EventStore(engine)


def report(figures: dict) -> str:
    f, doors = figures, figures["door_outcomes_in_doors"]
    lines = [
        f"load: {f['gates']} gates x {f['rate']:g} decisions/s for {f['seconds']:g} s through the broker "
        f"into PostgreSQL ({f['topology']} topology), the dashboard in use",
        f"  decisions submitted            {f['submitted']:,} ({f['submit_per_s']:.1f}/s)",
        f"  events/s sustained             {f['events_per_s']:.1f} (delivered to a subscriber)",
        f"  in PostgreSQL                  {f['stored']:,}; lost {f['lost']}, extra {f['extra']}"
        + ("" if f["spool_drained"] else " (spools NOT drained)"),
        f"  on the wire                    {f['delivered']:,} delivered; lost {f['lost_on_the_wire']}, "
        f"duplicates {f['duplicates']}",
        f"  door outcomes (PostgreSQL)     {', '.join(f'{k} {v:,}' for k, v in f['door_outcomes'].items())}",
        f"  at the doors                   {', '.join(f'{k} {v:,}' for k, v in sorted(doors.items()))}",
        f"  ack round trip p50 / p95       {f['ack_p50_ms']:.1f} / {f['ack_p95_ms']:.1f} ms",
        f"  submit -> delivery p50 / p95   {f['delivery_p50_ms']:.1f} / {f['delivery_p95_ms']:.1f} ms",
        "dashboard during the load (one signed-in user, requests back to back):",
        f"  {'page':16}{'requests':>9}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'errors':>8}",
    ]
    for name, page in f["pages"].items():
        flag = "" if page["max_ms"] < GOAL_MS else f"  max over {GOAL_MS:.0f} ms"
        lines.append(
            f"  {name:16}{page['requests']:>9}{page['p50_ms']:>9.1f}{page['p95_ms']:>9.1f}"
            f"{page['max_ms']:>9.1f}{page['errors']:>8}{flag}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gates", type=int, default=20, help="simulated gates (default 20)")
    parser.add_argument("--rate", type=float, default=5.0, help="decisions/s per gate (default 5)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the gates submit (default 60)")
    parser.add_argument("--topology", choices=["spool", "direct"], default="spool", help="see above")
    parser.add_argument("--url", default="mqtt://127.0.0.1:1883", help="the broker (default the local one)")
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the figures as JSON")
    return parser.parse_args(argv)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--probe":
        probe(*sys.argv[2:])
        return
    args = parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)
    figures = run(args)
    print(report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
