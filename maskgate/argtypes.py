"""Argument types for the command line: a number out of range is a usage error naming the option
(argparse prints it and exits 2), never a traceback or a silent hang later on.

Each is given as ``type=`` to ``add_argument``. Floats must be finite: ``float()`` also reads "inf"
and "nan", which a duration, a threshold or a learning rate must never be.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _number(text: str, kind: type, ok: Callable[[float], bool], rule: str) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {rule}, got {text!r}") from None
    if not math.isfinite(value) or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {rule}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v > 0, "a whole number above 0")


def non_negative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "a whole number, 0 or more")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: v > 0, "a finite number above 0")


def non_negative_float(text: str) -> float:
    return _number(text, float, lambda v: v >= 0, "a finite number, 0 or more")


def fraction(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v <= 1, "a number from 0 to 1")


def port(text: str) -> int:
    return _number(text, int, lambda v: 0 < v < 65536, "a port number from 1 to 65535")
