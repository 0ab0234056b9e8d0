"""``maskgate evaluate``: a model folder measured on labelled data, as the gate runs it.

- ``crops``: the labelled faces of any layout, cropped with the model's crop spec and classified
  by :class:`maskgate.gate.classifier.MaskClassifier` (the TFLite file via LiteRT);
- ``scenes``: VOC scenes end to end: the gate's detector finds the faces, the classifier labels
  them, and the result is matched to the annotations (detection recall and precision, AP@0.5
  per class, mAP@0.5, per-face accuracy), all by face size.

The JSON written by ``--json`` has the schema in docs/training.md (``schema`` = 1); tools
parse it, so fields are only ever added.
"""

from __future__ import annotations

import csv
import heapq
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from maskgate.config import DetectorConfig, PolicyConfig
from maskgate.core import LABELS, Classification, Face, utcnow
from maskgate.crop import BoxCalibration, CropSpec, crop_face, crop_faces
from maskgate.gate.detector import box_calibration
from maskgate.gate.policy import DecisionPolicy
from maskgate.modelcard import ModelCard, load_card
from maskgate.training import cropset
from maskgate.training.cropset import CropSet
from maskgate.training.datasets import DataSpec, Layout, SourceImage, SourceReport, scan
from maskgate.training.label_review import LabelReview
from maskgate.training.metrics import (
    BAND_NAMES,
    Detection,
    GroundTruth,
    SceneResult,
    crop_metrics_by_band,
    door_allows_by_band,
    missed_faces,
    scene_door,
    scene_metrics,
)
from maskgate.training.split import MANIFEST_FILE, split_images

if TYPE_CHECKING:
    from maskgate.gate.detector import FaceDetector

log = logging.getLogger(__name__)

SCHEMA = 1
BATCH = 64
ERRORS_NAME = "errors"  # crops: errors.csv and errors.png, the misclassified faces
MISSED_NAME = "missed"  # scenes: missed.csv and missed.png, the faces the detector did not find
ERRORS_SHOWN = 96  # faces on a sheet; the CSV lists every one


class EvaluationError(ValueError):
    """The evaluation asked for cannot be done (wrong layout, no manifest for a split, no data)."""


def door_policy(policy: PolicyConfig | None) -> DecisionPolicy:
    """The decision policy door counts are judged by: `policy`, by default the defaults."""
    return DecisionPolicy(policy or PolicyConfig(), "evaluate")


def _door_policy_json(decisions: DecisionPolicy) -> dict[str, object]:
    """The report's `door_policy`: what opens the door and how sure a label that opens must be."""
    return {
        "opens_for": [label.value for label in decisions.opening],
        "allow_confidence_floor": decisions.config.allow_confidence_floor,
    }


def _split_filter(model_dir: Path, split: str) -> set[tuple[str, str]] | None:
    """The (source, image path) pairs of `split` in the model's manifest; None for all images."""
    if split == "all":
        return None
    manifest = model_dir / MANIFEST_FILE
    if not manifest.is_file():
        raise EvaluationError(f"{model_dir}: no {MANIFEST_FILE}, so there is no {split!r} split to select")
    return split_images(manifest, [split])


def _model_json(model_dir: Path, card: ModelCard) -> dict[str, object]:
    return {"folder": str(model_dir), "version": card.version, "arch": card.arch, "sha256": card.sha256}


def classify_crops(classifier, crops: np.ndarray, progress: bool = False) -> np.ndarray:
    """Probabilities (N, labels) for `crops`, through the gate's classifier in batches."""
    rows = []
    for start in tqdm(range(0, len(crops), BATCH), desc="classify", disable=not progress, leave=False):
        for c in classifier.classify(list(crops[start : start + BATCH])):
            rows.append([c.probabilities[label] for label in LABELS])
    return np.asarray(rows, np.float32).reshape(-1, len(LABELS))


