"""/healthz and /metrics on both databases: health with the database up and unreachable, the metrics
token, and metrics that parse and move."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from maskgate.config import Config
from maskgate.core import Label
from maskgate.dashboard.app import DashboardConfigError, create_app, services
from maskgate.store import RunStatus, RunTrigger

from .conftest import dashboard_config, signed_in

TOKEN = "metrics-token-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def with_metrics_token(config: Config, token: str = TOKEN) -> Config:
    return replace(config, dashboard=replace(config.dashboard, metrics_token=token))


def build(config: Config, **kwargs) -> Iterator[Flask]:
    app = create_app(config, **kwargs)
    app.config["TESTING"] = True
    yield app
    services(app).scheduler.shutdown()


@pytest.fixture
def metrics_app(config, migrated_engine, users, clock) -> Iterator[Flask]:
    """The dashboard with a metrics token, on each database."""
    yield from build(with_metrics_token(config), engine=migrated_engine, clock=clock)


@pytest.fixture
def unreachable_app(tmp_path) -> Iterator[Flask]:
    """A dashboard over a PostgreSQL URL (with a password) whose port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql+psycopg://maskgate:hunter2-secret@127.0.0.1:{port}/maskgate"
    yield from build(with_metrics_token(dashboard_config(url, tmp_path)))


def scrape(app: Flask) -> dict[str, dict[tuple, float]]:
    """Every sample of /metrics, by name, then by its sorted label pairs."""
    response = app.test_client().get("/metrics", headers=BEARER)
    assert response.status_code == 200, response.text
    assert response.content_type.startswith("text/plain; version=")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def requests_of(samples, endpoint: str, status: str) -> float:
    counts = samples.get("maskgate_dashboard_request_seconds_count", {})
    return counts.get((("endpoint", endpoint), ("status", status)), 0.0)


# -- /healthz ----------------------------------------------------------------------------------------


def test_health_answers_when_the_database_does(anonymous):
    response = anonymous.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "checks": {"database": True}}  # no version, no address
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.security
def test_health_is_503_naming_the_database_when_it_is_unreachable(unreachable_app):
    response = unreachable_app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.json == {"status": "failing", "checks": {"database": False}}
    assert "hunter2" not in response.text and "127.0.0.1" not in response.text
    samples = scrape(unreachable_app)  # the scrape still works, and says so
    assert samples["maskgate_dashboard_database_ok"] == {(): 0.0}
    assert "maskgate_events_last_hour" not in samples


def test_health_and_metrics_answer_a_signed_in_browser_while_the_database_is_down(unreachable_app):
    """They never look up the session: a browser's cookie must not turn them into an error page."""
    browser = signed_in(unreachable_app, "alice")
    response = browser.get("/healthz")
    assert response.status_code == 503
    assert response.json == {"status": "failing", "checks": {"database": False}}
    metrics = browser.get("/metrics", headers=BEARER)
    assert metrics.status_code == 200 and "maskgate_dashboard_database_ok 0.0" in metrics.text


@pytest.mark.security
def test_health_and_metrics_need_no_session_and_no_csrf_token(metrics_app):
    client = metrics_app.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics", headers=BEARER).status_code == 200
    openmetrics = client.get("/metrics", headers={**BEARER, "Accept": "application/openmetrics-text"})
    assert openmetrics.content_type.startswith("application/openmetrics-text")
    assert client.post("/healthz").status_code == 302  # no POST route: the login guard answers
    assert client.head("/healthz").status_code == 200


# -- the metrics token ---------------------------------------------------------------------------------


@pytest.mark.security
def test_metrics_need_the_token(metrics_app):
    client = metrics_app.test_client()
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-wrong-token"},
        {"Authorization": f"Basic {TOKEN}"},
    ):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "maskgate_" not in response.text
    admin = signed_in(metrics_app, "alice")  # a browser session is not the scrape token
    assert admin.get("/metrics").status_code == 401
    assert client.get("/api/v1/me", headers=BEARER).status_code == 401  # the token opens nothing else
    assert client.get("/metrics", headers=BEARER).status_code == 200


