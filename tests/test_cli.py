"""The `maskgate` command: exit codes, messages, and the db/config/user commands end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from maskgate.cli import main
from maskgate.const import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE
from maskgate.store import UserStore, make_engine, migrate


@pytest.fixture
def db_env(monkeypatch, database_url) -> str:
    monkeypatch.setenv("MASKGATE_DATABASE_URL", database_url)
    return database_url


def test_help_everywhere(capsys):
    for argv in (
        ["--help"],
        ["db", "--help"],
        ["db", "upgrade", "--help"],
        ["user", "add", "--help"],
        ["config", "check", "--help"],
        ["agent", "--help"],
        ["train", "--help"],
        ["ensemble", "--help"],
    ):
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == EXIT_OK
    out = capsys.readouterr().out
    assert "usage: maskgate train" in out and "usage: maskgate ensemble" in out


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["db", "sideways"])
    assert stopped.value.code == EXIT_USAGE
    with pytest.raises(SystemExit) as stopped:
        main([])
    assert stopped.value.code == EXIT_USAGE


def test_config_check_prints_effective_config_with_secrets_masked(tmp_path, monkeypatch, capsys):
    path = tmp_path / "gate.toml"
    path.write_text('gate_id = "north"\n[mqtt]\npassword = "hunter2"\n')
    monkeypatch.setenv("MASKGATE_MQTT__URL", "mqtts://broker:8883")
    assert main(["config", "check", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert 'gate_id = "north"' in out and 'url = "mqtts://broker:8883"' in out
    assert "hunter2" not in out and 'password = "********"' in out


def test_config_typo_exits_2_naming_key_and_file(tmp_path, capsys):
    path = tmp_path / "gate.toml"
    path.write_text("[policy]\nmajorty = 0.8\n")
    assert main(["--config", str(path), "config", "check"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{path}: unknown key 'policy.majorty' (did you mean 'majority'?)" in err


def test_db_upgrade_current_downgrade(db_env, capsys):
    assert main(["db", "current"]) == EXIT_OK
    assert "base (empty)" in capsys.readouterr().out
    assert main(["db", "upgrade"]) == EXIT_OK
    head = migrate.head_revision()
    assert f"database at revision {head}" in capsys.readouterr().out
    assert main(["db", "current"]) == EXIT_OK
    assert f"{head} (up to date)" in capsys.readouterr().out
    assert main(["db", "downgrade", "base"]) == EXIT_OK
    assert main(["db", "stamp", head]) == EXIT_OK
    assert migrate.current_revision(make_engine(db_env)) == head


def test_unknown_revision_is_a_runtime_error(db_env, capsys):
    assert main(["db", "upgrade", "nosuchrev"]) == EXIT_RUNTIME
    assert "nosuchrev" in capsys.readouterr().err


def test_malformed_database_url(monkeypatch, capsys):
    monkeypatch.setenv("MASKGATE_DATABASE_URL", "postgres//oops")
    assert main(["db", "current"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "config error" in err and "database_url: malformed database URL 'postgres//oops'" in err


def test_a_database_url_refused_by_the_store_is_a_config_error(monkeypatch, capsys):
    """However a bad URL reaches make_engine, it is a config error (2), not a database error (1)."""
    monkeypatch.setattr(
        "maskgate.cli.build_parser", lambda: _parser_running(lambda *_: make_engine("foo://x"))
    )
    assert main(["anything"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "unsupported database 'foo'" in err and "database error" not in err


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("MASKGATE_DATABASE_URL", "foo://db/x", "database_url"),
        ("MASKGATE_DATABASE_URL", "postgres://db/x", "database_url"),
        ("MASKGATE_DATABASE_URL", "", "database_url"),
        ("MASKGATE_MQTT__URL", "http://broker", "mqtt.url"),
        ("MASKGATE_MQTT__URL", "mqtt://broker:99999", "mqtt.url"),
        ("MASKGATE_MQTT__URL", "mqtt://gate:pw0rd@broker", "mqtt.url"),
        ("MASKGATE_GATE_ID", "a/b", "gate_id"),
        ("MASKGATE_GATE_ID", "", "gate_id"),
        ("MASKGATE_MQTT__TOPIC_PREFIX", "x/#", "mqtt.topic_prefix"),
        ("MASKGATE_CAMERA__STREAM_TIMEOUT_S", "inf", "camera.stream_timeout_s"),
    ],
)
def test_config_check_refuses_what_the_commands_refuse(monkeypatch, capsys, name, value, key):
    monkeypatch.setenv(name, value)
    assert main(["config", "check"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert (
        err.startswith(f"maskgate: config error: environment variable {name}: {key}") and "pw0rd" not in err
    )


@pytest.mark.security
@pytest.mark.parametrize(
    ("name", "value", "secret"),
    [
        ("MASKGATE_MQTT__PASSWORD", "abc://hunter2", "hunter2"),
        ("MASKGATE_MQTT__COMMAND_SECRET", "s3cr3t://x", "s3cr3t"),
        ("MASKGATE_DATABASE_URL", "postgresql://localhost/db?password=hunter2", "hunter2"),
    ],
)
def test_config_check_never_prints_a_secret(monkeypatch, capsys, name, value, secret):
    monkeypatch.setenv(name, value)
    assert main(["config", "check"]) == EXIT_OK
    assert secret not in capsys.readouterr().out


@pytest.mark.security
def test_a_password_in_the_database_url_query_is_masked_in_connection_errors(monkeypatch, capsys):
    monkeypatch.setenv("MASKGATE_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/test?password=hunter2")
    assert main(["db", "current"]) == EXIT_RUNTIME
    err = capsys.readouterr().err
    assert "cannot connect to database" in err and "hunter2" not in err and "password=********" in err


def test_unreachable_database(monkeypatch, capsys):
    monkeypatch.setenv("MASKGATE_DATABASE_URL", "postgresql://gate:pw@127.0.0.1:1/maskgate")
    assert main(["db", "upgrade"]) == EXIT_RUNTIME
    err = capsys.readouterr().err
    assert "cannot connect to database" in err and ":pw@" not in err


def test_a_database_lost_mid_run_is_one_line_not_a_traceback(monkeypatch, capsys, tmp_path):
    """A command whose database goes away after it started (the agent without a spool fails closed
    so) ends with the driver's reason on one line and the runtime exit code."""
    from sqlalchemy import create_engine, text

    lost = create_engine(f"sqlite:///{tmp_path / 'gone' / 'events.sqlite'}")  # a folder that is not there

    def handler(_args, _config):
        with lost.connect() as connection:
            connection.execute(text("SELECT 1"))

    monkeypatch.setattr("maskgate.cli.build_parser", lambda: _parser_running(handler))
    assert main(["anything"]) == EXIT_RUNTIME
    err = capsys.readouterr().err
    assert err.startswith("maskgate: database error: unable to open database file") and "Traceback" not in err