def split_crops(
    crop: CropSpec,
    specs: Sequence[DataSpec],
    keep: set[tuple[str, str]] | None,
    cache_dir: Path | None,
    detector: DetectorConfig | None = None,
    progress: bool = True,
    review: LabelReview | None = None,
) -> tuple[CropSet, list[SourceReport]]:
    """The crops of `specs` cut to `crop` (`photos` by the gate's `detector`), only of the images in
    `keep` ((source, path) pairs; None: all), labelled as `review` corrects them, and each source's
    report: with `keep`, of those images only (:func:`split_report`), as scenes mode counts."""
    detector_config = cropset.photo_detector_config(detector)
    sets, reports = [], []
    for spec in specs:
        crops, report, scanned = cropset.load_source(
            spec,
            crop,
            cache_dir,
            cropset.detector_factory(detector_config),
            cropset.detector_id(detector_config),
            progress,
            review,
        )
        if keep is not None:
            crops = crops.subset(np.asarray([(spec.name, i) in keep for i in crops.images], bool))
            report = split_report(spec, report, scanned, keep, crops, review)
        sets.append(crops)
        reports.append(report)
    return (CropSet.concat(sets) if sets else CropSet.empty(crop)), reports


def split_report(
    spec: DataSpec,
    report: SourceReport,
    scanned: Sequence[SourceImage],
    keep: set[tuple[str, str]],
    kept: CropSet,
    review: LabelReview | None = None,
) -> SourceReport:
    """`report` of the whole source `spec` (its `scanned` images) narrowed to the images in `keep`,
    whose crops are `kept`: images, faces, unreadable images, photos without a face, empty boxes and
    the label review's corrections count those images only. What scanning found in the source's
    files (unknown labels, annotations without image, bad annotations) is the whole source's, as in
    scenes mode."""
    images = [image for image in scanned if (spec.name, image.path) in keep]
    paths = {image.path for image in images}
    narrowed = SourceReport(
        source=report.source,
        layout=report.layout,
        unknown_labels=report.unknown_labels,
        missing_images=report.missing_images,
        bad_annotations=report.bad_annotations,
    )
    if review is not None:  # applied to these images only: their corrections, not the source's
        images = review.apply_counted(spec.name, images, narrowed, all_images=False)
    narrowed.unreadable = [path for path in report.unreadable if path in paths]
    narrowed.no_face = [path for path in report.no_face if path in paths]
    unreadable = set(narrowed.unreadable)
    read = [image for image in images if image.path not in unreadable]
    narrowed.images = len(read)
    narrowed.faces.update(LABELS[label].value for label in kept.labels)
    # Every face of an image read is cropped, or has no face found (photos), or an empty box.
    narrowed.empty_boxes = sum(len(image.faces) for image in read) - len(narrowed.no_face) - len(kept)
    return narrowed


def evaluate_crops(
    model_dir: Path,
    specs: Sequence[DataSpec],
    split: str,
    cache_dir: Path | None,
    progress: bool = True,
    detector: DetectorConfig | None = None,
    errors: Path | None = None,
    policy: PolicyConfig | None = None,
    review: LabelReview | None = None,
) -> dict[str, object]:
    """Classification metrics on labelled faces (as `review` corrects their labels; None: the
    sources' own); `photos` are cropped with the gate's `detector`.
    Each band also says what its faces would tell the door under `policy` (default: the defaults;
    :class:`DoorAllows`). With `errors`, the misclassified faces are written there for review
    (:func:`write_errors`)."""
    from maskgate.gate.classifier import MaskClassifier

    classifier = MaskClassifier(model_dir)
    card = classifier.card
    keep = _split_filter(model_dir, split)
    data, reports = split_crops(card.crop, specs, keep, cache_dir, detector, progress, review)
    if len(data) == 0:
        raise EvaluationError(
            f"no labelled faces to evaluate in {', '.join(map(str, specs))} (split {split})"
        )
    started = time.monotonic()
    probabilities = classify_crops(classifier, data.crops, progress)
    predicted = probabilities.argmax(axis=1)
    by_band = crop_metrics_by_band(data.labels, predicted, data.sides)
    decisions = door_policy(policy)
    opening = [LABELS.index(label) for label in decisions.opening]
    counts = [decisions.counts_to_open_alone(Classification.from_vector(row)) for row in probabilities]
    door = door_allows_by_band(data.labels, counts, data.sides, opening)
    if errors is not None:
        write_errors(errors, data, probabilities)
    return {
        "schema": SCHEMA,
        "mode": "crops",
        "created": utcnow().isoformat(timespec="seconds"),
        "model": _model_json(model_dir, card),
        "split": split,
        "data": [report.to_json() for report in reports],
        "detector": cropset.photo_detector_record(detector),  # what found the faces of photos
        "faces": len(data),
        "seconds": round(time.monotonic() - started, 2),
        "label_review": review.to_json() if review else None,
        "door_policy": _door_policy_json(decisions),
        "bands": {band: by_band[band].to_json() | {"door": door[band].to_json()} for band in BAND_NAMES},
    }