@pytest.mark.security
def test_without_a_token_there_are_no_metrics(app, admin, anonymous):
    assert "/metrics" not in {rule.rule for rule in app.url_map.iter_rules()}
    assert anonymous.get("/metrics", headers=BEARER).status_code == 302  # just an unknown page
    assert admin.get("/metrics").status_code == 404


@pytest.mark.security
def test_a_short_metrics_token_is_refused_at_start(tmp_path):
    config = with_metrics_token(dashboard_config("sqlite://", tmp_path), token="short")
    with pytest.raises(DashboardConfigError, match="metrics_token is too short"):
        create_app(config)


# -- what the metrics say -------------------------------------------------------------------------------


def test_metrics_report_model_events_incidents_and_the_last_run(metrics_app, store, make_event, clock):
    now = clock.now
    for minutes, label in ((1, Label.WITH_MASK), (5, Label.WITHOUT_MASK), (59, Label.IMPROPER_MASK)):
        store.record_event(make_event(label, occurred_at=now - timedelta(minutes=minutes)))
    store.record_event(make_event(Label.WITHOUT_MASK, occurred_at=now - timedelta(minutes=61)))
    registry = services(metrics_app).models
    registry.register("m-7", "models/m-7", "ab" * 32)
    registry.promote("m-7")
    runs = services(metrics_app).runs
    run = runs.try_start(RunTrigger.CLI)
    runs.finish(run.run_id, RunStatus.REJECTED, reason="not better")

    samples = scrape(metrics_app)
    assert samples["maskgate_dashboard_database_ok"] == {(): 1.0}
    last_hour = samples["maskgate_events_last_hour"]
    assert last_hour == {(("action", "allow"),): 1.0, (("action", "deny"),): 1.0, (("action", "warn"),): 1.0}
    assert samples["maskgate_open_incidents"] == {(): 3.0}  # the hour-old deny is open too
    assert samples["maskgate_active_model_info"] == {(("sha256", "ab" * 32), ("version", "m-7")): 1.0}
    status = samples["maskgate_retraining_last_run"]
    assert status[(("status", "rejected"),)] == 1.0 and status[(("status", "succeeded"),)] == 0.0
    finished = samples["maskgate_retraining_last_run_finished_timestamp_seconds"][()]
    assert finished >= samples["maskgate_retraining_last_run_started_timestamp_seconds"][()]
    assert "maskgate_dashboard_info" in samples


def test_an_empty_database_gives_zeros_and_no_model_or_run(metrics_app):
    samples = scrape(metrics_app)
    assert set(samples["maskgate_events_last_hour"].values()) == {0.0}
    assert samples["maskgate_open_incidents"] == {(): 0.0}
    assert "maskgate_active_model_info" not in samples and "maskgate_retraining_last_run" not in samples


def test_request_counts_move_by_endpoint_and_status_class(metrics_app):
    before = scrape(metrics_app)
    admin = signed_in(metrics_app, "alice")
    admin.get("/events")
    admin.get("/events?gate=north")  # the same endpoint, whatever the query
    metrics_app.test_client().get("/gates")  # no session: 302 to the login page
    admin.get("/no/such/page/12345")
    after = scrape(metrics_app)
    for endpoint, status, more in (
        ("events.index", "2xx", 2),
        ("gates.index", "3xx", 1),
        ("unmatched", "4xx", 1),
        ("metrics", "2xx", 1),  # the first scrape
    ):
        assert requests_of(after, endpoint, status) - requests_of(before, endpoint, status) == more, endpoint
    labels = {value for key in after["maskgate_dashboard_request_seconds_count"] for _, value in key}
    assert not any("/" in label for label in labels)  # endpoint names, never raw paths
    buckets = after["maskgate_dashboard_request_seconds_bucket"]
    assert buckets[(("endpoint", "events.index"), ("le", "+Inf"), ("status", "2xx"))] == 2.0


def test_each_app_counts_its_own_requests(metrics_app, config, migrated_engine):
    other = create_app(with_metrics_token(config), engine=migrated_engine)
    try:
        signed_in(metrics_app, "alice").get("/gates")
        assert requests_of(scrape(metrics_app), "gates.index", "2xx") == 1
        assert requests_of(scrape(other), "gates.index", "2xx") == 0
    finally:
        services(other).scheduler.shutdown()
