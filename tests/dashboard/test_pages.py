"""The HTML pages on both databases: what they show, filters, escaping, reviews, snapshots, models."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from maskgate.core import LABELS, AckReason, DoorStatus, Label, Review, utcnow
from maskgate.crop import CropSpec
from maskgate.dashboard.app import services
from maskgate.modelcard import ModelCard, load_card
from maskgate.store import EventFilter, ModelStatus
from maskgate.training.retrain import register_folder
from tests.conftest import copy_model

EVIL = '<script>alert("x")</script>'


def _rows(html: str) -> list[str]:
    return re.findall(r'data-event-id="([^"]+)"', html)


# -- overview -----------------------------------------------------------------------------------


def test_overview_counts_chart_gates_and_incidents(admin, store, make_event, clock):
    now = clock.now
    for label in (Label.WITH_MASK, Label.WITH_MASK, Label.WITHOUT_MASK, Label.IMPROPER_MASK):
        store.record_event(make_event(label, occurred_at=now - timedelta(minutes=1)))
    store.record_event(make_event(Label.WITH_MASK, gate_id="gate-2", occurred_at=now - timedelta(days=2)))
    store.update_gate("gate-1", availability="online", seen_at=now)
    store.update_gate("gate-2", availability="offline", seen_at=now - timedelta(hours=3))
    page = admin.get("/")
    assert page.status_code == 200
    assert re.search(r'id="today-total">4<', page.text)
    assert re.search(r'id="today-allow">2<', page.text)
    assert re.search(r'id="today-deny">1<', page.text)
    assert re.search(r'id="today-warn">1<', page.text)
    assert page.text.count("<circle") == 2  # one point per gate and day with events
    assert "gate-1 " + (now.date()).isoformat() + ": 50.0%" in page.text  # its tooltip
    assert re.search(r'class="state offline">offline</span> gate-2', page.text)
    assert len(_rows(page.text)) == 2  # the deny and the warn are open incidents
    data = admin.get("/api/v1/overview?days=3").json
    assert data["today"] == {"allow": 2, "deny": 1, "warn": 1, "total": 4}
    assert data["compliance"]["gates"]["gate-1"][-1] == pytest.approx(0.5)
    assert data["compliance"]["gates"]["gate-2"][0] == 1.0
    assert data["gates_not_online"] == [{"gate_id": "gate-2", "state": "offline"}]
    assert data["open_incidents"] == {"count": 2, "more": False}


def test_times_are_shown_in_utc():
    from maskgate.dashboard.app import format_time

    paris = timezone(timedelta(hours=1))
    assert format_time(datetime(2026, 3, 1, 15, 5, 9, tzinfo=paris)) == "2026-03-01 14:05:09Z"
    assert format_time(None) == "–"


def test_overview_days_must_be_sane(admin):
    for days in ("1000", "abc", "0", "-1", "²", "9" * 5000):
        assert admin.get("/", query_string={"days": days}).status_code == 400, days[:10]
    assert admin.get("/?days=7").status_code == 200


def test_open_incident_count_is_capped(app, store, make_event):
    from maskgate.dashboard.queries import count_open_incidents

    for _ in range(4):
        store.record_event(make_event(Label.WITHOUT_MASK))
    assert count_open_incidents(services(app).engine, cap=3) == (3, True)
    assert count_open_incidents(services(app).engine, cap=10) == (4, False)


# -- events -------------------------------------------------------------------------------------


def test_events_filters(admin, store, make_event):
    a = make_event(Label.WITH_MASK, gate_id="north")
    b = make_event(Label.WITHOUT_MASK, gate_id="south")
    c = make_event(Label.IMPROPER_MASK, gate_id="north")
    for event in (a, b, c):
        store.record_event(event)
    store.review_event(c.event_id, Review("alice", c.occurred_at, true_label=Label.WITH_MASK))
    assert _rows(admin.get("/events").text) == [str(e.event_id) for e in (a, b, c)]
    assert _rows(admin.get("/events?gate=north").text) == [str(a.event_id), str(c.event_id)]
    assert _rows(admin.get("/events?label=without_mask").text) == [str(b.event_id)]
    assert _rows(admin.get("/events?label=mask_weared_incorrect").text) == [str(c.event_id)]
    assert _rows(admin.get("/events?decision=allow").text) == [str(a.event_id)]
    assert _rows(admin.get("/events?reviewed=yes").text) == [str(c.event_id)]
    assert _rows(admin.get("/events?reviewed=no&gate=north").text) == [str(a.event_id)]
    day = a.occurred_at.date()
    assert len(_rows(admin.get(f"/events?from={day}&to={day}").text)) == 3
    assert _rows(admin.get(f"/events?to={day - timedelta(days=1)}").text) == []
    since = b.occurred_at.isoformat()
    assert _rows(admin.get("/events", query_string={"from": since}).text) == [
        str(a.event_id),
        str(b.event_id),
    ]


def test_the_filter_form_shows_the_filter_as_understood(admin, store, make_event):
    """label=mask, decision=DENY and reviewed=false filter the list: the form must say so, or staff
    read "any" above a filtered list and lose the filter at the next Filter press."""
    store.record_event(make_event(Label.WITH_MASK, gate_id="north"))
    page = admin.get("/events?label=mask&decision=DENY&reviewed=false&gate=+north+").text
    assert '<option value="with_mask" selected>' in page
    assert '<option value="deny" selected>' in page and '<option value="no" selected>' in page
    assert 'name="gate" list="gate-ids" value="north"' in page
    # a date in basic ISO form is the same whole day as the extended one
    day = utcnow().date()
    assert _rows(admin.get(f"/events?from={day:%Y%m%d}&to={day:%Y%m%d}").text) == _rows(
        admin.get(f"/events?from={day}&to={day}").text
    )
    assert f'name="to" type="date" value="{day}"' in admin.get(f"/events?to={day:%Y%m%d}").text
    # after an error, the form keeps what was typed
    assert 'value="nowhere"' in admin.get("/events?gate=nowhere&label=cap").text


def test_events_keyset_pagination(admin, store, make_event):
    events = [make_event() for _ in range(120)]
    for event in events:
        store.record_event(event)
    seen, url = [], "/events"
    for _ in range(5):
        page = admin.get(url).text
        seen += _rows(page)
        older = re.search(r'rel="next" href="([^"]+)"', page)
        if not older:
            break
        url = older.group(1).replace("&amp;", "&")
    assert seen == [str(e.event_id) for e in events]


def test_older_pages_keep_a_date_filter_as_the_same_dates(admin, store, make_event):
    events = [make_event() for _ in range(60)]
    for event in events:
        store.record_event(event)
    first, last = events[-1].occurred_at.date(), events[0].occurred_at.date()
    page = admin.get(f"/events?from={first}&to={last}").text
    older = re.search(r'rel="next" href="([^"]+)"', page).group(1).replace("&amp;", "&")
    assert f"from={first}" in older and f"to={last}" in older  # not the next midnight
    second = admin.get(older).text
    assert f'name="from" type="date" value="{first}"' in second
    assert f'name="to" type="date" value="{last}"' in second  # the form would otherwise move a day on
    assert _rows(page) + _rows(second) == [str(e.event_id) for e in events]
    newest = re.search(r'href="([^"]+)">Newest', second).group(1).replace("&amp;", "&")
    assert _rows(admin.get(newest).text) == _rows(page)


@pytest.mark.security
@pytest.mark.parametrize(
    "url",
    [
        "/events?to=9999-12-31",
        "/events?from=0001-01-01T00:00:00%2B01:00",
        "/incidents?cursor=bogus",
        "/schedule?before=%C2%B2",
        "/api/v1/events?to=9999-12-31",
        "/api/v1/incidents?cursor=bogus",
        "/api/v1/runs?before=%C2%B2",
        "/api/v1/events?limit=%C2%B2",
    ],
)
def test_odd_parameters_are_400_not_500(admin, url):
    response = admin.get(url)
    assert response.status_code == 400, response.text[:200]


@pytest.mark.security
@pytest.mark.parametrize(
    "query",
    [
        {"gate": "' OR 1=1 --"},
        {"gate": "gate-1'; DROP TABLE events; --"},
        {"gate": '" OR ""="'},
        {"gate": "%"},
        {"gate": "gate-1' UNION SELECT * FROM users --"},
    ],
)
def test_sql_injection_in_text_filters_matches_nothing(admin, store, make_event, query):
    store.record_event(make_event())
    page = admin.get("/events", query_string=query)
    assert page.status_code == 200
    assert _rows(page.text) == [] and "No events." in page.text
    assert admin.get("/api/v1/events", query_string=query).json["events"] == []
    assert len(store.list_events().events) == 1  # the table is still there, untouched
    assert "scrypt:" not in page.text


@pytest.mark.security
@pytest.mark.parametrize(
    "query",
    [
        {"label": "with_mask' OR '1'='1"},
        {"decision": "allow; DELETE FROM events"},
        {"from": "2024-01-01' OR 1=1 --"},
        {"to": "1; DROP TABLE users"},
        {"reviewed": "yes' --"},
        {"cursor": "' OR 1=1 --"},
    ],
)
def test_sql_injection_in_typed_filters_is_refused(admin, store, make_event, query):
    store.record_event(make_event())
    page = admin.get("/events", query_string=query)
    assert page.status_code == 400
    assert _rows(page.text) == []
    assert admin.get("/api/v1/events", query_string=query).status_code == 400
    assert len(store.list_events().events) == 1


@pytest.mark.security
def test_html_in_gate_names_notes_and_versions_is_escaped(admin, app, store, make_event):
    event = make_event(Label.WITHOUT_MASK, gate_id=EVIL, model_version=EVIL)
    store.record_event(event)
    store.update_gate(EVIL, availability="offline", model_version=EVIL)
    store.review_event(event.event_id, Review("alice", event.occurred_at, note=EVIL))
    services(app).models.register(EVIL, "nowhere", "0" * 64, {EVIL: EVIL})
    escaped = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;"
    for url in ("/", "/events", "/incidents?status=all", f"/events/{event.event_id}", "/gates", "/models"):
        page = admin.get(url)
        assert page.status_code == 200, url
        assert "<script>alert" not in page.text, url
        assert escaped in page.text, url
    reflected = admin.get("/events", query_string={"gate": EVIL}).text
    assert "<script>alert" not in reflected and escaped in reflected


def test_event_page_shows_probabilities_model_and_review(admin, store, make_event):
    event = make_event(Label.IMPROPER_MASK, model_version="m-7").with_door(
        DoorStatus.EXPIRED, make_event().occurred_at, reason=AckReason.TTL_TOO_LONG
    )
    store.record_event(event)
    page = admin.get(f"/events/{event.event_id}").text
    assert "Incident" in page and "m-7" in page and "expired: ttl too long" in page
    assert "improper_mask: 70.0%" in page  # the probability bar's tooltip
    assert "No snapshot" in page
    assert admin.get("/events/00000000-0000-0000-0000-000000000000").status_code == 404
    assert admin.get("/events/not-a-uuid").status_code == 404


def test_incidents_page_lists_open_then_reviewed(admin, store, make_event):
    allowed, denied, warned = (make_event(label) for label in Label)
    for event in (allowed, denied, warned):
        store.record_event(event)
    store.review_event(warned.event_id, Review("alice", warned.occurred_at, false_positive=True))
    assert _rows(admin.get("/incidents").text) == [str(denied.event_id)]
    assert _rows(admin.get("/incidents?status=reviewed").text) == [str(warned.event_id)]
    assert _rows(admin.get("/incidents?status=all").text) == [str(denied.event_id), str(warned.event_id)]
    assert admin.get("/incidents?status=bogus").status_code == 400


def test_the_incidents_page_and_api_read_the_gate_filter_alike(admin, store, make_event):
    store.record_event(make_event(Label.WITHOUT_MASK, gate_id="g2"))
    assert len(_rows(admin.get("/incidents?gate=+g2").text)) == 1
    assert len(admin.get("/api/v1/incidents?gate=+g2").json["events"]) == 1


def test_the_door_reason_shows_over_the_door_column(admin, store, make_event):
    event = make_event(Label.WITHOUT_MASK)
    store.record_event(event.with_door(DoorStatus.REFUSED, event.occurred_at, 4.0, AckReason.BAD_SIGNATURE))
    page = admin.get("/incidents").text
    assert '<td title="bad signature">refused</td>' in page


# -- review ---------------------------------------------------------------------------------------


def test_confirm_relabel_and_false_positive(admin, store, make_event):
    confirm, relabel, spurious = (make_event(Label.WITHOUT_MASK) for _ in range(3))
    for event in (confirm, relabel, spurious):
        store.record_event(event)
    response = admin.post(f"/events/{confirm.event_id}/review", data={"action": "confirm", "note": "ok"})
    assert response.status_code == 302
    done = store.get_event(confirm.event_id)
    assert done.review.true_label is Label.WITHOUT_MASK and done.review.reviewed_by == "alice" and done.pinned
    assert done.review.note == "ok"

    admin.post(f"/events/{relabel.event_id}/review", data={"action": "relabel", "true_label": "with_mask"})
    done = store.get_event(relabel.event_id)
    assert done.review.true_label is Label.WITH_MASK and done.pinned
    assert "Relabelled to with_mask" in admin.get(f"/events/{relabel.event_id}").text

    admin.post(f"/events/{spurious.event_id}/review", data={"action": "false_positive"})
    done = store.get_event(spurious.event_id)
    assert done.review.false_positive and done.review.true_label is None and not done.pinned

    # relabelled crops are what the retraining pool reads
    pool = store.list_events(EventFilter(reviewed=True), limit=10).events
    assert {e.event_id for e in pool if e.review.true_label} == {confirm.event_id, relabel.event_id}


def test_a_false_positive_is_unpinned_and_a_later_review_keeps_the_note_on_the_form(admin, store, make_event):
    event = make_event(Label.WITHOUT_MASK)
    store.record_event(event)
    url = f"/events/{event.event_id}/review"
    admin.post(url, data={"action": "relabel", "true_label": "improper_mask", "note": "under the nose, CCTV"})
    assert store.get_event(event.event_id).pinned
    # the form shows the note there is, so a second review keeps it unless the admin changes it
    page = admin.get(f"/events/{event.event_id}").text
    assert 'name="note" maxlength="2000" placeholder="optional" value="under the nose, CCTV"' in page
    # no longer training data: retention applies again
    admin.post(url, data={"action": "false_positive", "note": "under the nose, CCTV"})
    done = store.get_event(event.event_id)
    assert done.review.false_positive and not done.pinned and done.review.note == "under the nose, CCTV"
    assert store.purge(1, 1, now=utcnow() + timedelta(days=400)).events == 1


@pytest.mark.parametrize(
    ("data", "status"),
    [
        ({"action": "relabel"}, 400),
        ({"action": "relabel", "true_label": "hat"}, 400),
        ({"action": "delete"}, 400),
        ({}, 400),
    ],
)
def test_bad_reviews_are_refused(admin, store, make_event, data, status):
    event = make_event(Label.WITHOUT_MASK)
    store.record_event(event)
    assert admin.post(f"/events/{event.event_id}/review", data=data).status_code == status
    assert store.get_event(event.event_id).review is None


def test_review_of_a_missing_event_is_404(admin):
    url = "/events/00000000-0000-0000-0000-000000000000/review"
    assert admin.post(url, data={"action": "confirm"}).status_code == 404


# -- snapshots --------------------------------------------------------------------------------------

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64


def test_snapshot_is_served(admin, app, store, make_event):
    folder = services(app).config.paths.snapshots / "gate-1"
    folder.mkdir()
    (folder / "face.jpg").write_bytes(JPEG)
    event = make_event(Label.WITHOUT_MASK, snapshot_path="gate-1/face.jpg")
    store.record_event(event)
    assert 'alt="Face snapshot"' in admin.get(f"/events/{event.event_id}").text
    response = admin.get(f"/events/{event.event_id}/snapshot")
    assert response.status_code == 200 and response.data == JPEG
    assert response.mimetype == "image/jpeg"
    absolute = make_event(snapshot_path=str((folder / "face.jpg").resolve()))
    store.record_event(absolute)
    assert admin.get(f"/events/{absolute.event_id}/snapshot").status_code == 200


@pytest.mark.security
def test_snapshot_paths_cannot_escape_the_folder(admin, app, store, make_event, tmp_path):
    snapshots = services(app).config.paths.snapshots
    (tmp_path / "secret.jpg").write_bytes(JPEG)
    (snapshots / "notes.txt").write_text("not an image")
    os.symlink(tmp_path / "secret.jpg", snapshots / "link.jpg")
    stored_paths = [
        "../secret.jpg",
        "gate-1/../../secret.jpg",
        str(tmp_path / "secret.jpg"),
        "/etc/passwd",
        "link.jpg",
        "notes.txt",
        ".",
        "",
        "missing.jpg",
    ]
    for stored in stored_paths:
        event = make_event(Label.WITHOUT_MASK, snapshot_path=stored or None)
        store.record_event(event)
        response = admin.get(f"/events/{event.event_id}/snapshot")
        assert response.status_code == 404, stored
        assert JPEG not in response.data
    encoded = admin.get("/events/..%2F..%2Fsecret.jpg/snapshot")
    assert encoded.status_code == 404


# -- gates ----------------------------------------------------------------------------------------


def test_gates_page_states(admin, store, clock):
    now = clock.now
    store.update_gate("up", availability="online", fps=12.5, model_version="m-3", seen_at=now)
    store.update_gate("quiet", availability="online", seen_at=now - timedelta(minutes=30))
    store.update_gate("down", availability="offline", seen_at=now - timedelta(hours=2))
    store.ensure_gate("new")
    page = admin.get("/gates").text
    assert re.search(r"up</a></td>\s*<td>up</td>\s*<td><span class=\"state online\">online", page)
    assert "12.5" in page and "m-3" in page
    assert 'class="state silent">silent' in page
    assert 'class="state offline">offline' in page and "2 h ago" in page
    assert 'class="state unknown">unknown' in page and "never" in page
    gates = {g["gate_id"]: g for g in admin.get("/api/v1/gates").json["gates"]}
    assert gates["quiet"]["state"] == "silent" and gates["up"]["fps"] == 12.5


# -- models ---------------------------------------------------------------------------------------


@pytest.fixture
def model_folders(app, tmp_path):
    registry = services(app).models
    for version in ("m1", "m2"):
        folder = tmp_path / "models" / version
        folder.mkdir(parents=True)
        card = ModelCard(
            version, LABELS, CropSpec(size=96), "compact", "2026-11-29T12:00:00+00:00", parameters=177043
        )
        if version == "m2":  # an ensemble names its members
            members = [{"version": "a-1"}, {"version": "b-2"}]
            card = replace(card, arch="ensemble", crop=CropSpec(size=128), training={"members": members})
        (folder / "card.json").write_text(json.dumps(card.to_json()))
        (folder / "confusion.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        (folder / "notes.txt").write_text("not a plot")
        metrics = {"macro_f1": 0.91, "recall": {"improper_mask": 0.8}}
        registry.register(version, str(folder), "ab" * 32, metrics)
    (tmp_path / "elsewhere.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return registry


def test_models_page_shows_metrics_card_and_plots(admin, model_folders):
    page = admin.get("/models").text
    assert "macro_f1" in page and "0.9100" in page and "recall.improper_mask" in page
    assert "compact" in page and "96 px rgb, margin 0.2" in page and "177,043" in page
    assert "ensemble of 2: a-1, b-2" in page and "128 px rgb" in page
    assert "/models/m1/files/confusion.png" in page and "notes.txt" not in page
    assert "card <span class=\"warning\">not pinned" in page  # registered without its card's sha256
    plot = admin.get("/models/m1/files/confusion.png")
    assert plot.status_code == 200 and plot.mimetype == "image/png"
    assert "sandbox" in plot.headers["Content-Security-Policy"]
    assert plot.cache_control.private and not plot.cache_control.public  # behind a login


@pytest.mark.security
def test_plot_file_takes_a_file_name_in_the_models_own_folder_only(model_folders, tmp_path):
    from maskgate.dashboard.files import plot_file

    model = model_folders.get("m1")
    os.symlink(tmp_path / "elsewhere.png", tmp_path / "models" / "m1" / "link.png")
    assert plot_file(model, "confusion.png") == (tmp_path / "models" / "m1" / "confusion.png").resolve()
    for name in (
        "../elsewhere.png",
        "../m2/confusion.png",
        str(tmp_path / "elsewhere.png"),
        "link.png",
        "..",
    ):
        assert plot_file(model, name) is None, name


@pytest.mark.security
@pytest.mark.parametrize(
    "name", ["notes.txt", "card.json", "..%2Felsewhere.png", "..%2F..%2Felsewhere.png", "missing.png", ".png"]
)
def test_model_files_are_plots_of_that_model_only(admin, model_folders, name):
    assert admin.get(f"/models/m1/files/{name}").status_code == 404
    assert admin.get("/models/nope/files/confusion.png").status_code == 404


def test_promote_and_roll_back_from_the_page(admin, app, tmp_path):
    registry = services(app).models
    for version in ("m1", "m2"):  # folders that verify: the gates would load them
        folder = copy_model(tmp_path / "models" / version, version)
        register_folder(registry, folder, load_card(folder), {})
    changed = []
    object.__setattr__(services(app), "on_model_change", changed.append)
    assert admin.post("/models/m1/promote").status_code == 302
    assert admin.post("/models/m2/promote").status_code == 302
    assert registry.active().version == "m2"
    page = admin.get("/models").text
    assert "Model m2 is now active" in page
    assert f"card <code>{registry.get('m2').card_sha256[:16]}…</code>" in page  # what pins the folder
    assert admin.post("/models/rollback").status_code == 302
    assert registry.active().version == "m1"
    assert registry.get("m2").status is ModelStatus.CANDIDATE  # rolled back: never a rollback target again
    assert [model.version for model in changed] == ["m1", "m2", "m1"]
    assert admin.post("/models/rollback").status_code == 409  # nothing older than m1
    assert admin.post("/models/nope/promote").status_code == 404


# -- schedule -------------------------------------------------------------------------------------


def test_schedule_page_shows_next_run_and_history(admin, app):
    runs = services(app).runs
    from maskgate.store import RunStatus, RunTrigger

    run = runs.try_start(RunTrigger.SCHEDULE)
    runs.finish(run.run_id, RunStatus.REJECTED, candidate_version="m9", reason="worse on improper_mask")
    page = admin.get("/schedule").text
    assert "0 2 * * *" in page and 'id="next-run">20' in page
    assert "rejected" in page and "m9" in page and "worse on improper_mask" in page
    assert "not running in this process" in page
    detail = admin.get(f"/schedule/runs/{run.run_id}")
    assert detail.status_code == 200 and "worse on improper_mask" in detail.text
    assert admin.get("/schedule/runs/999").status_code == 404
    assert admin.get("/schedule?before=x").status_code == 400


def test_a_run_id_beyond_what_the_database_holds_is_404(admin):
    from maskgate.dashboard.queries import MAX_ROW_ID

    for url in ("/schedule/runs/", "/api/v1/runs/"):
        assert admin.get(f"{url}{MAX_ROW_ID}").status_code == 404  # looked up, not there
        # never asked: "integer out of range" on PostgreSQL, OverflowError from SQLite over 2**63 - 1
        for too_big in (MAX_ROW_ID + 1, 2**63):
            assert admin.get(f"{url}{too_big}").status_code == 404, (url, too_big)
    for url in ("/schedule", "/api/v1/runs"):
        assert admin.get(f"{url}?before={MAX_ROW_ID}").status_code == 200
        assert admin.get(f"{url}?before={MAX_ROW_ID + 1}").status_code == 400


def test_run_listings_leave_the_log_out_and_the_run_page_shows_it(admin, app):
    from sqlalchemy import event

    from maskgate.store import RunStatus, RunTrigger

    runs = services(app).runs
    run = runs.try_start(RunTrigger.SCHEDULE)
    runs.finish(run.run_id, RunStatus.FAILED, reason="boom", log="epoch 7: loss 0.25\n")
    statements: list[str] = []

    def remember(_connection, _cursor, statement, *_):
        statements.append(statement)

    event.listen(runs.engine, "before_cursor_execute", remember)
    try:
        assert admin.get("/schedule").status_code == 200
        assert admin.get("/api/v1/runs").status_code == 200
    finally:
        event.remove(runs.engine, "before_cursor_execute", remember)
    listings = [sql for sql in statements if "FROM training_runs ORDER BY" in sql]
    assert len(listings) == 2 and not any("training_runs.log" in sql for sql in listings)
    assert "epoch 7: loss 0.25" in admin.get(f"/schedule/runs/{run.run_id}").text
    assert admin.get(f"/api/v1/runs/{run.run_id}").json["log"] == "epoch 7: loss 0.25\n"


def test_run_now_without_a_scheduler_in_this_process_is_503(admin, app):
    assert admin.post("/schedule/run").status_code == 503
    assert services(app).runs.running() is None  # the lock was not taken


def test_past_days_are_cached_briefly_and_today_is_live(app, store, make_event, clock):
    from maskgate.dashboard.queries import PastDayCounts, build_overview

    ticks = [0.0]
    past = PastDayCounts(ttl_s=60, clock=lambda: ticks[0])
    yesterday = clock.now - timedelta(days=1)
    store.record_event(make_event(Label.WITH_MASK, occurred_at=yesterday))
    first = build_overview(store, clock.now, days=3, past=past).compliance.rates["gate-1"]
    assert first == [None, 1.0, None]
    store.record_event(make_event(Label.WITHOUT_MASK, occurred_at=yesterday))
    store.record_event(make_event(Label.WITHOUT_MASK, occurred_at=clock.now - timedelta(minutes=5)))
    cached = build_overview(store, clock.now, days=3, past=past).compliance.rates["gate-1"]
    assert cached == [None, 1.0, 0.0]  # yesterday from the cache, today live
    ticks[0] = 61
    assert build_overview(store, clock.now, days=3, past=past).compliance.rates["gate-1"] == [None, 0.5, 0.0]
