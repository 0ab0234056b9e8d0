"""Box calibration: pairing detected with drawn boxes, its effect, and `maskgate calibrate-detector`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from maskgate.cli import main
from maskgate.config import DetectorConfig
from maskgate.core import Box, Face, Label
from maskgate.crop import BoxCalibration
from maskgate.gate.detector import DEFAULT_DETECTOR_DIR, box_calibration
from maskgate.training.datasets import DataSpec, scan
from maskgate.training.detector_calibrate import (
    BoxPair,
    CalibrationError,
    box_effect,
    box_pairs,
    calibrate,
    fit,
    write_calibration,
)
from maskgate.training.split import ManifestRow, Split, write_manifest
from tests.training.test_datasets import voc_xml


class FixedDetector:
    """Returns the same boxes for every image."""

    def __init__(self, boxes: list[Box]):
        self.boxes = boxes

    def detect(self, image: np.ndarray) -> list[Face]:
        return [Face(box, 0.99) for box in self.boxes]


def blank_scene(root: Path, faces: list[tuple[str, tuple[float, float, float, float]]]) -> DataSpec:
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    cv2.imwrite(str(root / "images" / "a.jpg"), np.full((200, 300, 3), 128, np.uint8))
    (root / "annotations" / "a.xml").write_text(voc_xml("a.jpg", faces))
    return DataSpec.parse(str(root))


def test_pairs_take_the_closest_boxes_first_and_use_each_box_once(tmp_path: Path):
    # Two faces side by side. The first detection overlaps the first face most (IoU 0.6) but the
    # second detection is a near-copy of it (0.95) and takes it; the first detection is then
    # paired with the second face (IoU 1/3); the third detection overlaps nothing.
    faces = [("with_mask", (10, 10, 50, 50)), ("without_mask", (40, 10, 80, 50))]
    spec = blank_scene(tmp_path / "voc", faces)
    detections = [Box(20, 10, 60, 50), Box(11, 10, 51, 50), Box(200, 100, 240, 140)]
    pairs = box_pairs(FixedDetector(detections), spec, {(spec.name, "images/a.jpg")})
    assert [(p.detected, p.drawn, p.label) for p in pairs] == [
        (Box(11, 10, 51, 50), Box(10, 10, 50, 50), Label.WITH_MASK),
        (Box(20, 10, 60, 50), Box(40, 10, 80, 50), Label.WITHOUT_MASK),  # IoU 1/3 >= 0.3
    ]
    assert box_pairs(FixedDetector(detections), spec, {(spec.name, "images/a.jpg")}, min_iou=0.5) == pairs[:1]
    assert box_pairs(FixedDetector(detections), spec, set()) == []  # not in the split: not read


def test_box_effect_reports_raw_and_calibrated_closeness():
    drawn = Box(0, 10, 40, 50)
    pair = BoxPair(Box(0, 0, 40, 40), drawn, Label.WITH_MASK)  # 10 px too high: IoU 30/50 = 0.6
    off = BoxPair(Box(0, 0, 40, 40), Box(0, 30, 40, 70), Label.WITHOUT_MASK)  # IoU 10/70
    effect = box_effect([pair, off], BoxCalibration(dy=0.25))  # moves boxes 10 px down
    assert effect["with_mask"] == {
        "faces": 1,
        "mean_iou_raw": 0.6,
        "mean_iou_calibrated": 1.0,
        "iou50_raw": 1.0,
        "iou50_calibrated": 1.0,
    }
    assert effect["without_mask"]["mean_iou_raw"] == pytest.approx(1 / 7, abs=1e-4)
    assert effect["without_mask"]["mean_iou_calibrated"] == pytest.approx(20 / 60, abs=1e-4)
    assert effect["all"]["faces"] == 2 and effect["all"]["iou50_calibrated"] == 0.5
    assert effect["improper_mask"]["faces"] == 0


def test_fitting_nothing_or_nonsense_is_a_clear_error():
    with pytest.raises(CalibrationError, match="nothing to fit"):
        fit([])
    # Detections paired with faces far below them: no calibration, a clear error.
    far = [BoxPair(Box(0, 0, 10, 10), Box(0, 40, 10, 50), Label.WITH_MASK)] * 3
    with pytest.raises(CalibrationError, match="no usable calibration from 3 faces"):
        fit(far)


def small_manifest(spec: DataSpec, path: Path, train: int, val: int) -> Path:
    images, _ = scan(spec)
    rows = [
        ManifestRow(spec.name, image.path, "-", "", Split.TRAIN if i < train else Split.VAL)
        for i, image in enumerate(images[: train + val])
    ]
    write_manifest(path, rows)
    return path


def test_a_folder_beside_the_stock_nets_is_calibrated_on_its_own_boxes(tmp_path: Path, monkeypatch):
    """With `detector.with_stock` set, the fit must still see only the folder's nets: the pair's
    boxes mix two conventions, and the calibration is written into the folder."""
    from maskgate.training import cropset

    spec = blank_scene(tmp_path / "scenes", [("with_mask", (100, 50, 160, 120))])
    manifest = small_manifest(spec, tmp_path / "manifest.csv.gz", train=1, val=0)
    built: list[DetectorConfig] = []
    detector = FixedDetector([Box(102, 45, 158, 110)])
    monkeypatch.setattr(cropset, "make_detector", lambda config: built.append(config) or detector)
    paired = DetectorConfig(model=str(tmp_path / "det"), with_stock=True, box_calibration=True)
    calibration, fitted = calibrate(paired, spec, manifest, progress=False)
    assert fitted["train_pairs"] == 1 and calibration.dy > 0  # the folder's box, moved down to the drawn one
    assert len(built) == 1 and not built[0].with_stock and not built[0].box_calibration
    assert built[0].model == paired.model


@pytest.mark.slow
def test_calibration_learned_on_real_scenes_brings_boxes_closer(datasets: Path, tmp_path: Path):
    """On 40 fmd scenes the stock detector's boxes sit high; the calibration fitted on 30 of them
    moves them down and brings them closer to the drawn boxes of the other 10."""
    spec = DataSpec.parse("scenes/fmd", datasets)
    manifest = small_manifest(spec, tmp_path / "manifest.csv.gz", train=30, val=10)
    calibration, fitted = calibrate(DetectorConfig(), spec, manifest, progress=False)
    assert fitted["train_pairs"] >= 30 and calibration.dy > 0.05
    val = fitted["val_effect"]["all"]
    assert val["faces"] >= 10 and val["mean_iou_calibrated"] > val["mean_iou_raw"] + 0.05


@pytest.mark.slow
def test_calibrate_detector_writes_the_card_the_gate_reads(datasets: Path, tmp_path: Path, capsys):
    folder = tmp_path / "det"
    shutil.copytree(DEFAULT_DETECTOR_DIR, folder)
    spec = DataSpec.parse("scenes/fmd", datasets)
    manifest = small_manifest(spec, tmp_path / "manifest.csv.gz", train=12, val=4)
    argv = ["calibrate-detector", "--detector-model", str(folder), "--manifest", str(manifest), "--quiet"]
    assert main(argv) == 0
    assert json.loads((folder / "card.json").read_text()) == json.loads(
        (DEFAULT_DETECTOR_DIR / "card.json").read_text()
    )  # without --write nothing changes
    assert main([*argv, "--write"]) == 0
    out = capsys.readouterr().out
    assert "mean IoU raw -> calibrated" in out and "wrote the calibration" in out
    card = json.loads((folder / "card.json").read_text())
    assert card["box_calibration"]["fitted"]["train_pairs"] > 0
    assert card["box_calibration"]["fitted"]["manifest"] == str(manifest)
    written = box_calibration(DetectorConfig(model=str(folder), box_calibration=True))
    assert written == BoxCalibration.from_json(card["box_calibration"]) and written.dy > 0


def test_calibrate_detector_without_a_manifest_is_a_usage_error(tmp_path: Path, capsys):
    assert main(["calibrate-detector", "--manifest", str(tmp_path / "none.csv.gz")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_train_with_an_unusable_detector_card_names_the_file(tmp_path: Path, monkeypatch, capsys):
    """Photos are cropped by the configured detector; a broken calibration in its card is a clear
    error before any training, not a traceback."""
    folder = tmp_path / "det"
    shutil.copytree(DEFAULT_DETECTOR_DIR, folder)
    card = json.loads((folder / "card.json").read_text())
    card["box_calibration"]["dx"] = 9
    (folder / "card.json").write_text(json.dumps(card))
    faces = tmp_path / "faces" / "with_mask"
    faces.mkdir(parents=True)
    cv2.imwrite(str(faces / "a.jpg"), np.full((64, 64, 3), 128, np.uint8))
    monkeypatch.setenv("MASKGATE_DETECTOR__MODEL", str(folder))
    monkeypatch.setenv("MASKGATE_DETECTOR__BOX_CALIBRATION", "true")
    code = main(["train", "--data", str(tmp_path / "faces"), "--out", str(tmp_path / "m"), "--quiet"])
    assert code == 1
    assert "card.json: box_calibration" in capsys.readouterr().err and not (tmp_path / "m").exists()


def test_a_card_that_cannot_be_written_is_a_clear_error(tmp_path: Path, monkeypatch):
    folder = tmp_path / "det"
    shutil.copytree(DEFAULT_DETECTOR_DIR, folder)

    def read_only(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_text", read_only)  # as a package installed read-only
    with pytest.raises(CalibrationError, match=r"cannot write .*card\.json.*Permission denied"):
        write_calibration(folder, BoxCalibration(dy=0.1), {})
