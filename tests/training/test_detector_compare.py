"""Detectors side by side: what the agent tells the door on each clip, and the table that shows it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from maskgate.config import Config, DetectorConfig
from maskgate.gate.mtcnn_litert import LiteRtMtcnnDetector
from maskgate.training.detector_compare import clip_decisions, table, with_check
from tests.training.conftest import DATASETS, ROOT

MODEL = ROOT / "models" / "default"


@pytest.mark.slow
@pytest.mark.integration
def test_the_door_decisions_of_a_clip_are_the_agents(tmp_path: Path):
    clip = DATASETS / "videos" / "yash42828_test_no_mask.mp4"
    if not clip.is_file():
        pytest.skip(f"shared clip {clip} is not present")
    shutil.copy(clip, tmp_path / clip.name)
    config = Config()
    decisions = clip_decisions(config, LiteRtMtcnnDetector(config.detector), MODEL, tmp_path)
    assert list(decisions) == [clip.name]
    [decision] = decisions[clip.name]  # one unmasked person, one refusal
    action, label, confidence = decision.split()
    assert (action, label) == ("deny", "without_mask") and 0.5 < float(confidence) <= 1


def _band(recall: float) -> dict:
    return {
        "detection_recall": {"with_mask": recall, "without_mask": 1.0, "improper_mask": 1.0},
        "detection_precision": {"all": 0.9},
        "map50": 0.5,
        "ground_truth": {"with_mask": 10, "without_mask": 2, "improper_mask": 1},
    }


def test_the_table_puts_each_detectors_door_decisions_side_by_side():
    bands = ("all", "<32", "32-96", ">=96", ">=32", ">=60")

    def result(recall: float, door: list[str]) -> dict:
        return {
            "bands": {band: _band(recall) for band in bands},
            "clips": {"a.mp4": {"frames": 10, "with_face": 9, "masked_face": 8}},
            "door": {"a.mp4": door},
        }

    text = table({"stock": result(0.7, ["deny without_mask 0.63"]), "tuned": result(0.9, [])})
    assert "| a.mp4 | 10 | 9 / 8 | 9 / 8 |" in text
    assert "| clip | stock: door | tuned: door |" in text
    assert "| a.mp4 | deny without_mask 0.63 | none |" in text
    assert "| >=60 | tuned | 0.900 (n=10) |" in text


def test_a_pair_may_name_its_stock_check_after_the_folder():
    paired = DetectorConfig(model="models/detector-masked@0.3", with_stock=True)
    expected = DetectorConfig(model="models/detector-masked", with_stock=True, stock_check=0.3)
    assert with_check(paired) == expected
    as_configured = DetectorConfig(model="models/detector-masked", with_stock=True)
    assert with_check(as_configured) == as_configured
    for bad in ("models/detector-masked@high", "models/detector-masked@1.5", "models/detector-masked@"):
        with pytest.raises(SystemExit, match="is not a stock check"):
            with_check(DetectorConfig(model=bad, with_stock=True))
