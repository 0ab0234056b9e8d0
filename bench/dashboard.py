"""Dashboard benchmark: server time of the pages on a year of events in PostgreSQL.

Bulk-loads --rows events (default 1,000,000: 20 gates over a year, with the fill of
bench/store.py) into a scratch PostgreSQL database and marks every incident older than a day
reviewed but one in a thousand (what staff who keep up leave behind: the hard case for the
open-incident queries). Then times requests through Flask's test client, in process, so the
figures are server time (routing, queries, templates) without the network: the first request
of each page (its template compiled, the overview's past days counted), then the median and
max of --repeat more.

    .venv/bin/python bench/dashboard.py [--rows 1000000] [--repeat 15] [--postgres URL]
    .venv/bin/python bench/dashboard.py --url postgresql://.../filled_db   # reuse a filled database

Goal: the events page and the overview under 100 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

from sqlalchemy import create_engine, text, update
from store import GATES, fill, postgres_database  # bench/store.py: the same year of events

from maskgate.config import Config, DashboardConfig
from maskgate.core import utcnow
from maskgate.dashboard.app import create_app
from maskgate.store import EventStore, UserStore, make_engine, migrate
from maskgate.store.events import encode_cursor
from maskgate.store.schema import EventRow

GOAL_MS = 100.0


def prepare(url: str, rows: int) -> None:
    engine = make_engine(url)
    migrate.upgrade(engine)
    fill(engine, rows)
    store = EventStore(engine)
    now = utcnow()
    for i, gate in enumerate(GATES):  # a few gates down, so the overview has something to list
        online = i % 7 != 3
        seen = now if online else now - timedelta(hours=2)
        store.update_gate(gate, availability="online" if online else "offline", fps=15.0, seen_at=seen)
    review_most_incidents(engine)
    UserStore(engine).add("bench", "bench-password-1", "viewer")
    engine.dispose()


def review_most_incidents(engine) -> None:
    """The state staff who keep up leave behind: all incidents reviewed but the last day's and a few."""
    reviewed = (
        update(EventRow)
        .where(
            EventRow.incident.is_(True),
            EventRow.occurred_at < utcnow() - timedelta(days=1),
            EventRow.track_id % 1000 != 7,
        )
        .values(
            reviewed_at=EventRow.occurred_at,
            reviewed_by="bench",
            review_label=EventRow.label,
        )
    )
    with engine.begin() as connection:
        connection.execute(reviewed)
    # What autovacuum does after so many updates: drop the dead index entries, refresh statistics.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE events"))


def client_for(url: str):
    config = Config(database_url=url, dashboard=DashboardConfig(secret_key="b" * 32, secure_cookies=False))
    app = create_app(config)
    client = app.test_client()
    with client.session_transaction() as session:
        session["user"] = "bench"
    return client


def timings(client, path: str, repeat: int) -> tuple[float, float, float]:
    """Server ms of the first GET of `path` (cold caches), then the median and max of `repeat` more."""
    start = time.perf_counter()
    response = client.get(path)
    first = (time.perf_counter() - start) * 1000
    assert response.status_code == 200, (path, response.status_code, response.text[:300])
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, path
    return first, statistics.median(times), max(times)


def pages() -> list[tuple[str, str]]:
    # A cursor half a year deep, as if "Older" had been followed that far.
    cursor = encode_cursor(utcnow() - timedelta(days=182), uuid.UUID(int=0))
    return [
        ("overview (14 days)", "/"),
        ("overview (90 days)", "/?days=90"),
        ("events, first page", "/events"),
        ("events, gate filter", "/events?gate=gate-07"),
        ("events, gate + decision", "/events?gate=gate-08&decision=deny"),
        ("events, gate + label, no match", "/events?gate=gate-07&label=without_mask"),
        ("events, gate, half a year deep", f"/events?gate=gate-07&cursor={cursor}"),
        ("events, date range", "/events?from=2025-01-01&to=2099-01-01&decision=deny"),
        ("events, reviewed=yes", "/events?reviewed=yes"),
        ("incidents (open)", "/incidents"),
        ("gates", "/gates"),
        ("API events", "/api/v1/events"),
        ("API events, live poll", "/api/v1/events?from=" + utcnow().isoformat().replace("+", "%2B")),
        ("API overview", "/api/v1/overview"),
    ]


@contextlib.contextmanager
def database(args: argparse.Namespace) -> Iterator[str]:
    if args.url:
        yield args.url
        return
    scratch = (
        contextlib.nullcontext(_keep_database(args.postgres))
        if args.keep
        else postgres_database(args.postgres)
    )
    with scratch as url:
        start = time.perf_counter()
        prepare(url, args.rows)
        print(f"filled {args.rows:,} events in {time.perf_counter() - start:.0f} s")
        if args.keep:
            print(f"kept: rerun with --url {url}")
        yield url


def _keep_database(admin_url: str) -> str:
    name = f"maskgate_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return admin.url.set(database=name).render_as_string(hide_password=False)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="events to load")
    parser.add_argument("--repeat", type=int, default=15, help="timed requests per page")
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--url", help="use this already filled database instead of a scratch one")
    parser.add_argument("--keep", action="store_true", help="keep the filled scratch database (see --url)")
    args = parser.parse_args()

    with database(args) as url:
        client = client_for(url)
        client.get("/gates")  # open the connection pool and compile the base template first
        results = [(name, path, *timings(client, path, args.repeat)) for name, path in pages()]

    print(f"\ndashboard server time, PostgreSQL, {args.rows:,} events over a year, 20 gates")
    print(f"(Flask test client in process; the first request, then median and max of {args.repeat} more)")
    print(f"{'page':34}{'first ms':>10}{'median ms':>11}{'max ms':>9}")
    for name, _path, first, median, worst in results:
        flag = "" if median < GOAL_MS else "  over goal"
        print(f"{name:34}{first:>10.1f}{median:>11.1f}{worst:>9.1f}{flag}")
    print(f"goal: events page and overview < {GOAL_MS:.0f} ms")


if __name__ == "__main__":
    main()
