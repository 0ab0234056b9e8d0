"""The training subcommands: `train`, `evaluate`."""

from __future__ import annotations

import argparse

from maskgate.cli import add_planned


def register(commands: argparse._SubParsersAction) -> None:
    add_planned(commands, "train", "train a mask classifier into a model folder", 3)
    add_planned(commands, "evaluate", "evaluate a model on crops or on whole scenes", 3)
