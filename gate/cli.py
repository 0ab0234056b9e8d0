"""The agent's subcommands: `agent`, `door-sim`, `demo`."""

from __future__ import annotations

import argparse

from maskgate.cli import add_planned


def register(commands: argparse._SubParsersAction) -> None:
    add_planned(
        commands, "agent", "run the gate agent on a camera, stream, file, folder or the synthetic walk-up", 4
    )
    add_planned(commands, "door-sim", "run the reference door controller for one gate", 5)
    add_planned(commands, "demo", "run the whole system locally on the synthetic walk-up", 4)
