"""`maskgate demo`: the whole system on one machine, on the synthetic walk-up.

Brings up what a building would run, in one process where it can:
- the database (the configured one, SQLite by default), migrated to the newest schema;
- an MQTT broker: the configured one if it answers, else a private Mosquitto on a free port;
- the reference door controller for the gate;
- the dashboard on http://127.0.0.1:<port>/ with a `demo` admin whose password is new each run;
- the agent on the synthetic walk-up played in real time, printing each decision and door outcome.

Then it keeps the dashboard up until Ctrl-C (unless --no-wait), so the events can be looked at.
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress

from maskgate.config import Config
from maskgate.const import EXIT_OK

DEMO_USER = "demo"


def register(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo",
        help="run the whole system locally on the synthetic walk-up",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--no-wait", action="store_true", help="stop after the walk-up instead of serving on")
    demo.add_argument("--no-dashboard", action="store_true", help="do not serve the dashboard")
    demo.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace, config: Config) -> int:
    from maskgate.gate.cli import run_agent
    from maskgate.gate.comms.localbroker import local_broker
    from maskgate.gate.doorsim import DoorSimulator
    from maskgate.store import make_engine, migrate

    migrate.upgrade(make_engine(config.database_url))
    with ExitStack() as stack:
        url = stack.enter_context(local_broker(config))
        config = dataclasses.replace(config, mqtt=dataclasses.replace(config.mqtt, url=url))
        door = DoorSimulator(config, config.gate_id, open_s=2.0)
        door.start()
        stack.callback(door.stop)
        dashboard = None if args.no_dashboard else stack.enter_context(_dashboard(config))
        agent_args = argparse.Namespace(
            source="synthetic",
            model=None,
            annotate=None,
            max_frames=None,
            no_mqtt=False,
            realtime=True,
            door_from_recording=True,  # the demo's own door simulator
        )
        status = run_agent(agent_args, config)
        opened = door.outcomes.get("opened", 0)
        print(f"door {config.gate_id}: opened {opened} time(s); outcomes {dict(door.outcomes)}", flush=True)
        if dashboard and not args.no_wait and status == EXIT_OK:
            print(f"dashboard: {dashboard}  (Ctrl-C to stop)", flush=True)
            with suppress(KeyboardInterrupt):
                threading.Event().wait()
    return status


@contextmanager
def _dashboard(config: Config) -> Iterator[str]:
    """Serve the dashboard in a thread; yields a line saying where and how to sign in."""
    import waitress

    from maskgate.dashboard.app import create_app
    from maskgate.dashboard.cli import server_options
    from maskgate.dashboard.gatewatch import GateWatcher
    from maskgate.store import EventStore, UserError, UserStore, make_engine

    port = _free_port(config.dashboard.host, config.dashboard.port)
    dashboard = dataclasses.replace(
        config.dashboard,
        port=port,
        secret_key=config.dashboard.secret_key or secrets.token_urlsafe(32),
        secure_cookies=False,  # plain http on loopback, for this demo only
    )
    config = dataclasses.replace(config, dashboard=dashboard)
    engine = make_engine(config.database_url)
    password = secrets.token_urlsafe(12)
    users = UserStore(engine)
    try:
        users.add(DEMO_USER, password, "admin")
    except UserError:
        users.set_password(DEMO_USER, password)
    server = waitress.create_server(
        create_app(config, engine=engine), host=dashboard.host, port=port, **server_options(threads=4)
    )
    thread = threading.Thread(target=server.run, name="dashboard", daemon=True)
    thread.start()
    gates = GateWatcher(config, EventStore(engine)).start()
    where = f"http://{dashboard.host}:{port}/ (user {DEMO_USER!r}, password {password!r})"
    print(f"dashboard on {where}", flush=True)
    try:
        yield where
    finally:
        gates.stop()
        server.close()
        engine.dispose()


def _free_port(host: str, preferred: int) -> int:
    """`preferred` if nothing listens there, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return probe.getsockname()[1]
    print(f"maskgate demo: no free port on {host}", file=sys.stderr)
    raise SystemExit(1)
