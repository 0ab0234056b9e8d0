"""The JSON API on both databases, and that it agrees with dashboard/openapi.yaml."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from openapi_spec_validator import validate

from maskgate.core import AckReason, DoorStatus, Label
from maskgate.dashboard import actions
from maskgate.dashboard.app import DATABASE_DOWN, services
from maskgate.dashboard.queries import csv_lines
from maskgate.modelcard import load_card
from maskgate.store import EventFilter, EventStore
from maskgate.training.retrain import register_folder
from tests.conftest import copy_model

SPEC = Path(__file__).parents[2] / "dashboard" / "openapi.yaml"


def test_openapi_file_is_valid_and_matches_the_routes(app):
    spec = yaml.safe_load(SPEC.read_text())
    validate(spec)
    documented = {
        (path, method.upper())
        for path, operations in spec["paths"].items()
        for method in operations
        if method in {"get", "post", "put", "patch", "delete"}
    }
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/"):
            path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)  # <int(max=...):run_id> -> {run_id}
            served |= {(path, method) for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == served


def test_the_documented_door_values_are_the_ones_the_gate_stores():
    event = yaml.safe_load(SPEC.read_text())["components"]["schemas"]["Event"]["properties"]
    assert set(event["door_reason"]["enum"]) == {reason.value for reason in AckReason} | {None}
    assert set(event["door_status"]["enum"]) == {status.value for status in DoorStatus} | {None}


def test_openapi_file_is_served(viewer):
    response = viewer.get("/api/v1/openapi.yaml")
    assert response.status_code == 200
    assert yaml.safe_load(response.data)["openapi"].startswith("3.")


def test_me(viewer):
    me = viewer.get("/api/v1/me").json
    assert me["username"] == "victor" and me["role"] == "viewer" and me["csrf_token"] == viewer.csrf


def test_events_pages_and_live_polling(viewer, store, make_event):
    events = [make_event() for _ in range(7)]
    for event in events:
        store.record_event(event)
    first = viewer.get("/api/v1/events?limit=4").json
    assert [e["event_id"] for e in first["events"]] == [str(e.event_id) for e in events[:4]]
    second = viewer.get(f"/api/v1/events?limit=4&cursor={first['next_cursor']}").json
    assert [e["event_id"] for e in second["events"]] == [str(e.event_id) for e in events[4:]]
    assert second["next_cursor"] is None
    assert "snapshot_path" not in first["events"][0] and first["events"][0]["incident"] is False

    newest = first["events"][0]["occurred_at"]
    arrived = make_event(occurred_at=events[0].occurred_at + timedelta(seconds=5))
    store.record_event(arrived)
    polled = viewer.get("/api/v1/events", query_string={"from": newest}).json["events"]
    assert [e["event_id"] for e in polled] == [str(arrived.event_id), str(events[0].event_id)]


def test_events_bad_parameters(viewer):
    assert viewer.get("/api/v1/events?limit=0").status_code == 400
    assert viewer.get("/api/v1/events?limit=5000").status_code == 400
    response = viewer.get("/api/v1/events?cursor=bogus")
    assert response.status_code == 400 and "cursor" in response.json["error"]
    assert "label" in viewer.get("/api/v1/events?label=hat").json["error"]


def test_event_and_missing_event(viewer, store, make_event):
    event = make_event(Label.WITHOUT_MASK).with_door(
        DoorStatus.REFUSED, make_event().occurred_at, 9.0, AckReason.DENIED
    )
    store.record_event(event)
    data = viewer.get(f"/api/v1/events/{event.event_id}").json
    assert data["label"] == "without_mask" and data["incident"] is True and data["reviewed"] is False
    assert data["door_status"] == "refused" and data["door_reason"] == "denied"
    missing = viewer.get("/api/v1/events/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and "error" in missing.json


@pytest.mark.security
def test_csv_export_follows_filters_and_defuses_formulas(viewer, store, make_event):
    formula = '=HYPERLINK("http://evil")'
    store.record_event(make_event(Label.WITH_MASK, gate_id="north"))
    refused = make_event(Label.WITHOUT_MASK, gate_id=formula)
    store.record_event(refused.with_door(DoorStatus.REFUSED, refused.occurred_at, 5.0, AckReason.DENIED))
    response = viewer.get("/api/v1/events.csv")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 2
    assert rows[1]["gate_id"] == "'" + formula
    assert (rows[1]["door_status"], rows[1]["door_reason"]) == ("refused", "denied")
    assert (rows[0]["door_status"], rows[0]["door_reason"]) == ("", "")
    assert float(rows[0]["p_with_mask"]) == 0.9
    filtered = list(csv.DictReader(io.StringIO(viewer.get("/api/v1/events.csv?gate=north").text)))
    assert [row["gate_id"] for row in filtered] == ["north"]
    assert viewer.get("/api/v1/events.csv?decision=nope").status_code == 400


def test_csv_export_pages_through_everything(viewer, store, make_event):
    for _ in range(25):
        store.record_event(make_event())
    lines = list(csv_lines(store, EventFilter(), page_size=10))
    assert len(lines) == 26  # header + every event, over three pages


def test_csv_export_with_the_database_down_is_a_503_not_an_empty_file(app, viewer, dead_engine):
    services_now = services(app)
    app.extensions["maskgate"] = replace(services_now, events=EventStore(dead_engine))  # users still answer
    response = viewer.get("/api/v1/events.csv")
    assert response.status_code == 503 and response.json == {"error": DATABASE_DOWN}


def test_review_through_the_api(admin, store, make_event):
    event = make_event(Label.WITHOUT_MASK)
    store.record_event(event)
    url = f"/api/v1/events/{event.event_id}/review"
    response = admin.api_post(url, json={"action": "relabel", "true_label": "improper_mask", "note": "chin"})
    assert response.status_code == 200
    assert response.json["review_label"] == "improper_mask" and response.json["reviewed_by"] == "alice"
    assert response.json["pinned"] is True and response.json["review_note"] == "chin"
    assert admin.api_post(url, json={"action": "relabel", "true_label": "cap"}).status_code == 400
    not_json = admin.client.post(url, data="action=confirm", headers={"X-CSRF-Token": admin.csrf})
    assert not_json.status_code == 400
    assert admin.api_post(url, json=["confirm"]).status_code == 400
    # a second review that says nothing of the note keeps it; one too long is refused, not cut
    assert admin.api_post(url, json={"action": "confirm"}).json["review_note"] == "chin"
    too_long = admin.api_post(url, json={"action": "confirm", "note": "x" * 2001})
    assert too_long.status_code == 400 and "at most 2000" in too_long.json["error"]
    assert store.get_event(event.event_id).review.note == "chin"


def test_has_snapshot_says_whether_the_snapshot_route_serves_one(viewer, app, store, make_event):
    folder = services(app).config.paths.snapshots / "gate-1"
    folder.mkdir(parents=True)
    (folder / "there.jpg").write_bytes(b"\xff\xd8 jpeg")
    there = make_event(Label.WITHOUT_MASK, snapshot_path="gate-1/there.jpg")
    gone = make_event(Label.WITHOUT_MASK, snapshot_path="gate-1/gone.jpg")
    for event in (there, gone):
        store.record_event(event)
    for event, expected in ((there, True), (gone, False)):
        assert viewer.get(f"/api/v1/events/{event.event_id}").json["has_snapshot"] is expected
        served = viewer.get(f"/events/{event.event_id}/snapshot").status_code
        assert served == (200 if expected else 404)


@pytest.mark.security
def test_review_fields_must_be_text(admin, store, make_event):
    event = make_event(Label.WITHOUT_MASK)
    store.record_event(event)
    url = f"/api/v1/events/{event.event_id}/review"
    bodies = [
        {"action": "relabel", "true_label": 5},
        {"action": "relabel", "true_label": ["with_mask"]},
        {"action": "confirm", "note": {"a": 1}},
        {"action": "confirm", "note": "a\x00b"},  # PostgreSQL refuses NUL in text
        {"action": ["confirm"]},
    ]
    for body in bodies:
        response = admin.api_post(url, json=body)
        assert response.status_code == 400, body
        assert "error" in response.json
    assert store.get_event(event.event_id).review is None
    alice = services(admin.client.application).users.get("alice")
    with pytest.raises(actions.ActionError, match="must be a label name"):  # other callers than the API
        actions.review_event(store, event.event_id, actions.ReviewKind.RELABEL, alice, true_label=5)


def test_incidents(viewer, store, make_event):
    denied = make_event(Label.WITHOUT_MASK)
    store.record_event(denied)
    store.record_event(make_event(Label.WITH_MASK))
    data = viewer.get("/api/v1/incidents").json
    assert [e["event_id"] for e in data["events"]] == [str(denied.event_id)]
    assert viewer.get("/api/v1/incidents?status=reviewed").json["events"] == []
    assert viewer.get("/api/v1/incidents?status=x").status_code == 400


def test_models_promote_and_rollback(admin, app, tmp_path):
    registry = services(app).models
    for version, macro_f1 in (("a", 0.8), ("b", 0.85)):  # folders that verify: the gates would load them
        folder = copy_model(tmp_path / "models" / version, version)
        register_folder(registry, folder, load_card(folder), {"macro_f1": macro_f1})
    assert [m["version"] for m in admin.get("/api/v1/models").json["models"]] == ["b", "a"]
    assert admin.api_post("/api/v1/models/a/promote").json["status"] == "active"
    promoted = admin.api_post("/api/v1/models/b/promote").json
    assert promoted["version"] == "b" and promoted["metrics"] == {"macro_f1": 0.85}
    assert admin.api_post("/api/v1/models/rollback").json["version"] == "a"
    conflict = admin.api_post("/api/v1/models/rollback")
    assert conflict.status_code == 409 and "no earlier model" in conflict.json["error"]
    assert admin.api_post("/api/v1/models/zzz/promote").status_code == 404


def test_schedule_and_runs(admin, app):
    from maskgate.store import RunStatus, RunTrigger

    schedule = admin.get("/api/v1/schedule").json
    assert schedule["cron"] == "0 2 * * *" and schedule["running"] is None
    assert schedule["next_run_at"] and schedule["scheduler_running"] is False
    runs = services(app).runs
    first = runs.try_start(RunTrigger.CLI)
    runs.finish(first.run_id, RunStatus.FAILED, reason="boom", log="trace\n")
    second = runs.try_start(RunTrigger.SCHEDULE)
    assert admin.get("/api/v1/schedule").json["running"]["run_id"] == second.run_id
    listed = admin.get("/api/v1/runs").json["runs"]
    assert [r["run_id"] for r in listed] == [second.run_id, first.run_id] and "log" not in listed[0]
    older = admin.get(f"/api/v1/runs?before={second.run_id}").json["runs"]
    assert [r["run_id"] for r in older] == [first.run_id]
    detail = admin.get(f"/api/v1/runs/{first.run_id}").json
    assert detail["log"] == "trace\n" and detail["reason"] == "boom" and detail["trigger"] == "cli"
    assert admin.get("/api/v1/runs/12345").status_code == 404
    assert admin.get("/api/v1/runs?before=abc").status_code == 400
    busy = admin.api_post("/api/v1/schedule/run")
    assert busy.status_code == 503  # this process runs no scheduler
