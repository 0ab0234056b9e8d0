"""What the pages and the API read: request filters, the overview, gate states, CSV rows.

Filters arrive as text from a query string; they become an :class:`EventFilter` of core
types (or a :class:`BadFilter` naming the bad value) and reach SQL only as bound
parameters, so a value like ``' OR 1=1 --`` is just a gate name that matches nothing.
"""

from __future__ import annotations

import contextlib
import csv
import io
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from time import monotonic

from sqlalchemy import Engine, func, select

from maskgate.core import Action, Event, Label, UnknownLabelError
from maskgate.files import snapshot_file
from maskgate.store import CountRow, EventFilter, EventPage, EventStore, Gate
from maskgate.store.events import event_conditions
from maskgate.store.schema import EventRow

PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
OPEN_INCIDENT_COUNT_CAP = 10_000  # counting further would cost more than the number is worth
GATE_SILENT_AFTER = timedelta(minutes=5)  # an "online" gate that has said nothing for this long
DEFAULT_CHART_DAYS = 14
MAX_CHART_DAYS = 90
# The largest run id both databases can compare: PostgreSQL's `integer` (SQLite's is 2**63 - 1). A larger
# one in a URL is a 404 (400 as a parameter) rather than a query the driver refuses: OverflowError on
# SQLite, "integer out of range" on PostgreSQL.
MAX_ROW_ID = 2**31 - 1
ROW_ID = f"int(max={MAX_ROW_ID})"  # the URL converter: <{ROW_ID}:run_id>


class BadFilter(ValueError):
    """A query-string value that cannot be used; the message names it."""


# -- filters ------------------------------------------------------------------------------------


def parse_event_filter(args: Mapping[str, str]) -> EventFilter:
    """An EventFilter from query-string values: gate, label, decision, from, to, reviewed, incident."""
    return EventFilter(
        gate_id=_text(args.get("gate")),
        label=_label(args.get("label")),
        action=_action(args.get("decision")),
        since=_time(args.get("from"), "from", end_of_day=False),
        until=_time(args.get("to"), "to", end_of_day=True),
        reviewed=_yes_no(args.get("reviewed"), "reviewed"),
        incident=_yes_no(args.get("incident"), "incident"),
    )


def parse_limit(value: str | None) -> int:
    return _whole_number(value, "limit", default=PAGE_SIZE, maximum=MAX_PAGE_SIZE)


def parse_days(value: str | None) -> int:
    return _whole_number(value, "days", default=DEFAULT_CHART_DAYS, maximum=MAX_CHART_DAYS)


def _whole_number(value: str | None, name: str, *, default: int, maximum: int) -> int:
    """`value` as a number from 1 to `maximum`, `default` when absent."""
    if not value:
        return default
    if not value.isascii() or not value.isdigit():
        raise BadFilter(f"{name} must be a number, got {value[:40]!r}")
    number = int(value) if len(value) <= len(str(maximum)) else 0  # int() refuses 4,300+ digits
    if not 1 <= number <= maximum:
        raise BadFilter(f"{name} must be between 1 and {maximum}")
    return number


INCIDENT_STATUSES = {"open": False, "reviewed": True, "all": None}  # -> EventFilter.reviewed


def parse_incident_status(value: str | None) -> bool | None:
    """open (the default), reviewed or all, as the `reviewed` filter."""
    status = value or "open"
    if status not in INCIDENT_STATUSES:
        raise BadFilter(f"status must be open, reviewed or all, got {status[:40]!r}")
    return INCIDENT_STATUSES[status]


def parse_incident_filter(args: Mapping[str, str]) -> EventFilter:
    """The incident list's filter, for the page and the API alike: `status` and `gate`."""
    return EventFilter(gate_id=_text(args.get("gate")), reviewed=parse_incident_status(args.get("status")))


def parse_run_id(value: str | None, name: str = "before") -> int | None:
    if not value:
        return None
    if (
        not value.isascii()  # int("²") fails
        or not value.isdigit()
        or len(value) > len(str(MAX_ROW_ID))  # int() refuses 4,300+ digits
        or int(value) > MAX_ROW_ID
    ):
        raise BadFilter(f"{name} must be a run id, got {value[:40]!r}")
    return int(value)


def _text(value: str | None) -> str | None:
    return (value.strip() or None) if value else None


def _label(value: str | None) -> Label | None:
    if not value:
        return None
    try:
        return Label.parse(value)
    except UnknownLabelError:
        raise BadFilter(f"unknown label {value[:40]!r}") from None


def _action(value: str | None) -> Action | None:
    if not value:
        return None
    try:
        return Action(value.strip().lower())
    except ValueError:
        raise BadFilter(f"unknown decision {value[:40]!r}: choose allow, deny or warn") from None


