"""Box calibration of a detector (issue #9): how its boxes map to the boxes people draw.

MTCNN's boxes sit higher and tighter than hand-drawn face boxes, and the classifier learned
from hand-drawn boxes. `maskgate calibrate-detector` runs a detector on the *train* split of
VOC scenes, pairs each annotated face with the detection that overlaps it most, fits a
:class:`~maskgate.crop.BoxCalibration` (medians of shift and scale), measures on the
*validation* split how much closer the calibrated boxes come to the drawn ones, and with
`write_calibration` stores it in the detector folder's card, where the gate (its crop call),
``evaluate`` and training read it (:func:`maskgate.gate.detector.box_calibration`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from maskgate.config import DetectorConfig
from maskgate.core import LABELS, Box, Label, utcnow
from maskgate.crop import BoxCalibration
from maskgate.gate.detector import CALIBRATION_KEY, FaceDetector, read_detector_card
from maskgate.training.datasets import DataSpec, scan
from maskgate.training.split import split_images

DEFAULT_MIN_IOU = 0.3  # a detection this close to a drawn box is that face (VOC counts from 0.5)
FIT_MIN_FACE = 20  # detector minimum face while fitting: more pairs; the mapping is scale-free


class CalibrationError(ValueError):
    """Nothing to fit a calibration on (no scenes, no detected face near a drawn one)."""


@dataclass(frozen=True, slots=True)
class BoxPair:
    """One face: the detector's box, the hand-drawn box and the face's label."""

    detected: Box
    drawn: Box
    label: Label


def box_pairs(
    detector: FaceDetector,
    spec: DataSpec,
    keep: set[tuple[str, str]],
    min_iou: float = DEFAULT_MIN_IOU,
    progress: bool = False,
) -> list[BoxPair]:
    """Pairs of (detected, drawn) boxes on the scenes of `spec` in `keep`.

    Per image, the most overlapping (detection, drawn face) pairs are taken first and each box
    is used once, so a crowd's neighbouring faces do not share one detection.
    """
    from maskgate.training.evaluate import labelled_scenes

    images, _ = scan(spec)
    pairs = []
    for _, rgb, truth in labelled_scenes(spec, images, keep, progress=progress):
        boxes = [face.box for face in detector.detect(rgb)]
        overlaps = sorted(
            ((box.iou(t.box), i, j) for i, box in enumerate(boxes) for j, t in enumerate(truth)),
            reverse=True,
        )
        used_boxes, used_truth = set(), set()
        for iou, i, j in overlaps:
            if iou < min_iou:
                break
            if i in used_boxes or j in used_truth:
                continue
            used_boxes.add(i)
            used_truth.add(j)
            pairs.append(BoxPair(boxes[i], truth[j].box, truth[j].label))
    return pairs


def fit(pairs: Sequence[BoxPair]) -> BoxCalibration:
    if not pairs:
        raise CalibrationError("no detected face overlaps a drawn one: nothing to fit a calibration on")
    try:
        return BoxCalibration.fit([p.detected for p in pairs], [p.drawn for p in pairs])
    except ValueError as exc:  # out of range: the pairs are not the same faces, or too few
        raise CalibrationError(f"no usable calibration from {len(pairs)} faces: {exc}") from None


def box_effect(pairs: Sequence[BoxPair], calibration: BoxCalibration) -> dict[str, dict[str, float]]:
    """Per label and for all faces: how close raw and calibrated boxes are to the drawn ones
    (mean IoU, and the share at IoU >= 0.5, the VOC criterion the scene metrics use)."""
    out = {}
    for name in ("all", *(label.value for label in LABELS)):
        chosen = [p for p in pairs if name == "all" or p.label.value == name]
        raw = np.asarray([p.detected.iou(p.drawn) for p in chosen])
        fitted = np.asarray([calibration.apply(p.detected).iou(p.drawn) for p in chosen])
        out[name] = {
            "faces": len(chosen),
            "mean_iou_raw": round(float(raw.mean()), 4) if len(chosen) else 0.0,
            "mean_iou_calibrated": round(float(fitted.mean()), 4) if len(chosen) else 0.0,
            "iou50_raw": round(float((raw >= 0.5).mean()), 4) if len(chosen) else 0.0,
            "iou50_calibrated": round(float((fitted >= 0.5).mean()), 4) if len(chosen) else 0.0,
        }
    return out


def calibrate(
    config: DetectorConfig,
    spec: DataSpec,
    manifest: Path,
    min_iou: float = DEFAULT_MIN_IOU,
    progress: bool = True,
    detector: FaceDetector | None = None,
    max_scenes: int | None = None,
) -> tuple[BoxCalibration, dict]:
    """Fit on the train split of `manifest`, measure on its val split; the test split is not read.

    Returns the calibration and what to store beside it (data, settings, pairs, val effect).
    `max_scenes` limits the scenes of each split (smoke runs).
    """
    from maskgate.training.cropset import make_detector

    # One detector's own raw boxes: beside the stock nets (`with_stock`) the boxes would mix two
    # conventions, and the fit is written into the folder of the nets it describes.
    raw_config = replace(
        config, box_calibration=False, with_stock=False, min_face_size=min(config.min_face_size, FIT_MIN_FACE)
    )
    detector = detector or make_detector(raw_config)
    train_images, val_images = (
        set(sorted(split_images(manifest, [split]))[:max_scenes]) for split in ("train", "val")
    )
    train = box_pairs(detector, spec, train_images, min_iou, progress)
    calibration = fit(train)
    val = box_pairs(detector, spec, val_images, min_iou, progress)
    fitted = {
        "created": utcnow().isoformat(timespec="seconds"),
        "data": spec.name,
        "manifest": str(manifest),
        "train_pairs": len(train),
        "min_iou": min_iou,
        "detector": asdict(raw_config),
        "val_effect": box_effect(val, calibration),
    }
    return calibration, fitted


def write_calibration(folder: Path, calibration: BoxCalibration, fitted: dict) -> None:
    """Store `calibration` (and how it was fitted) in `folder`'s card.json."""
    card = read_detector_card(folder)
    card[CALIBRATION_KEY] = calibration.to_json() | {"fitted": fitted}
    try:
        (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    except OSError as exc:
        raise CalibrationError(f"cannot write {folder / 'card.json'}: {exc}") from None


def format_effect(calibration: BoxCalibration, fitted: dict) -> str:
    c = calibration
    lines = [
        f"box calibration from {fitted['train_pairs']} train faces of {fitted['data']}: centre "
        f"{c.dx:+.3f} x width, {c.dy:+.3f} x height; "
        f"width x{c.width_scale:.3f}, height x{c.height_scale:.3f}",
        "validation split     faces  mean IoU raw -> calibrated   IoU>=0.5 raw -> calibrated",
    ]
    for name, e in fitted["val_effect"].items():
        lines.append(
            f"  {name:<16} {e['faces']:7d}  {e['mean_iou_raw']:12.3f} -> {e['mean_iou_calibrated']:.3f}"
            f"   {e['iou50_raw']:16.3f} -> {e['iou50_calibrated']:.3f}"
        )
    return "\n".join(lines)
