"""The training subcommands' numeric options: a value out of range is a usage error (exit 2)
naming the option, refused before any work, never a model folder written over a good one."""

from __future__ import annotations

from pathlib import Path

import pytest

from maskgate.cli import build_parser, main
from tests.test_modelcard import make_folder

# (subcommand and what it requires, option, bad value)
BAD_VALUES = [
    *(
        (["train", "--data", "d", "--out", "o"], option, value)
        for option, value in [
            ("--epochs", "0"),
            ("--patience", "-1"),
            ("--batch-size", "0"),
            ("--size", "0"),
            ("--margin", "1.5"),
            ("--margin", "nan"),
            ("--lr", "0"),
            ("--lr", "inf"),
            ("--class-weight-power", "nan"),
            ("--class-weight-power", "-1"),
            ("--val", "1.5"),
            ("--test", "-0.1"),
            ("--seed", "-1"),
            ("--run-seed", "-1"),
            ("--max-train", "0"),
            ("--synthetic-masks", "-1"),
            ("--threads", "0"),
        ]
    ),
    (["evaluate", "--model", "m", "--data", "d"], "--min-face-size", "0"),
    *(
        (["train-detector"], option, value)
        for option, value in [
            ("--epochs", "0"),
            ("--batch-size", "0"),
            ("--lr", "nan"),
            ("--masked-weight", "0"),
            ("--bare-weight", "-1"),
            ("--large-face-weight", "inf"),
            ("--large-face-px", "0"),
            ("--loose-part-iou", "1.5"),
            ("--loose-negative-iou", "-0.1"),
            ("--max-scenes", "0"),
            ("--seed", "-1"),
            ("--threads", "0"),
        ]
    ),
    *(
        (["train-face-check"], option, value)
        for option, value in [
            ("--epochs", "0"),
            ("--members", "0"),
            ("--max-scenes", "-1"),
            ("--seed", "-1"),
            ("--threads", "0"),
        ]
    ),
    (["calibrate-detector"], "--min-iou", "1.5"),
    (["calibrate-detector"], "--min-iou", "nan"),
]


@pytest.mark.parametrize(
    ("command", "option", "value"), BAD_VALUES, ids=[f"{c[0]} {o} {v}" for c, o, v in BAD_VALUES]
)
def test_a_numeric_option_out_of_range_is_a_usage_error_naming_it(command, option, value, capsys):
    """Parsed only: the handler (which would train) is never reached either way."""
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args([*command, option, value])
    assert stopped.value.code == 2
    assert f"argument {option}: expected " in capsys.readouterr().err


@pytest.fixture
def good_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model folder at --out that a refused run must leave as it is; training must not start."""
    from maskgate.training import train as train_module

    def started(*_args, **_kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(train_module, "load_pool", started)
    (tmp_path / "faces").mkdir()
    make_folder(tmp_path / "model")
    return tmp_path / "model"


def _contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--size", "4"], "--size 4: the crop size must be a whole number from 8 to 1024, not 4"),
        (["--size", "2000"], "--size 2000: the crop size must be a whole number from 8 to 1024"),
        (["--arch", "seed", "--size", "7"], "--size 7: the crop size"),
        (["--val", "0"], "--val 0: training needs validation images"),
        (["--val", "0.5", "--test", "0.6"], "--val 0.5 --test 0.6: the validation and test shares"),
        (["--val", "1"], "--val 1 --test 0.2: the validation and test shares"),
        (["--seed", str(2**32)], f"--seed {2**32}: a seed must be at most {2**32 - 1}"),
        (["--run-seed", str(2**40)], f"--run-seed {2**40}: a seed must be at most"),
    ],
)
def test_train_refuses_a_crop_or_split_it_cannot_use_before_any_work(
    good_model: Path, options: list[str], message: str, capsys
):
    """`--size 4` used to train and write a folder `load_card` refuses ("invalid crop spec") over
    the good model at --out."""
    from maskgate.modelcard import load_card

    before = _contents(good_model)
    data = str(good_model.parent / "faces")
    assert main(["train", "--data", data, "--out", str(good_model), "--quiet", *options]) == 2
    assert message in capsys.readouterr().err
    assert _contents(good_model) == before and load_card(good_model).version == "m-1"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--epochs", "0"], "argument --epochs: expected a whole number above 0, got '0'"),
        (["--batch-size", "0"], "argument --batch-size: expected a whole number above 0, got '0'"),
        (
            ["--class-weight-power", "nan"],
            "argument --class-weight-power: expected a finite number, 0 or more",
        ),
        (["--margin", "1.5"], "argument --margin: expected a number from 0 to 1, got '1.5'"),
    ],
)
def test_train_with_a_bad_number_exits_2_and_leaves_the_model_at_out(
    good_model: Path, options: list[str], message: str, capsys
):
    before = _contents(good_model)
    data = str(good_model.parent / "faces")
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--data", data, "--out", str(good_model), "--quiet", *options])
    assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert _contents(good_model) == before


def test_the_other_subcommands_check_what_their_options_say_together(tmp_path: Path, capsys):
    manifest = tmp_path / "manifest.csv.gz"
    manifest.write_bytes(b"")
    argv = ["train-detector", "--manifest", str(manifest), "--out", str(tmp_path / "det")]
    assert main([*argv, "--loose-part-iou", "0.3", "--loose-negative-iou", "0.35"]) == 2
    assert "--loose-negative-iou 0.35 is above --loose-part-iou 0.3" in capsys.readouterr().err
    assert main([*argv, "--seed", str(2**32)]) == 2
    assert f"--seed {2**32}: a seed must be at most" in capsys.readouterr().err
    # face check: members seed, seed + 1, ...
    argv = ["train-face-check", "--manifest", str(manifest), "--detector-model", str(tmp_path / "none")]
    assert main([*argv, "--seed", str(2**32 - 2), "--members", "3"]) == 2
    assert f"--seed {2**32 - 2}: a seed (and the 2 after it) must be at most" in capsys.readouterr().err
    assert main(["calibrate-detector", "--manifest", str(manifest), "--min-iou", "0"]) == 2
    assert "--min-iou 0: every detection would pair with any drawn box" in capsys.readouterr().err
    assert not (tmp_path / "det").exists()