def _write_review(
    folder: Path, name: str, header: Sequence[str], rows: Sequence[Sequence[object]], crops, captions
) -> None:
    """``NAME.csv`` with every row and ``NAME.png``, a sheet of `crops` (the first rows' faces; no
    sheet when there are no rows: a sheet left by an earlier run would show faces now right)."""
    from maskgate.training.plots import face_sheet

    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{name}.csv").open("w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["rank", *header])
        writer.writerows([rank, *row] for rank, row in enumerate(rows, 1))
    sheet = folder / f"{name}.png"
    sheet.unlink(missing_ok=True)
    if len(rows):
        face_sheet(np.asarray(crops), captions, sheet)
    log.info("%d faces written to %s", len(rows), sheet.with_suffix(".csv"))


def write_errors(folder: Path, data: CropSet, probabilities: np.ndarray) -> int:
    """The faces of `data` that `probabilities` classify wrongly, for a person to review:
    ``errors.csv`` lists every one and ``errors.png`` shows the first ERRORS_SHOWN, ordered by the
    model's confidence, highest first: a confident error is as often a wrong label (or a crop that
    misses the face) as a wrong model. Returns how many faces were wrong."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != data.labels)
    wrong = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")]
    rows = [
        [data.sources[i], data.images[i], round(float(data.sides[i]), 1)]
        + [LABELS[data.labels[i]].value, LABELS[predicted[i]].value]
        + [f"{p:.4f}" for p in probabilities[i]]
        for i in wrong
    ]
    shown = wrong[:ERRORS_SHOWN]
    captions = [
        f"{rank}. {LABELS[data.labels[i]].value}, {data.sides[i]:.0f} px\n"
        f"-> {LABELS[predicted[i]].value} {probabilities[i, predicted[i]]:.2f}"
        for rank, i in enumerate(shown, 1)
    ]
    header = ["source", "image", "side_px", "label", "predicted"] + [f"p_{label}" for label in LABELS]
    _write_review(folder, ERRORS_NAME, header, rows, data.crops[shown], captions)
    return len(wrong)


@dataclass(frozen=True)
class MissedFace:
    """An annotated face the detector did not find (its drawn box, clipped to the image)."""

    source: str
    image: str
    truth: GroundTruth


class MissedFaces:
    """The faces a detector misses over a run, for :meth:`write`. Only the crops the sheet shows are
    kept (a min-heap of the largest faces so far): a large set's misses would not fit as crops."""

    def __init__(self, crop: CropSpec):
        self.crop = crop
        self.faces: list[MissedFace] = []
        self.crops: dict[int, np.ndarray] = {}  # index into faces -> crop, for the largest only
        self._largest: list[tuple[float, int]] = []  # heap of (side, index) of the faces in crops

    def add(self, source: str, image: str, rgb: np.ndarray, truths: Sequence[GroundTruth]) -> None:
        for truth in truths:
            side, index = truth.box.side, len(self.faces)
            self.faces.append(MissedFace(source, image, truth))
            if len(self._largest) == ERRORS_SHOWN:
                if side <= self._largest[0][0]:
                    continue
                del self.crops[heapq.heappop(self._largest)[1]]
            heapq.heappush(self._largest, (side, index))
            self.crops[index] = crop_face(rgb, truth.box, self.crop)  # the model's crop, no calibration

    def write(self, folder: Path) -> int:
        """``missed.csv`` (every face) and ``missed.png``, largest face first (the misses that
        matter at a door). Returns how many faces were missed."""
        # Among equal sides the faces holding a crop come first, so all the sheet shows have one.
        order = sorted(
            range(len(self.faces)), key=lambda i: (-self.faces[i].truth.box.side, i not in self.crops)
        )
        faces = [self.faces[i] for i in order]
        rows = [
            [m.source, m.image, round(m.truth.box.side, 1), m.truth.label.value]
            + [round(v, 1) for v in (m.truth.box.x1, m.truth.box.y1, m.truth.box.x2, m.truth.box.y2)]
            for m in faces
        ]
        shown = order[:ERRORS_SHOWN]
        captions = [
            f"{rank}. {m.truth.label.value}\n{m.truth.box.side:.0f} px"
            for rank, m in enumerate(faces[:ERRORS_SHOWN], 1)
        ]
        header = ["source", "image", "side_px", "label", "x1", "y1", "x2", "y2"]
        _write_review(folder, MISSED_NAME, header, rows, [self.crops[i] for i in shown], captions)
        return len(faces)


