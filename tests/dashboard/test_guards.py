"""Every state-changing route: CSRF token required (400), admin role required (403); headers; body size."""

from __future__ import annotations

import logging

import pytest
from werkzeug.exceptions import InternalServerError

from maskgate.dashboard.app import DATABASE_DOWN

from .conftest import signed_in
from .test_auth import PUBLIC, sample_url

pytestmark = pytest.mark.security


def _state_changing(app):
    for rule in app.url_map.iter_rules():
        if rule.rule in PUBLIC or rule.rule == "/logout":
            continue
        if "POST" in rule.methods:
            yield rule


def test_there_are_state_changing_routes_to_guard(app):
    assert {rule.rule for rule in _state_changing(app)} >= {
        "/events/<uuid:event_id>/review",
        "/models/<version>/promote",
        "/models/rollback",
        "/schedule/run",
        "/api/v1/events/<uuid:event_id>/review",
        "/api/v1/models/<version>/promote",
        "/api/v1/models/rollback",
        "/api/v1/schedule/run",
    }


def test_missing_or_wrong_csrf_token_is_400(app, admin):
    for rule in _state_changing(app):
        url = sample_url(rule)
        assert admin.client.post(url).status_code == 400, url
        assert admin.client.post(url, data={"csrf_token": "forged"}).status_code == 400, url
        forged = admin.client.post(url, json={"action": "confirm"}, headers={"X-CSRF-Token": "forged"})
        assert forged.status_code == 400, url
        # non-ASCII tokens: hmac.compare_digest raises on such str, which once made a 500
        assert admin.client.post(url, data={"csrf_token": "forgé\u2603"}).status_code == 400, url
        accented = admin.client.post(url, json={"action": "confirm"}, headers={"X-CSRF-Token": "forgé"})
        assert accented.status_code == 400, url


def test_viewer_cannot_do_admin_actions(app, viewer):
    for rule in _state_changing(app):
        url = sample_url(rule)
        form = viewer.post(url, data={"action": "confirm"})
        assert form.status_code == 403, url
        api = viewer.api_post(url, json={"action": "confirm"})
        assert api.status_code == 403, url
        if url.startswith("/api/"):
            assert api.json == {"error": "this needs the admin role"}


def test_viewer_sees_no_admin_controls(viewer, store, make_event, app):
    from maskgate.core import Label
    from maskgate.dashboard.app import services

    event = make_event(Label.WITHOUT_MASK)
    store.record_event(event)
    services(app).models.register("v1", "models/v1", "0" * 64)
    assert "Relabel" not in viewer.get(f"/events/{event.event_id}").text
    assert "Promote" not in viewer.get("/models").text
    assert "Run now" not in viewer.get("/schedule").text


def test_oversized_bodies_are_refused(admin, store, make_event):
    event = make_event()
    store.record_event(event)
    big = "x" * (65 * 1024)
    response = admin.post(f"/events/{event.event_id}/review", data={"action": "confirm", "note": big})
    assert response.status_code == 413
    api = admin.api_post(f"/api/v1/events/{event.event_id}/review", json={"action": "confirm", "note": big})
    assert api.status_code == 413
    assert store.get_event(event.event_id).review is None


@pytest.mark.parametrize(
    "path", ["/", "/events", "/login", "/api/v1/me", "/no-such-page", "/api/v1/events/not-a-uuid", "/?days=x"]
)
def test_security_headers(admin, path):
    response = admin.get(path)
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert "script-src 'self'" in csp and "object-src 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["Cache-Control"] == "no-store"


def test_errors_show_no_traceback(app):
    app.config["TESTING"] = False  # let the error handler answer, as in production

    def boom():
        raise RuntimeError("secret detail")

    urls = ("/boom", "/api/v1/boom")  # routes added for this test only, before its first request
    for url in urls:
        app.add_url_rule(url, url, boom)
    admin = signed_in(app, "alice")
    for url in urls:
        response = admin.get(url)
        assert response.status_code == 500
        assert "secret detail" not in response.text and "Traceback" not in response.text
    assert admin.get("/api/v1/boom").json == {"error": InternalServerError.description}


def test_a_database_outage_is_a_503_logged_in_one_line(dead_app, caplog):
    dead_app.config["TESTING"] = False  # as in production: an unhandled error would be a 500
    admin = signed_in(dead_app, "alice")  # the guard's session lookup is the first query to fail
    with caplog.at_level(logging.INFO):
        page = admin.get("/events")
        api = admin.get("/api/v1/events")
    assert (page.status_code, page.mimetype) == (503, "text/html") and DATABASE_DOWN in page.text
    assert api.status_code == 503 and api.json == {"error": DATABASE_DOWN}
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert [record.getMessage().split(": ")[:2] for record in errors] == [
        ["events.index", "database error"],
        ["api.events", "database error"],
    ]
    assert all("port 1 failed" in record.getMessage() for record in errors)  # the driver's reason
    assert not any(record.exc_info or "\n" in record.getMessage() for record in errors)  # no traceback


def test_static_files_are_served_locally(admin):
    page = admin.get("/").text
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page
    assert admin.get("/static/app.js").status_code == 200
    assert admin.get("/static/app.css").status_code == 200


def test_health_needs_no_login(anonymous):
    assert anonymous.get("/healthz").json["status"] == "ok"
