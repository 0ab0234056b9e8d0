"""Event store benchmark: SQLite (WAL) and PostgreSQL side by side, in one run.

Prints, for each database:
  - single-event insert latency p50/p95 (EventStore.record_event, one transaction each);
  - sustained inserts/s through the same call;
  - the time to fetch one filtered page of 50 events from a table of --rows events,
    deep in the listing, with keyset pagination and with OFFSET, and their ratio.

    .venv/bin/python bench/store.py [--rows 1000000] [--postgres URL]

PostgreSQL gets a scratch database (dropped afterwards); SQLite a file in a temp folder.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from sqlalchemy import create_engine, insert, text
from sqlalchemy.orm import Session
from stats import percentile  # bench/stats.py
from tqdm import tqdm

from maskgate.core import Action, Event, Label, utcnow
from maskgate.store import EventFilter, EventStore, make_engine, migrate
from maskgate.store.events import encode_cursor, filtered_select
from maskgate.store.schema import EventRow, GateRow

GATES = [f"gate-{i:02d}" for i in range(20)]
LABELS = [Label.WITH_MASK] * 8 + [Label.WITHOUT_MASK] + [Label.IMPROPER_MASK]
ACTIONS = {Label.WITH_MASK: Action.ALLOW, Label.WITHOUT_MASK: Action.DENY, Label.IMPROPER_MASK: Action.WARN}
PROBABILITIES = {"with_mask": 0.8, "without_mask": 0.15, "improper_mask": 0.05}


def make_event(n: int, gate_id: str = "gate-00") -> Event:
    label = LABELS[n % len(LABELS)]
    return Event(
        event_id=uuid.uuid4(),
        gate_id=gate_id,
        track_id=n,
        occurred_at=utcnow(),
        label=label,
        action=ACTIONS[label],
        confidence=0.8,
        probabilities={Label(k): v for k, v in PROBABILITIES.items()},
        model_version="bench",
        latency_ms=150.0,
    )


def insert_latency(store: EventStore, count: int) -> tuple[float, float]:
    events = [make_event(n) for n in range(count)]
    store.record_event(events[0])  # warm the connection pool
    times = []
    for event in events[1:]:
        start = time.perf_counter()
        store.record_event(event)
        times.append((time.perf_counter() - start) * 1000)
    return percentile(times, 50), percentile(times, 95)


def sustained_inserts(store: EventStore, seconds: float) -> float:
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        store.record_event(make_event(done))
        done += 1
    return done / (time.perf_counter() - start)


def fill(engine, rows: int, batch: int = 20_000) -> None:
    """Bulk-load `rows` events spread over a year, 20 gates (far faster than one by one)."""
    now = utcnow()
    with Session(engine) as session, session.begin():
        session.execute(insert(GateRow), [{"id": g, "name": g, "created_at": now} for g in GATES])
    step = timedelta(days=365) / rows
    with tqdm(total=rows, desc=f"fill {engine.dialect.name}", unit="ev", leave=False) as bar:
        for offset in range(0, rows, batch):
            values = []
            for n in range(offset, min(rows, offset + batch)):
                label = LABELS[n % len(LABELS)]
                values.append(
                    {
                        "id": uuid.uuid4(),
                        "gate_id": GATES[n % len(GATES)],
                        "track_id": n,
                        "occurred_at": now - step * n,
                        "label": label.value,
                        "action": ACTIONS[label].value,
                        "confidence": 0.8,
                        "probabilities": PROBABILITIES,
                        "model_version": "bench",
                        "latency_ms": 150.0,
                        "incident": label is not Label.WITH_MASK,
                        "false_positive": False,
                        "pinned": False,
                    }
                )
            with Session(engine) as session, session.begin():
                session.execute(insert(EventRow), values)
            bar.update(len(values))
    with engine.begin() as connection:
        connection.execute(text("ANALYZE"))


def median_ms(fn: Callable[[], object], repeat: int = 7) -> float:
    fn()  # warm caches
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def page_times(store: EventStore, rows: int) -> tuple[float, float, int]:
    """Median ms for one filtered page of 50, deep in the listing: keyset vs OFFSET."""
    filters = EventFilter(gate_id="gate-07")
    depth = rows // len(GATES) // 2  # half way down this gate's events
    with Session(store.engine) as session:
        anchor = session.scalars(filtered_select(filters).offset(depth - 1).limit(1)).one()
        cursor = encode_cursor(anchor.occurred_at, anchor.id)

        def offset_page() -> list[EventRow]:
            return session.scalars(filtered_select(filters).offset(depth).limit(50)).all()

        offset_ms = median_ms(offset_page)
    keyset_ms = median_ms(lambda: store.list_events(filters, limit=50, cursor=cursor))
    assert [e.event_id for e in store.list_events(filters, 50, cursor).events] == [
        r.id for r in offset_page()
    ]
    return keyset_ms, offset_ms, depth


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    name = f"maskgate_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run(url: str, rows: int, inserts: int, seconds: float) -> dict[str, float]:
    engine = make_engine(url)
    migrate.upgrade(engine)
    store = EventStore(engine)
    p50, p95 = insert_latency(store, inserts)
    rate = sustained_inserts(store, seconds)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM events"))
        connection.execute(text("DELETE FROM gates"))
    fill(engine, rows)
    keyset_ms, offset_ms, depth = page_times(store, rows)
    engine.dispose()
    return {"p50": p50, "p95": p95, "rate": rate, "keyset": keyset_ms, "offset": offset_ms, "depth": depth}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="events in the table for the page test")
    parser.add_argument("--inserts", type=int, default=1000, help="single inserts timed for p50/p95")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of the sustained insert test")
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory() as folder:
        results["SQLite (WAL)"] = run(
            f"sqlite:///{Path(folder) / 'bench.sqlite'}", args.rows, args.inserts, args.seconds
        )
    with postgres_database(args.postgres) as url:
        results["PostgreSQL"] = run(url, args.rows, args.inserts, args.seconds)

    depth = next(iter(results.values()))["depth"]
    print(f"\nevent store, {args.rows:,} events, 20 gates; page = 50 events of one gate, {depth:,} rows deep")
    print(f"{'':24}" + "".join(f"{name:>16}" for name in results))
    rows = [
        ("insert p50 (ms)", "p50", "{:.3f}"),
        ("insert p95 (ms)", "p95", "{:.3f}"),
        ("sustained inserts/s", "rate", "{:,.0f}"),
        ("page, keyset (ms)", "keyset", "{:.2f}"),
        ("page, OFFSET (ms)", "offset", "{:.2f}"),
    ]
    for title, key, fmt in rows:
        print(f"{title:24}" + "".join(f"{fmt.format(r[key]):>16}" for r in results.values()))
    print(
        f"{'OFFSET / keyset':24}" + "".join(f"{r['offset'] / r['keyset']:>15.0f}x" for r in results.values())
    )
    print("goals: insert p95 < 2 ms, page < 20 ms")


if __name__ == "__main__":
    main()
