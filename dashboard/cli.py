"""The dashboard's subcommand: `maskgate dashboard [--host H] [--port P]`.

Serves the app with waitress (one process, a pool of threads) and runs the retraining
scheduler in that same process, the only place a scheduler is started.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from maskgate import argtypes
from maskgate.config import Config
from maskgate.const import EXIT_OK, EXIT_RUNTIME

log = logging.getLogger(__name__)

DEFAULT_THREADS = 8
INTERRUPTED = "interrupted: the dashboard stopped"


def register(commands: argparse._SubParsersAction) -> None:
    summary = "serve the dashboard and its scheduler"
    parser = commands.add_parser(
        "dashboard",
        help=summary,
        description=f"{summary}. Needs dashboard.secret_key; run `maskgate db upgrade` first.",
    )
    parser.add_argument("--host", help="address to listen on (default: dashboard.host)")
    parser.add_argument("--port", type=argtypes.port, help="port to listen on (default: dashboard.port)")
    parser.add_argument(
        "--threads",
        type=argtypes.positive_int,
        default=DEFAULT_THREADS,
        help=f"request threads (default {DEFAULT_THREADS})",
    )
    parser.set_defaults(handler=serve)


def serve(args: argparse.Namespace, config: Config) -> int:
    from maskgate.cli import UsageError
    from maskgate.dashboard.app import DashboardConfigError, check_config

    try:
        check_config(config)
    except DashboardConfigError as exc:
        raise UsageError(f"cannot serve the dashboard: {exc}") from None

    import waitress

    from maskgate.dashboard.app import create_app, services
    from maskgate.dashboard.gatewatch import GateWatcher
    from maskgate.store import EventStore, make_engine, migrate
    from maskgate.training.retrain import Retrainer, model_announcer

    engine = make_engine(config.database_url)
    migrate.require_head(engine)
    # The retraining job and the announcement of promotions / roll backs to the gates (docs/retraining.md).
    app = create_app(
        config, engine=engine, trainer=Retrainer(config, engine), on_model_change=model_announcer(config)
    )
    host = args.host or config.dashboard.host
    port = config.dashboard.port if args.port is None else args.port
    if config.dashboard.secure_cookies:
        log.info("secure cookies are on: serve over HTTPS (a reverse proxy), or sign-in will not stick")
    scheduler = services(app).scheduler
    scheduler.start()
    gates = GateWatcher(config, EventStore(engine)).start()  # the gates page: what each gate last said
    signal.signal(signal.SIGTERM, _stop)  # systemd stops with SIGTERM: shut down the scheduler cleanly
    next_run = scheduler.next_run_at()
    print(f"maskgate dashboard on http://{host}:{port}/ (next retraining {next_run})", flush=True)
    code = EXIT_OK
    try:
        waitress.serve(app, host=host, port=port, **server_options(args.threads))
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # the port is taken, or the address is not this machine's
        print(f"maskgate dashboard: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        code = EXIT_RUNTIME
    finally:
        gates.stop()
        scheduler.shutdown()
        # A run in progress here would keep the process alive for up to an hour (Python waits for the
        # scheduler's worker thread at exit) until systemd kills it, leaving the run `running` and the
        # lock taken for 12 hours: record it as failed and leave without waiting for its thread.
        interrupted = scheduler.job.interrupt(INTERRUPTED)
        engine.dispose()
    if interrupted:
        log.warning("training run %s %s", ", ".join(map(str, interrupted)), INTERRUPTED)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def server_options(threads: int) -> dict[str, object]:
    """waitress's settings. Its body limit is the app's: by default waitress reads up to 1 GiB of a
    request (spilling to temporary files) before the app sees it and can refuse it, which would let
    anyone, signed in or not, fill the disk with a few large uploads."""
    from maskgate.dashboard.app import MAX_REQUEST_BYTES

    return {"threads": threads, "ident": "maskgate", "max_request_body_size": MAX_REQUEST_BYTES}


def _stop(_signum, _frame) -> None:
    raise KeyboardInterrupt
