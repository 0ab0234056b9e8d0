"""Detectors side by side: what the agent tells the door on each clip, and the table that shows it."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from maskgate.config import Config
from maskgate.core import Box, Classification, Face
from maskgate.crop import BoxCalibration, CropSpec
from maskgate.gate.mtcnn_litert import LiteRtMtcnnDetector
from maskgate.gate.policy import DecisionPolicy
from maskgate.training.detector_compare import (
    clip_decisions,
    folder_and_check,
    main,
    parse_thresholds,
    table,
    unmasked_photos,
)
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

    stock, tuned = result(0.7, ["deny without_mask 0.63"]), result(0.9, [])
    stock["unmasked"] = {"photos": 20, "unreadable": 0, "with_face": 19, "opening": 0, "opening_photos": []}
    tuned["unmasked"] = {
        "photos": 20,
        "unreadable": 0,
        "with_face": 20,
        "opening": 1,
        "opening_photos": ["x/1.jpg"],
    }
    text = table({"stock": stock, "tuned": tuned})
    assert "| 20 | 19 / 0 | 20 / 1 |" in text
    assert "| a.mp4 | 10 | 9 / 8 | 9 / 8 |" in text
    assert "| clip | stock: door | tuned: door |" in text
    assert "| a.mp4 | deny without_mask 0.63 | none |" in text
    assert "| >=60 | tuned | 0.900 (n=10) |" in text


def test_a_pair_may_name_its_stock_check_after_the_folder():
    assert folder_and_check("models/detector-masked@0.05") == ("models/detector-masked", 0.05)
    assert folder_and_check("models/detector-masked@0") == ("models/detector-masked", 0.0)
    assert folder_and_check("models/detector-masked@1") == ("models/detector-masked", 1.0)
    assert folder_and_check("models/detector-masked") == ("models/detector-masked", None)
    assert folder_and_check("models/det@v2") == ("models/det@v2", None)  # an @ in the folder's name
    assert folder_and_check("runs/a@b@0.3") == ("runs/a@b", 0.3)


@pytest.mark.parametrize("check", ["1.5", "-0.1", "nan"])
def test_a_stock_check_outside_0_to_1_is_refused_before_anything_runs(check, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--with-stock", f"pair=models/detector-masked@{check}"])
    assert exit_info.value.code == 2
    assert "the stock check must be between 0 and 1" in capsys.readouterr().err


def test_stage_thresholds_are_three_fractions():
    assert parse_thresholds("0.3,0.7,0.8") == (0.3, 0.7, 0.8)
    for bad, says in [
        ("0.3,0.7", "expected 3 values"),
        ("0.3,0.7,0.8,0.9", "expected 3 values"),
        ("0.3,x,0.8", r"\[1\]: expected a number"),
        ("0.3,0.7,1.5", "must be all between 0 and 1"),
    ]:
        with pytest.raises(ValueError, match=f"^--thresholds: detector.thresholds.*{says}"):
            parse_thresholds(bad)


@pytest.mark.parametrize(
    ("option", "item", "says"),
    [
        ("--thresholds", "pair=0.3,0.7", "--thresholds pair=0.3,0.7: detector.thresholds: expected 3 values"),
        ("--thresholds", "other=0.3,0.7,0.8", "no detector is named 'other'"),
        ("--face-check", "pair=1.5", "--face-check pair=1.5: detector.face_check must be between 0 and 1"),
        ("--face-check", "pair=x", "--face-check pair=x: detector.face_check: expected a number"),
        ("--face-check", "other=0.9", "no detector beside the stock nets is named 'other'"),
    ],
)
def test_settings_for_an_unknown_detector_or_out_of_range_are_refused(option, item, says, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--with-stock", "pair=models/detector-masked", option, item])
    assert exit_info.value.code == 2
    assert says in capsys.readouterr().err


class WholeImage:
    """A detector that finds one face filling the image, at a given score."""

    def __init__(self, score: float):
        self.score = score

    def detect(self, image):
        height, width = image.shape[:2]
        return [Face(Box(0, 0, width, height), self.score, {})]


@pytest.mark.slow
def test_unmasked_photos_count_the_faces_the_policy_would_open_the_door_for(tmp_path: Path):
    from maskgate.gate.classifier import MaskClassifier

    photos = DATASETS / "folders" / "chandrikadeb7"
    masked, bare = photos / "with_mask" / "0417.jpg", photos / "without_mask" / "0_0_aidai_0014.jpg"
    if not (masked.is_file() and bare.is_file()):
        pytest.skip(f"shared photos in {photos} are not present")
    folder = tmp_path / "without_mask"
    folder.mkdir()
    shutil.copy(masked, folder / "masked.jpg")  # as if a false face: the classifier calls it masked
    shutil.copy(bare, folder / "bare.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")  # unreadable: not counted, no crash
    classifier, policy = MaskClassifier(MODEL), DecisionPolicy(Config().policy, "test")

    sure = unmasked_photos(WholeImage(0.99), BoxCalibration(), classifier, policy, [folder], progress=False)
    assert sure == {
        "photos": 2,
        "unreadable": 1,
        "with_face": 2,
        "opening": 1,
        "opening_photos": [f"{tmp_path.name}/without_mask/masked.jpg"],
    }
    # A face the detector is unsure of is no evidence for the policy, whatever the classifier says.
    unsure = unmasked_photos(WholeImage(0.5), BoxCalibration(), classifier, policy, [folder], progress=False)
    assert (unsure["with_face"], unsure["opening"]) == (2, 0)


class ByBrightness:
    """A classifier that calls a bright crop `with_mask` and a dark one `without_mask`, both sure."""

    crop = CropSpec(size=32)

    def classify(self, crops):
        return [
            Classification.from_vector([0.98, 0.01, 0.01] if crop.mean() > 127 else [0.01, 0.98, 0.01])
            for crop in crops
        ]


def test_only_a_face_that_counts_toward_opening_the_door_is_a_fault(tmp_path: Path):
    folder = tmp_path / "people" / "without_mask"
    folder.mkdir(parents=True)
    for name, value in (("bright.png", 250), ("dark.png", 5)):
        cv2.imwrite(str(folder / name), np.full((120, 120, 3), value, np.uint8))
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("not a photo")
    policy = DecisionPolicy(Config().policy, "test")

    def count(detector):
        return unmasked_photos(detector, BoxCalibration(), ByBrightness(), policy, [folder], progress=False)

    # The dark photo's face is sure but keeps the door shut; only the bright one opens.
    assert count(WholeImage(0.99)) == {
        "photos": 2,
        "unreadable": 1,
        "with_face": 2,
        "opening": 1,
        "opening_photos": ["people/without_mask/bright.png"],
    }
    assert count(WholeImage(0.5))["opening"] == 0  # the detector unsure: no evidence
    assert count(NoFaces()) == {
        "photos": 2,
        "unreadable": 1,
        "with_face": 0,
        "opening": 0,
        "opening_photos": [],
    }


class NoFaces:
    def detect(self, image):
        return []


@pytest.mark.slow
def test_compare_reports_the_unmasked_photos_beside_the_scenes(tmp_path: Path):
    from maskgate.config import DetectorConfig
    from maskgate.training.detector_compare import compare

    bare = DATASETS / "folders" / "chandrikadeb7" / "without_mask" / "0_0_aidai_0014.jpg"
    if not (bare.is_file() and (DATASETS / "scenes" / "fmd").is_dir()):
        pytest.skip(f"shared datasets in {DATASETS} are not present")
    folder = tmp_path / "without_mask"
    folder.mkdir()
    shutil.copy(bare, folder / "bare.jpg")
    results = compare(
        {"stock": DetectorConfig()}, MODEL, "scenes/fmd", "test", None, DATASETS, False, [folder]
    )
    assert results["stock"]["bands"][">=60"]["ground_truth"]["with_mask"] > 0  # the scenes were run
    assert "clips" not in results["stock"]  # no clip folder given
    unmasked = results["stock"]["unmasked"]
    assert (unmasked["photos"], unmasked["with_face"], unmasked["opening"]) == (1, 1, 0)
