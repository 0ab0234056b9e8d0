"""`maskgate dashboard`: refuses to start without a secret or with a bad cron line; serves and stops,
also while it trains (the run is recorded as failed, the lock released)."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import signal
import urllib.parse
import urllib.request

import pytest

from maskgate.cli import main
from maskgate.store import RunStatus, RunTrigger, TrainingRuns, UserStore, make_engine, migrate
from tests.gate.comms.brokers import wait_until

from .conftest import PASSWORD
from .live import live_dashboard


def test_refuses_to_start_without_a_secret_key(capsys, sqlite_url, monkeypatch):
    monkeypatch.setenv("MASKGATE_DATABASE_URL", sqlite_url)
    assert main(["dashboard"]) == 2
    error = capsys.readouterr().err
    assert "dashboard.secret_key is not set" in error and "MASKGATE_DASHBOARD__SECRET_KEY" in error


def test_refuses_a_bad_cron_line(capsys, sqlite_url, monkeypatch):
    monkeypatch.setenv("MASKGATE_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("MASKGATE_DASHBOARD__SECRET_KEY", "k" * 32)
    monkeypatch.setenv("MASKGATE_DASHBOARD__RETRAIN_CRON", "nightly")
    assert main(["dashboard"]) == 2
    assert "not a crontab line" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--port", "70000", "a port number from 1 to 65535"),
        ("--port", "0", "a port number from 1 to 65535"),
        ("--threads", "0", "a whole number above 0"),  # waitress served, but no request was ever answered
        ("--threads", "-2", "a whole number above 0"),
        ("--threads", "many", "a whole number above 0"),
    ],
)
def test_refuses_a_number_out_of_range_before_serving(
    capsys, sqlite_url, monkeypatch, option, value, expected
):
    monkeypatch.setenv("MASKGATE_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("MASKGATE_DASHBOARD__SECRET_KEY", "k" * 32)
    with pytest.raises(SystemExit) as stopped:
        main(["dashboard", option, value])
    assert stopped.value.code == 2
    assert f"argument {option}: expected {expected}, got {value!r}" in capsys.readouterr().err


def test_refuses_an_unmigrated_database(capsys, sqlite_url, monkeypatch):
    monkeypatch.setenv("MASKGATE_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("MASKGATE_DASHBOARD__SECRET_KEY", "k" * 32)
    assert main(["dashboard"]) == 1
    assert "maskgate db upgrade" in capsys.readouterr().err


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["dashboard", "--help"])
    out = capsys.readouterr().out
    assert "--host" in out and "--port" in out


@pytest.mark.integration
def test_serves_with_waitress_and_its_scheduler_then_stops_on_sigterm(sqlite_url, tmp_path):
    migrate.upgrade(make_engine(sqlite_url))
    with live_dashboard(sqlite_url, tmp_path) as server:
        with urllib.request.urlopen(server.url + "/login") as response:
            assert response.status == 200
            assert "maskgate_session=" in response.headers["Set-Cookie"]
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(15) == 0
    log = server.log()
    assert "maskgate dashboard on http://127.0.0.1:" in log and "next retraining" in log
    assert "scheduler started" in log


def sign_in_over_http(url: str, username: str) -> tuple[urllib.request.OpenerDirector, str]:
    """A cookie-keeping client signed in to a live dashboard, and its CSRF token."""
    client = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    with client.open(url + "/login") as response:
        token = re.search(r'name="csrf_token" value="([^"]+)"', response.read().decode()).group(1)
    form = {"csrf_token": token, "username": username, "password": PASSWORD, "next": "/"}
    client.open(url + "/login", data=urllib.parse.urlencode(form).encode()).close()
    with client.open(url + "/api/v1/me") as response:
        return client, json.load(response)["csrf_token"]


@pytest.mark.integration
def test_sigterm_during_a_run_fails_the_run_and_does_not_wait_for_it(sqlite_url, tmp_path):
    engine = make_engine(sqlite_url)
    migrate.upgrade(engine)
    UserStore(engine).add("alice", PASSWORD, "admin")
    runs = TrainingRuns(engine)
    review = tmp_path / "review.csv"
    os.mkfifo(review)  # a run reads its label review first: with no writer ever, it "trains" for good
    with live_dashboard(sqlite_url, tmp_path, MASKGATE_RETRAIN__LABEL_REVIEW=str(review)) as server:
        client, csrf = sign_in_over_http(server.url, "alice")
        start = urllib.request.Request(
            server.url + "/api/v1/schedule/run",
            data=b"{}",
            headers={"Content-Type": "application/json", "X-CSRF-Token": csrf},
        )
        with client.open(start) as response:
            assert response.status == 202
            run_id = json.load(response)["run_id"]
        assert wait_until(lambda: f"run {run_id} started" in runs.get(run_id).log, timeout=10)
        server.process.send_signal(signal.SIGTERM)  # systemd stopping the service
        assert server.process.wait(15) == 0  # at once, not after the run (systemd would SIGKILL it)
    run = runs.get(run_id)
    assert run.status is RunStatus.FAILED and run.reason == "interrupted: the dashboard stopped"
    assert run.log.endswith(f"run {run_id} failed: interrupted: the dashboard stopped\n")
    assert runs.try_start(RunTrigger.MANUAL) is not None  # the next run need not wait 12 hours
    assert f"training run {run_id} interrupted: the dashboard stopped" in server.log()
    engine.dispose()
