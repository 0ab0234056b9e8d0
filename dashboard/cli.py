"""The dashboard's subcommand: `dashboard`."""

from __future__ import annotations

import argparse

from maskgate.cli import add_planned


def register(commands: argparse._SubParsersAction) -> None:
    add_planned(commands, "dashboard", "serve the dashboard and its scheduler", 6)