def _time(value: str | None, name: str, *, end_of_day: bool) -> datetime | None:
    """A date (whole UTC day; `to` includes it) or an ISO time (naive means UTC)."""
    if not value:
        return None
    value = value.strip()
    try:
        with contextlib.suppress(ValueError):  # a date in any ISO form (2026-03-01, 20260301): a whole day
            day = date.fromisoformat(value)
            return datetime.combine(day + timedelta(days=end_of_day), time(), UTC)
        when = datetime.fromisoformat(value)
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: 9999-12-31 plus a day, 0001-01-01 minus an hour
        raise BadFilter(f"{name} must be a date (YYYY-MM-DD) or an ISO time, got {value[:40]!r}") from None


def _yes_no(value: str | None, name: str) -> bool | None:
    if not value or value == "any":
        return None
    if value in ("yes", "true", "1"):
        return True
    if value in ("no", "false", "0"):
        return False
    raise BadFilter(f"{name} must be yes, no or any, got {value[:40]!r}")


def filter_args(filters: EventFilter) -> dict[str, str]:
    """The query-string values that give back `filters` (for links and the filter form).

    Whole days are written back as dates, as the form sends them: `to=2026-03-01` means until
    2026-03-02 00:00, and writing that instant would show the form's date input a day late.
    """
    args = {
        "gate": filters.gate_id,
        "label": filters.label.value if filters.label else None,
        "decision": filters.action.value if filters.action else None,
        "from": _time_text(filters.since, end_of_day=False),
        "to": _time_text(filters.until, end_of_day=True),
        "reviewed": _yes_no_text(filters.reviewed),
        "incident": _yes_no_text(filters.incident),
    }
    return {key: value for key, value in args.items() if value is not None}


def _time_text(value: datetime | None, *, end_of_day: bool) -> str | None:
    """The inverse of `_time`: a date when `value` is a UTC midnight, else the ISO time."""
    if value is None:
        return None
    value = value.astimezone(UTC)
    if value.time() != time():
        return value.isoformat()
    return (value.date() - timedelta(days=end_of_day)).isoformat()


def _yes_no_text(value: bool | None) -> str | None:
    return None if value is None else "yes" if value else "no"


# -- gates ----------------------------------------------------------------------------------------


def gate_state(gate: Gate, now: datetime) -> str:
    """online, silent (says online but has not been heard from), offline, stopped or unknown."""
    if gate.availability == "online":
        if gate.last_seen_at is not None and now - gate.last_seen_at > GATE_SILENT_AFTER:
            return "silent"
        return "online"
    return gate.availability or "unknown"


# -- overview ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Compliance:
    """Share of faces with a mask worn correctly, per gate and UTC day (None: no events)."""

    days: list[date]
    rates: dict[str, list[float | None]]


@dataclass(frozen=True, slots=True)
class Overview:
    today: dict[Action, int]
    compliance: Compliance
    gates: list[tuple[Gate, str]]  # every gate with its state
    open_incidents: int
    open_incidents_capped: bool  # the true count is larger than open_incidents
    latest_incidents: list[Event]

    @property
    def today_total(self) -> int:
        return sum(self.today.values())

    @property
    def gates_not_online(self) -> list[tuple[Gate, str]]:
        return [(gate, state) for gate, state in self.gates if state != "online"]


class PastDayCounts:
    """Event counts of complete UTC days by day, gate and label, kept for `ttl_s` seconds.

    Past days hardly change (a gate's late events, a retention purge), and counting 90 of them
    is most of the overview's cost on a year of events; so they are recounted at most every few
    minutes, while today is always counted live.
    """

    def __init__(self, ttl_s: float = 300.0, clock: Callable[[], float] = monotonic, max_entries: int = 16):
        self.ttl_s, self.clock, self.max_entries = ttl_s, clock, max_entries
        self._lock = threading.Lock()
        self._entries: dict[tuple[datetime, datetime], tuple[float, list[CountRow]]] = {}

    def get(self, store: EventStore, first: datetime, today_start: datetime) -> list[CountRow]:
        key = (first, today_start)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and self.clock() - hit[0] < self.ttl_s:
                return hit[1]
        rows = store.count_events(["day", "gate", "label"], since=first, until=today_start)
        with self._lock:
            self._entries[key] = (self.clock(), rows)
            while len(self._entries) > self.max_entries:
                self._entries.pop(next(iter(self._entries)))
        return rows


def build_overview(
    store: EventStore, now: datetime, days: int = DEFAULT_CHART_DAYS, past: PastDayCounts | None = None
) -> Overview:
    today_start = datetime.combine(now.astimezone(UTC).date(), time(), UTC)
    today = {action: 0 for action in Action}
    for row in store.count_events(["action"], since=today_start):
        today[row.action] = row.count
    open_count, capped = count_open_incidents(store.engine)
    return Overview(
        today=today,
        compliance=compliance(store, today_start, days, past),
        gates=[(gate, gate_state(gate, now)) for gate in store.list_gates()],
        open_incidents=open_count,
        open_incidents_capped=capped,
        latest_incidents=store.list_incidents(EventFilter(reviewed=False), limit=10).events,
    )