def _parser_running(handler):
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    parser.add_argument("--config")
    parser.set_defaults(handler=handler)
    return parser


def test_user_add(db_env, monkeypatch, capsys):
    import io

    assert main(["db", "upgrade"]) == EXIT_OK
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long enough password\n"))
    assert main(["user", "add", "alice", "--role", "admin", "--password-stdin"]) == EXIT_OK
    assert "created admin 'alice'" in capsys.readouterr().out
    assert UserStore(make_engine(db_env)).authenticate("alice", "a long enough password").role == "admin"
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long enough password\n"))
    assert main(["user", "add", "alice", "--password-stdin"]) == EXIT_USAGE
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("username", "password", "message"),
    [("alice", "short", "password too short"), ("no spaces", "a long enough password", "invalid username")],
)
def test_user_add_with_a_bad_name_or_password_is_a_usage_error(
    db_env, monkeypatch, capsys, username, password, message
):
    import io

    assert main(["db", "upgrade"]) == EXIT_OK
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO(password + "\n"))
    assert main(["user", "add", username, "--password-stdin"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and "database error" not in err


def test_user_add_needs_a_migrated_database(sqlite_url, monkeypatch, capsys):
    import io

    monkeypatch.setenv("MASKGATE_DATABASE_URL", sqlite_url)
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long enough password\n"))
    assert main(["user", "add", "alice", "--password-stdin"]) == EXIT_RUNTIME
    assert "run `maskgate db upgrade`" in capsys.readouterr().err


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "maskgate"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("maskgate ")


def test_db_purge_applies_the_retention_and_deletes_the_purged_events_snapshots(
    db_env, monkeypatch, capsys, make_event, tmp_path
):
    from datetime import timedelta

    from maskgate.core import Label, utcnow
    from maskgate.store import EventStore

    snapshots = tmp_path / "snapshots"
    (snapshots / "gate-1").mkdir(parents=True)
    for name in ("old.jpg", "kept.jpg", "pinned.jpg"):
        (snapshots / "gate-1" / name).write_bytes(b"\xff\xd8 jpeg")
    assert main(["db", "upgrade"]) == EXIT_OK
    store = EventStore(make_engine(db_env))
    now, old = utcnow(), utcnow() - timedelta(days=400)
    store.record_event(make_event(Label.WITH_MASK, occurred_at=now - timedelta(days=10)))
    store.record_event(make_event(Label.WITHOUT_MASK, occurred_at=old, snapshot_path="gate-1/old.jpg"))
    store.record_event(make_event(Label.WITHOUT_MASK, occurred_at=now, snapshot_path="gate-1/kept.jpg"))
    pinned = make_event(Label.WITHOUT_MASK, occurred_at=old, snapshot_path="gate-1/pinned.jpg", pinned=True)
    store.record_event(pinned)
    monkeypatch.setenv("MASKGATE_RETENTION__EVENTS_DAYS", "7")
    monkeypatch.setenv("MASKGATE_PATHS__SNAPSHOTS", str(snapshots))
    capsys.readouterr()
    assert main(["db", "purge"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "deleted 2 event(s)" in out and "1 of their 1 snapshot(s) deleted" in out
    assert len(store.list_events().events) == 2
    # the purged incident's snapshot is gone; the recent one's and the pinned one's stay
    assert sorted(p.name for p in (snapshots / "gate-1").iterdir()) == ["kept.jpg", "pinned.jpg"]


def test_os_errors_are_one_line_naming_the_command_and_path(monkeypatch, capsys, tmp_path, caplog):
    """A bad output path ends with the command, the path and the reason on one line, exit 1."""
    blocker = tmp_path / "hostname"
    blocker.write_text("not a folder")

    def handler(_args, _config):
        (blocker / "x.json").parent.mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr("maskgate.cli.build_parser", lambda: _parser_running(handler))
    with caplog.at_level("DEBUG", logger="maskgate"):
        assert main(["evaluate"]) == EXIT_RUNTIME
    err = capsys.readouterr().err
    assert err == f"maskgate evaluate: {blocker}: File exists\n"
    assert any(record.exc_info for record in caplog.records)  # the traceback is kept for a debug log


def test_a_busy_port_is_one_line(monkeypatch, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        def handler(_args, _config):
            with socket.socket() as again:
                again.bind(("127.0.0.1", port))

        monkeypatch.setattr("maskgate.cli.build_parser", lambda: _parser_running(handler))
        assert main(["agent"]) == EXIT_RUNTIME
    err = capsys.readouterr().err
    assert err.startswith("maskgate agent: ") and "in use" in err and "Traceback" not in err


def test_no_command_that_is_not_built(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "bench" not in out and "not built" not in out
    with pytest.raises(SystemExit) as stopped:
        main(["bench"])
    assert stopped.value.code == EXIT_USAGE
