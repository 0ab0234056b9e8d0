"""The event store on SQLite and on the real PostgreSQL (the `store` fixture runs each test on both)."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta

import pytest

from maskgate.core import AckReason, Action, DoorStatus, Label, Review, utcnow
from maskgate.store import EventFilter, InvalidCursorError, Purged, StoreError


def test_record_and_get_round_trip(store, make_event):
    event = make_event(Label.WITHOUT_MASK, snapshot_path="gate-1/a.jpg")
    assert store.record_event(event) is True
    stored = store.get_event(event.event_id)
    assert stored == event
    assert stored.occurred_at.tzinfo is not None
    assert stored.is_incident


def test_duplicate_uuid_is_a_no_op(store, make_event):
    event = make_event()
    assert store.record_event(event) is True
    changed = make_event(Label.WITHOUT_MASK, event_id=event.event_id)
    assert store.record_event(changed) is False
    assert store.get_event(event.event_id).label is Label.WITH_MASK
    assert len(store.list_events().events) == 1


def test_concurrent_duplicates_store_one_row(store, make_event):
    event = make_event()
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(store.record_event(event))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 5 + [True]
    assert len(store.list_events().events) == 1


def test_times_are_stored_in_utc(store, make_event):
    from datetime import timezone

    local = datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=5)))
    event = make_event(occurred_at=local)
    store.record_event(event)
    stored = store.get_event(event.event_id)
    assert stored.occurred_at == local
    assert stored.occurred_at.utcoffset() == timedelta(0)


def test_naive_datetimes_are_refused(store, make_event):
    with pytest.raises(Exception, match="naive datetime"):
        store.record_event(make_event(occurred_at=datetime(2026, 1, 1)))


def test_keyset_pagination_visits_every_event_once_newest_first(store, make_event):
    tie = utcnow().replace(microsecond=0)
    events = [make_event() for _ in range(23)] + [make_event(occurred_at=tie) for _ in range(7)]
    for event in events:
        store.record_event(event)
    seen, cursor, pages = [], None, 0
    while True:
        page = store.list_events(limit=4, cursor=cursor)
        seen.extend(page.events)
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 8
    assert sorted(e.event_id for e in seen) == sorted(e.event_id for e in events)
    keys = [(e.occurred_at, e.event_id) for e in seen]
    assert keys == sorted(keys, reverse=True)


def test_filters(store, make_event):
    since = utcnow() - timedelta(hours=1)
    store.record_event(make_event(Label.WITH_MASK, gate_id="north", occurred_at=since + timedelta(minutes=1)))
    store.record_event(
        make_event(Label.WITHOUT_MASK, gate_id="north", occurred_at=since + timedelta(minutes=2))
    )
    store.record_event(
        make_event(Label.IMPROPER_MASK, gate_id="south", occurred_at=since + timedelta(minutes=3))
    )
    store.record_event(
        make_event(Label.WITHOUT_MASK, gate_id="south", occurred_at=since - timedelta(minutes=1))
    )

    def labels(**filters):
        return sorted(e.label.value for e in store.list_events(EventFilter(**filters)).events)

    assert labels(gate_id="north") == ["with_mask", "without_mask"]
    assert labels(label=Label.WITHOUT_MASK) == ["without_mask", "without_mask"]
    assert labels(action=Action.WARN) == ["improper_mask"]
    assert labels(since=since) == ["improper_mask", "with_mask", "without_mask"]
    assert labels(until=since) == ["without_mask"]
    assert labels(gate_id="south", since=since) == ["improper_mask"]
    assert labels(incident=False) == ["with_mask"]
    assert labels(reviewed=True) == []
    assert labels(gate_id="nowhere") == []


def test_filter_values_are_bound_not_spliced(store, make_event):
    store.record_event(make_event(gate_id="north"))
    assert store.list_events(EventFilter(gate_id="north' OR '1'='1")).events == []
    assert len(store.list_events().events) == 1


def test_invalid_cursor_is_a_clear_error(store):
    with pytest.raises(InvalidCursorError, match="invalid page cursor"):
        store.list_events(cursor="not-a-cursor")


def test_limit_is_bounded(store):
    with pytest.raises(ValueError, match="limit"):
        store.list_events(limit=0)


def test_incidents_include_door_failures_and_exclude_allowed(store, make_event):
    allowed = make_event(Label.WITH_MASK)
    denied = make_event(Label.WITHOUT_MASK)
    late = make_event(Label.WITH_MASK)
    for event in (allowed, denied, late):
        store.record_event(event)
    assert {e.event_id for e in store.list_incidents().events} == {denied.event_id}

    updated = store.set_door_status(late.event_id, DoorStatus.EXPIRED, utcnow())
    assert updated.is_incident
    assert {e.event_id for e in store.list_incidents().events} == {denied.event_id, late.event_id}
    store.set_door_status(allowed.event_id, DoorStatus.OPENED, utcnow(), rtt_ms=3.5)
    assert store.get_event(allowed.event_id).door_rtt_ms == 3.5
    assert store.get_event(allowed.event_id).door_reason is None  # the ack gave none
    assert allowed.event_id not in {e.event_id for e in store.list_incidents().events}


def test_the_door_controllers_reason_is_stored_and_read_back(store, make_event):
    denied = make_event(Label.WITHOUT_MASK)
    store.record_event(denied)
    updated = store.set_door_status(
        denied.event_id, DoorStatus.REFUSED, utcnow(), 8.0, AckReason.BAD_SIGNATURE
    )
    assert updated.door_reason is AckReason.BAD_SIGNATURE
    assert store.get_event(denied.event_id).door_reason is AckReason.BAD_SIGNATURE
    assert store.get_event(denied.event_id).to_json()["door_reason"] == "bad_signature"


def test_review_records_true_label_and_reviewer(store, make_event):
    event = make_event(Label.WITHOUT_MASK)
    store.record_event(event)
    review = Review("alice", utcnow(), true_label=Label.IMPROPER_MASK, note="nose out")
    stored = store.review_event(event.event_id, review, pinned=True)
    assert stored.review == review and stored.pinned
    assert [e.event_id for e in store.list_events(EventFilter(reviewed=True)).events] == [event.event_id]


def test_unknown_event_is_a_clear_error(store, make_event):
    with pytest.raises(StoreError, match="no event"):
        store.set_door_status(make_event().event_id, DoorStatus.OPENED, utcnow())


def test_counts_by_day_gate_and_label(store, make_event):
    day1 = datetime(2026, 5, 1, 23, 30, tzinfo=UTC)
    day2 = datetime(2026, 5, 2, 0, 30, tzinfo=UTC)
    store.record_event(make_event(Label.WITH_MASK, gate_id="a", occurred_at=day1))
    store.record_event(make_event(Label.WITH_MASK, gate_id="a", occurred_at=day1 - timedelta(hours=1)))
    store.record_event(make_event(Label.WITHOUT_MASK, gate_id="b", occurred_at=day2))

    by_day = {(r.day, r.label): r.count for r in store.count_events(["day", "label"])}
    assert by_day == {(date(2026, 5, 1), Label.WITH_MASK): 2, (date(2026, 5, 2), Label.WITHOUT_MASK): 1}
    by_gate = {r.gate_id: r.count for r in store.count_events(["gate"], since=day1)}
    assert by_gate == {"a": 1, "b": 1}
    only_b = store.count_events(["action"], gate_id="b")
    assert [(r.action, r.count) for r in only_b] == [(Action.DENY, 1)]
    with pytest.raises(ValueError, match="cannot group by"):
        store.count_events(["colour"])


def test_purge_keeps_recent_and_pinned(store, make_event):
    now = utcnow()
    month_ago, year_ago = now - timedelta(days=40), now - timedelta(days=400)
    old_allow = make_event(Label.WITH_MASK, occurred_at=month_ago)
    old_incident = make_event(Label.WITHOUT_MASK, occurred_at=month_ago, snapshot_path="g/a.jpg")
    ancient = make_event(Label.WITHOUT_MASK, occurred_at=year_ago, snapshot_path="g/b.jpg")
    pinned = make_event(Label.WITHOUT_MASK, occurred_at=year_ago, pinned=True, snapshot_path="g/c.jpg")
    recent = make_event(Label.WITH_MASK, occurred_at=now - timedelta(days=1))
    for event in (old_allow, old_incident, ancient, pinned, recent):
        store.record_event(event)
    # the snapshots left behind are exactly those of the deleted events (the pinned one's stays)
    assert store.purge(events_days=30, incidents_days=365, now=now) == Purged(2, ("g/b.jpg",))
    left = {e.event_id for e in store.list_events().events}
    assert left == {old_incident.event_id, pinned.event_id, recent.event_id}


def test_gates_are_created_on_first_event_and_updated(store, make_event):
    store.record_event(make_event(gate_id="lobby"))
    seen = utcnow()
    store.update_gate("lobby", availability="online", fps=29.5, model_version="v2", seen_at=seen)
    store.ensure_gate("garage", name="Garage door")
    gates = {g.gate_id: g for g in store.list_gates()}
    assert set(gates) == {"garage", "lobby"}
    assert (gates["lobby"].availability, gates["lobby"].fps, gates["lobby"].model_version) == (
        "online",
        29.5,
        "v2",
    )
    assert gates["lobby"].last_seen_at == seen
    assert gates["garage"].name == "Garage door" and gates["garage"].availability is None
