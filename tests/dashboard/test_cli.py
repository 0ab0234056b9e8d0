"""`maskgate dashboard`: refuses to start without a secret or with a bad cron line; serves and stops."""

from __future__ import annotations

import signal
import urllib.request

import pytest

from maskgate.cli import main
from maskgate.store import make_engine, migrate

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


def test_refuses_a_port_that_is_not_one(capsys, sqlite_url, monkeypatch):
    monkeypatch.setenv("MASKGATE_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("MASKGATE_DASHBOARD__SECRET_KEY", "k" * 32)
    assert main(["dashboard", "--port", "70000"]) == 2
    assert "--port: dashboard.port must be between 0 and 65535, got 70000" in capsys.readouterr().err


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
