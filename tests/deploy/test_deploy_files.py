"""The deploy kit, checked without a container engine or systemd (none runs here): the files parse,
their commands are real maskgate commands, secrets only come from the environment."""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

import pytest
import yaml

from maskgate.cli import build_parser

DEPLOY = Path(__file__).parents[2] / "deploy"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY")


def parses(argv: list[str]) -> None:
    """`argv` is accepted by the maskgate command line (argparse exits on anything else)."""
    args = build_parser().parse_args(argv)
    assert callable(args.handler)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_has_the_whole_system(compose):
    services = {"postgres", "mosquitto", "migrate", "purge", "dashboard", "agent", "door-sim"}
    assert set(compose["services"]) == services
    for name in ("postgres", "mosquitto", "dashboard"):
        assert "healthcheck" in compose["services"][name], name


def test_compose_commands_are_maskgate_commands(compose):
    for name in ("migrate", "dashboard", "agent", "door-sim"):
        service = compose["services"][name]
        assert service["image"] == "maskgate:latest"
        argv = [re.sub(r"\$\{[^}]+\}", "0", word) for word in service["command"]]
        parses(argv)


def test_compose_secrets_come_from_the_environment(compose):
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            text = str(value)
            if "://" in text and "@" in text:  # credentials in a URL
                assert "${" in text, f"{name}: {key} holds a literal secret"
            if SECRET_NAME.search(key):
                assert text.startswith("${") and ":?" in text, f"{name}: {key} must come from .env, required"


def test_compose_purges_daily_with_the_same_database_as_the_others(compose):
    purge = compose["services"]["purge"]
    assert purge["image"] == "maskgate:latest" and purge["restart"] == "unless-stopped"
    assert purge["environment"] == compose["services"]["migrate"]["environment"]  # the same database
    assert purge["entrypoint"] == ["/bin/sh", "-c"] and purge["init"] is True
    (script,) = purge["command"]
    assert script == "while true; do maskgate db purge; sleep 86400; done"
    parses(["db", "purge"])
    assert purge["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    # it deletes the snapshots of the events it deletes: the agent's snapshot folder, writable
    (agent_snapshots,) = [v for v in compose["services"]["agent"]["volumes"] if v.startswith("snapshots:")]
    assert agent_snapshots in purge["volumes"] and not agent_snapshots.endswith(":ro")


def test_services_start_in_order(compose):
    services = compose["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("dashboard", "agent"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["dashboard"]["ports"] == ["127.0.0.1:8080:8080"]  # only behind a proxy


def test_dockerfile_runs_maskgate_as_a_user():
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()]
    instructions = [line.split()[0] for line in lines if line[:1].isupper()]
    assert next(line for line in lines if line.startswith("FROM")).startswith("FROM python:3.11")
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["maskgate"]' in lines
    assert "ADD" not in instructions  # COPY only: nothing fetched at build time behind our back
    copied = {line.split()[1] for line in lines if line.startswith("COPY ")}
    assert {"maskgate", "gate", "dashboard", "migrations", "models/default"} <= copied
    for folder in copied - {"pyproject.toml"}:
        assert (DEPLOY.parent / folder).exists(), folder


def read_unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # systemd keys are case-sensitive
    assert parser.read(DEPLOY / "systemd" / name), name
    return parser


@pytest.mark.parametrize("unit", sorted(p.name for p in (DEPLOY / "systemd").glob("*.service")))
def test_systemd_units(unit):
    parser = read_unit(unit)
    service = parser["Service"]
    assert service["User"] == "maskgate"
    if service.get("Type") == "oneshot":  # a job its timer starts: it neither restarts nor is enabled
        assert "Restart" not in service and not parser.has_section("Install")
        assert (DEPLOY / "systemd" / unit.replace(".service", ".timer")).is_file()
    else:
        assert service["Restart"] == "always" and "WantedBy" in parser["Install"]
    assert service["NoNewPrivileges"] == "true" and service["ProtectSystem"] == "strict"
    assert service["EnvironmentFile"].startswith("/etc/maskgate/")  # secrets live outside the unit
    for key in ("ExecStart", "ExecStartPre"):
        if key in service:
            argv = shlex.split(service[key].replace("%i", "gate-1"))
            assert argv[0] == "/opt/maskgate/venv/bin/maskgate"
            parses(argv[1:])


def test_a_daily_timer_purges_with_the_config_and_secrets_of_the_dashboard():
    purge = read_unit("maskgate-purge.service")["Service"]
    dashboard = read_unit("maskgate-dashboard.service")["Service"]
    argv = shlex.split(purge["ExecStart"])
    assert argv == [*shlex.split(dashboard["ExecStart"])[:3], "db", "purge"]  # the same maskgate, --config
    shared = ("Group", "EnvironmentFile", "WorkingDirectory", "ReadWritePaths", "ProtectHome", "PrivateTmp")
    assert {key: purge[key] for key in shared} == {key: dashboard[key] for key in shared}
    timer = read_unit("maskgate-purge.timer")
    assert timer["Timer"]["OnCalendar"] == "daily" and timer["Timer"]["Persistent"] == "true"
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_broker_configs_refuse_anonymous_clients():
    for name in ("mosquitto.conf", "compose.conf"):
        listeners = re.split(r"^listener ", (DEPLOY / "mosquitto" / name).read_text(), flags=re.MULTILINE)
        for block in listeners[1:]:
            port = block.split()[0]
            if "allow_anonymous true" in block:
                assert port == "1884" and "127.0.0.1" in block.splitlines()[0] and "acl_file" in block
        assert "allow_anonymous false" in (DEPLOY / "mosquitto" / name).read_text()


def test_secrets_made_on_the_host_are_ignored_by_git():
    ignored = (DEPLOY.parent / ".gitignore").read_text().splitlines()
    assert {"deploy/.env", "deploy/mosquitto/passwd", "deploy/mosquitto/certs/"} <= set(ignored)
    assert "deploy/mosquitto/local/" in ignored


def test_the_broker_container_mounts_only_shipped_files_and_the_hosts_own_broker_files(compose):
    """The per-gate ACL, the password file and the certificates are made on the host (add-gate.sh,
    make-certs.sh) into deploy/mosquitto/local/, never into the shipped, tracked files."""
    for volume in compose["services"]["mosquitto"]["volumes"]:
        source = volume.split(":")[0]
        if not source.startswith("./"):
            continue  # a named volume
        if source.startswith("./mosquitto/local/"):
            assert source.split("/")[-1] in ("acl", "passwd", "certs"), source
        else:
            assert (DEPLOY / source).is_file(), f"{source} is neither shipped nor made in mosquitto/local/"