def evaluate_scenes(
    model_dir: Path,
    specs: Sequence[DataSpec],
    split: str,
    detector_config: DetectorConfig,
    progress: bool = True,
    detector: FaceDetector | None = None,
    extra_bands: Sequence[str] = (),
    errors: Path | None = None,
    review: LabelReview | None = None,
    policy: PolicyConfig | None = None,
) -> dict[str, object]:
    """End-to-end metrics on VOC scenes; `detector` defaults to the gate's own for `detector_config`.
    Each band also says what one frame of each scene would tell the door under `policy` (default:
    the defaults), detection by detection as the gate's policy judges it (:class:`SceneDoor`).

    `extra_bands` (">=60", ...) are reported after the standard ones. With `errors`, the annotated
    faces the detector missed are written there for review (:meth:`MissedFaces.write`). A `review`
    corrects the annotated labels; a face it excludes is no longer annotated, so a detection of it
    counts as a false positive, as for any face the annotators did not draw.
    """
    from maskgate.gate.classifier import MaskClassifier

    for spec in specs:
        if spec.layout is not Layout.VOC:
            raise EvaluationError(f"--mode scenes needs VOC scenes (images/ + annotations/), not {spec}")
    card = load_card(model_dir)
    classifier = MaskClassifier(model_dir)
    detector = detector or cropset.make_detector(detector_config)
    calibration = box_calibration(detector_config)
    keep = _split_filter(model_dir, split)
    decisions = door_policy(policy)
    results: list[SceneResult] = []
    missed = MissedFaces(card.crop)
    reports = []
    started = time.monotonic()
    for spec in specs:
        images, report = scan(spec)  # counts missing images, bad XML and unknown labels
        if review is not None:  # on the split's images only, as the report counts them
            images = [image for image in images if keep is None or (spec.name, image.path) in keep]
            images = review.apply_counted(spec.name, images, report, all_images=keep is None)
        for path, rgb, truth in labelled_scenes(spec, images, keep, report, progress):
            result = SceneResult(
                truth, _detect_and_classify(rgb, detector, calibration, classifier, decisions)
            )
            results.append(result)
            if errors is not None:
                missed.add(spec.name, path, rgb, missed_faces(result))
        reports.append(report)
    if not results:
        raise EvaluationError(f"no scenes to evaluate in {', '.join(map(str, specs))} (split {split})")
    if errors is not None:
        missed.write(errors)
    return {
        "schema": SCHEMA,
        "mode": "scenes",
        "created": utcnow().isoformat(timespec="seconds"),
        "model": _model_json(model_dir, card),
        "split": split,
        "label_review": review.to_json() if review else None,
        "detector": asdict(detector_config) | {"calibration": calibration.to_json()},
        "data": [report.to_json() for report in reports],
        "images": len(results),
        "seconds": round(time.monotonic() - started, 2),
        "door_policy": _door_policy_json(decisions)
        | {  # a scene's detections are also judged by their size and detector score
            "min_face_size": decisions.config.min_face_size,
            "min_detector_score": decisions.config.min_detector_score,
        },
        "bands": {
            band: scene_metrics(results, band).to_json()
            | {"door": scene_door(results, decisions.opening, band).to_json()}
            for band in (*BAND_NAMES, *extra_bands)
        },
    }


