from __future__ import annotations

import argparse

import pytest

from maskgate.argtypes import (
    fraction,
    non_negative_float,
    non_negative_int,
    port,
    positive_float,
    positive_int,
)


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        (positive_int, {"1": 1, "40": 40}, ["0", "-3", "1.5", "x", ""]),
        (non_negative_int, {"0": 0, "7": 7}, ["-1", "nan"]),
        (positive_float, {"0.5": 0.5, "3": 3.0}, ["0", "-1", "inf", "nan", "1e400"]),
        (non_negative_float, {"0": 0.0, "2.5": 2.5}, ["-0.1", "inf", "-inf", "nan"]),
        (fraction, {"0": 0.0, "0.2": 0.2, "1": 1.0}, ["1.5", "-0.1", "nan"]),
        (port, {"1": 1, "8080": 8080}, ["0", "65536", "http"]),
    ],
)
def test_an_argument_out_of_range_is_a_usage_error_naming_what_was_expected(kind, good, bad):
    for text, value in good.items():
        assert kind(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=f"expected .*, got {text!r}"):
            kind(text)


def test_argparse_turns_it_into_exit_2_with_the_option_named(capsys):
    parser = argparse.ArgumentParser(prog="maskgate train")
    parser.add_argument("--epochs", type=positive_int)
    with pytest.raises(SystemExit) as stopped:
        parser.parse_args(["--epochs", "0"])
    assert stopped.value.code == 2
    assert "argument --epochs: expected a whole number above 0, got '0'" in capsys.readouterr().err