def compliance(
    store: EventStore, today_start: datetime, days: int, past: PastDayCounts | None = None
) -> Compliance:
    first = today_start - timedelta(days=days - 1)
    day_list = [first.date() + timedelta(days=i) for i in range(days)]
    totals: dict[tuple[str, date], int] = defaultdict(int)
    masked: dict[tuple[str, date], int] = defaultdict(int)
    if past is None:
        rows = store.count_events(["day", "gate", "label"], since=first)
    else:
        rows = past.get(store, first, today_start) if days > 1 else []
        rows = rows + store.count_events(["day", "gate", "label"], since=today_start)
    for row in rows:
        key = (row.gate_id, row.day)
        totals[key] += row.count
        if row.label is Label.WITH_MASK:
            masked[key] += row.count
    gates = sorted({gate for gate, _ in totals})
    rates = {
        gate: [masked[(gate, day)] / totals[(gate, day)] if totals[(gate, day)] else None for day in day_list]
        for gate in gates
    }
    return Compliance(day_list, rates)


def count_open_incidents(engine: Engine, cap: int = OPEN_INCIDENT_COUNT_CAP) -> tuple[int, bool]:
    """Unreviewed incidents, counted up to `cap` (True when there are more)."""
    conditions = event_conditions(EventFilter(incident=True, reviewed=False))
    # Ordered like the listing: PostgreSQL overestimates open incidents (it takes "incident"
    # and "not reviewed" as independent) and would rather scan the table for an unordered
    # count; the order makes it read the small partial index instead.
    newest_first = (EventRow.occurred_at.desc(), EventRow.id.desc())
    capped = select(EventRow.id).where(*conditions).order_by(*newest_first).limit(cap + 1).subquery()
    with engine.connect() as connection:
        count = int(connection.execute(select(func.count()).select_from(capped)).scalar_one())
    return min(count, cap), count > cap


# -- JSON and CSV ---------------------------------------------------------------------------------


def event_json(event: Event, snapshots: Path) -> dict[str, object]:
    """An event for the API. The snapshot's file path stays internal; whether the snapshot route
    serves one (the file is there, inside `snapshots`) is said instead."""
    data = event.to_json()
    data.pop("snapshot_path")
    review = event.review
    data.update(
        incident=event.is_incident,
        has_snapshot=snapshot_file(snapshots, event.snapshot_path) is not None,
        reviewed_at=review.reviewed_at.isoformat() if review else None,
        reviewed_by=review.reviewed_by if review else None,
        review_note=review.note if review else None,
    )
    return data


CSV_COLUMNS = [
    "event_id",
    "occurred_at",
    "gate_id",
    "track_id",
    "label",
    "decision",
    "confidence",
    *(f"p_{label.value}" for label in Label),
    "model_version",
    "latency_ms",
    "door_status",
    "door_reason",
    "reviewed_at",
    "reviewed_by",
    "review_label",
    "false_positive",
]
CSV_PAGE_SIZE = 1000


def csv_lines(
    store: EventStore, filters: EventFilter, page_size: int = CSV_PAGE_SIZE, first: EventPage | None = None
) -> Iterator[str]:
    """Every matching event as CSV, newest first, read page by page (keyset) so memory stays flat.

    `first` is the first page (of `page_size`) when the caller has read it already: a streamed
    response should, so that a database that is down fails the request before its 200 is sent.
    """
    page = first if first is not None else store.list_events(filters, limit=page_size)
    yield _csv_line(CSV_COLUMNS)
    while True:
        for event in page.events:
            yield _csv_line(_csv_row(event))
        if page.next_cursor is None:
            return
        page = store.list_events(filters, limit=page_size, cursor=page.next_cursor)


def _csv_row(event: Event) -> list[object]:
    review = event.review
    return [
        event.event_id,
        event.occurred_at.isoformat(),
        event.gate_id,
        event.track_id,
        event.label.value,
        event.action.value,
        f"{event.confidence:.4f}",
        *(f"{event.probabilities.get(label, 0.0):.4f}" for label in Label),
        event.model_version,
        f"{event.latency_ms:.1f}",
        event.door_status.value if event.door_status else "",
        event.door_reason.value if event.door_reason else "",
        review.reviewed_at.isoformat() if review else "",
        review.reviewed_by if review else "",
        review.true_label.value if review and review.true_label else "",
        "yes" if review and review.false_positive else "",
    ]


def _csv_line(values: list[object]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow([_spreadsheet_safe(value) for value in values])
    return buffer.getvalue()


def _spreadsheet_safe(value: object) -> object:
    """Text a spreadsheet would run as a formula (a gate named '=HYPERLINK(...)') gets a leading '."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