def labelled_scenes(
    spec: DataSpec,
    images: Sequence[SourceImage],
    keep: set[tuple[str, str]] | None = None,
    report: SourceReport | None = None,
    progress: bool = False,
) -> Iterator[tuple[str, np.ndarray, tuple[GroundTruth, ...]]]:
    """(path, RGB pixels, annotated faces) for each readable image of `spec` in `keep` (None: all).

    Boxes are clipped to the image; one that clipping leaves empty is dropped. With a `report`,
    unreadable images, empty boxes, images and faces used are counted in it.
    """
    wanted = [image for image in images if keep is None or (spec.name, image.path) in keep]
    for image in tqdm(wanted, desc=f"scenes {spec.name}", disable=not progress, leave=False):
        rgb = cropset.read_rgb(spec.path / image.path)
        if rgb is None:
            if report is not None:
                report.unreadable.append(image.path)
            continue
        height, width = rgb.shape[:2]
        clipped = (GroundTruth(f.box.clip(width, height), f.label) for f in image.faces if f.box is not None)
        truth = tuple(t for t in clipped if t.box.area >= 1)
        if report is not None:
            report.images += 1
            report.empty_boxes += len(image.faces) - len(truth)
            for t in truth:
                report.faces[t.label.value] += 1
        yield image.path, rgb, truth


def _detect_and_classify(
    rgb: np.ndarray, detector, calibration: BoxCalibration, classifier, policy: DecisionPolicy
) -> tuple[Detection, ...]:
    """The gate's view of one scene: detected faces with calibrated boxes, classified in one call,
    each marked where one frame of it would count toward opening the door under `policy`.

    The calibrated box is what is matched against the hand-drawn boxes; the crop is cut as the
    gate cuts it, around the face's `box_to_crop`; the policy judges the face as the gate's does.
    """
    return tuple(
        Detection(
            calibration.apply(face.box),
            face.score,
            tuple(c.probabilities[label] for label in LABELS),
            policy.counts_to_open(face, c),
        )
        for face, c in classify_faces(rgb, detector.detect(rgb), classifier, calibration)
    )


def classify_faces(
    image: np.ndarray, faces: Sequence[Face], classifier, calibration: BoxCalibration
) -> list[tuple[Face, Classification]]:
    """Each face of `image` with the classifier's verdict, in one call, cropped as the gate crops
    it (its `box_to_crop` through `calibration`); a face whose crop is empty is left out."""
    crops, cut = crop_faces(image, [calibration.apply(face.box_to_crop) for face in faces], classifier.crop)
    return list(zip([faces[i] for i in cut], classifier.classify(crops), strict=True))


def format_report(report: dict) -> str:
    """A readable table of an evaluation report (crops or scenes), one line per size band."""
    lines = [f"{report['mode']} evaluation of {report['model']['version']} (split {report['split']})"]
    for data in report["data"]:
        lines.append(f"  data {data['source']}: {data}")
    for band, m in report["bands"].items():
        if report["mode"] == "crops":
            per = "  ".join(
                f"{k} P {v['precision']:.3f} R {v['recall']:.3f} F1 {v['f1']:.3f} n={v['support']}"
                for k, v in m["per_class"].items()
            )
            door = m["door"]
            lines.append(
                f"  {band:>6}: n={m['count']:5d} acc {m['accuracy']:.4f} macro-F1 {m['macro_f1']:.4f} | {per}"
                f" | door: false allows {door['false_allows']} ({door['false_allow_rate']:.4f}), "
                f"kept out {door['kept_out']} ({door['kept_out_rate']:.4f})"
            )
        else:
            recall = " ".join(f"{k} {v:.3f}" for k, v in m["detection_recall"].items())
            ap = " ".join(f"{k} {v:.3f}" for k, v in m["ap50"].items())
            lines.append(
                f"  {band:>6}: gt {sum(m['ground_truth'].values()):5d} det {m['detections']:5d} "
                f"recall [{recall}] precision {m['detection_precision']['all']:.3f} "
                f"AP50 [{ap}] mAP50 {m['map50']:.3f} "
                f"face-acc {m['face_accuracy']:.3f} (n={m['matched_faces']})"
                f" | door: false allows {m['door']['false_allows']}, "
                f"on no face {m['door']['no_face_allows']}, kept out {m['door']['kept_out']}"
            )
    return "\n".join(lines)


def write_json(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
