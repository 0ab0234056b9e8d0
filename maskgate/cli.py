"""The `maskgate` command. Exit codes: 0 ok, 2 usage or config error, 1 runtime failure."""

from __future__ import annotations

import argparse
import getpass
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from sqlalchemy.exc import SQLAlchemyError

from maskgate import __version__
from maskgate.config import Config, ConfigError, load_config, to_toml
from maskgate.const import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE
from maskgate.store import DatabaseUrlError, StoreError, UserError, UserStore, make_engine, migrate
from maskgate.store.db import error_reason

log = logging.getLogger("maskgate")

# Each part registers its own subcommands: a module with `register(commands)`. Registration
# imports nothing heavy; handlers import what they need when they run.
COMMAND_MODULES = ("maskgate.gate.cli", "maskgate.training.cli", "maskgate.dashboard.cli", "maskgate.demo")

Handler = Callable[[argparse.Namespace, Config], int]


class UsageError(Exception):
    """The command line asks for something that cannot be done as written."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskgate", description="A face-mask access gate.")
    parser.add_argument("--version", action="version", version=f"maskgate {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML config file (default: $MASKGATE_CONFIG, else built-in defaults)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_config_commands(commands)
    _add_db_commands(commands)
    _add_user_commands(commands)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(getattr(args, "config_file", None) or args.config)
    except ConfigError as exc:
        print(f"maskgate: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        return args.handler(args, config)
    except UsageError as exc:
        print(f"maskgate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DatabaseUrlError as exc:  # a URL that did not come through the config's own check
        print(f"maskgate: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreError as exc:
        print(f"maskgate: database error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except SQLAlchemyError as exc:  # the database went away mid-run: one line, not a traceback
        print(f"maskgate: database error: {error_reason(exc)}", file=sys.stderr)
        return EXIT_RUNTIME
    except OSError as exc:  # a bad output path, a busy port, a host that does not resolve
        command = " ".join(filter(None, ("maskgate", getattr(args, "command", None))))
        log.debug("%s failed", command, exc_info=True)
        print(f"{command}: {os_error_reason(exc)}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return EXIT_RUNTIME


def os_error_reason(exc: OSError) -> str:
    """What failed and why on one line: ``PATH: strerror`` (``A -> B: ...`` for a rename or link)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is None:
        return reason
    what = str(exc.filename) if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    return f"{what}: {reason}"


# -- config ------------------------------------------------------------------------------------


def _add_config_commands(commands: argparse._SubParsersAction) -> None:
    config = commands.add_parser("config", help="inspect the configuration")
    sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="validate a config and print the effective values, secrets masked")
    check.add_argument("config_file", nargs="?", metavar="FILE", help="config file (default: --config)")
    check.set_defaults(handler=_config_check)


def _config_check(_args: argparse.Namespace, config: Config) -> int:
    print(to_toml(config), end="")
    return EXIT_OK


# -- db ----------------------------------------------------------------------------------------


def _add_db_commands(commands: argparse._SubParsersAction) -> None:
    db = commands.add_parser("db", help="manage the database schema (Alembic migrations)")
    sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    upgrade = sub.add_parser("upgrade", help="migrate the schema up (default: to the newest revision)")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.set_defaults(handler=_db(lambda engine, args: migrate.upgrade(engine, args.revision)))
    downgrade = sub.add_parser("downgrade", help="migrate the schema down to REVISION ('base' empties it)")
    downgrade.add_argument("revision")
    downgrade.set_defaults(handler=_db(lambda engine, args: migrate.downgrade(engine, args.revision)))
    stamp = sub.add_parser("stamp", help="record REVISION as current without running migrations")
    stamp.add_argument("revision")
    stamp.set_defaults(handler=_db(lambda engine, args: migrate.stamp(engine, args.revision)))
    current = sub.add_parser("current", help="print the database's revision and whether it is the newest")
    current.set_defaults(handler=_db_current)
    purge = sub.add_parser(
        "purge", help="delete events past their retention ([retention]); pinned incidents are kept"
    )
    purge.set_defaults(handler=_db_purge)


def _db(action: Callable[..., None]) -> Handler:
    def handler(args: argparse.Namespace, config: Config) -> int:
        engine = make_engine(config.database_url)
        action(engine, args)
        print(f"database at revision {migrate.current_revision(engine) or 'base (empty)'}")
        return EXIT_OK

    return handler


def _db_current(_args: argparse.Namespace, config: Config) -> int:
    current = migrate.current_revision(make_engine(config.database_url))
    head = migrate.head_revision()
    state = "up to date" if current == head else f"newest is {head}: run `maskgate db upgrade`"
    print(f"{current or 'base (empty)'} ({state})")
    return EXIT_OK


def _db_purge(_args: argparse.Namespace, config: Config) -> int:
    from maskgate.files import remove_snapshots
    from maskgate.store import EventStore

    engine = make_engine(config.database_url)
    migrate.require_head(engine)
    retention = config.retention
    purged = EventStore(engine).purge(retention.events_days, retention.incidents_days)
    removed = remove_snapshots(config.paths.snapshots, purged.snapshot_paths)
    print(
        f"deleted {purged.events} event(s): events older than {retention.events_days} days, "
        f"incidents older than {retention.incidents_days} days (pinned ones kept); "
        f"{removed} of their {len(purged.snapshot_paths)} snapshot(s) deleted from {config.paths.snapshots}"
    )
    return EXIT_OK


# -- user --------------------------------------------------------------------------------------


def _add_user_commands(commands: argparse._SubParsersAction) -> None:
    user = commands.add_parser("user", help="manage dashboard users")
    sub = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="create a dashboard user")
    add.add_argument("username")
    add.add_argument("--role", choices=["admin", "viewer"], default="viewer")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input (for scripts)"
    )
    add.set_defaults(handler=_user_add)


def _user_add(args: argparse.Namespace, config: Config) -> int:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.username}: ")
        if password != getpass.getpass("again: "):
            raise UsageError("passwords differ")
    engine = make_engine(config.database_url)
    migrate.require_head(engine)
    try:
        user = UserStore(engine).add(args.username, password, args.role)
    except UserError as exc:  # a bad name, a short password, a name taken: not the database's fault
        raise UsageError(str(exc)) from None
    print(f"created {user.role} {user.username!r}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
