"""Classification and detection metrics, in plain numpy so that they can be checked by hand.

Conventions (documented in docs/training.md, relied on by tools that parse the JSON):

- a class's precision is 0 when nothing was predicted as it, its recall 0 when it has no
  support; macro-F1 averages F1 over the classes that occur in the truth or the predictions;
- a face's size is the longer side of its box in the original image (``Box.side``); bands are
  ``maskgate.const.SIZE_BANDS`` plus ``>=32`` (the band the targets are set on);
- detection matching follows PASCAL VOC: detections in decreasing score order, each taken by
  the ground-truth box it overlaps most; IoU >= 0.5 and that box not yet taken makes it a true
  positive, otherwise a false positive. In a size band, ground truth outside the band is
  ignored (a detection taking it counts neither way) and so is an unmatched detection whose
  own size is outside the band (COCO's area ranges);
- AP is VOC's all-point interpolation: the area under the precision envelope.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from maskgate.const import SIZE_BANDS
from maskgate.core import LABELS, Box, Label

ALL = "all"
GATE_BAND = ">=32"  # faces a gate actually sees are 100-250 px; the targets are set on >= 32
BAND_NAMES: tuple[str, ...] = (ALL, *(name for _, _, name in SIZE_BANDS), GATE_BAND)
IOU_THRESHOLD = 0.5


def in_band(side: float, band: str) -> bool:
    """Whether a face of `side` px is in `band`: "all", a named size band, or ">=N" (N px and more;
    the gate band is ">=32")."""
    if band == ALL:
        return True
    for low, high, name in SIZE_BANDS:
        if name == band:
            return low <= side < high
    if band.startswith(">="):
        try:
            return side >= float(band[2:])
        except ValueError:
            pass
    raise ValueError(f"unknown size band {band!r}")


def band_mask(sides: np.ndarray, band: str) -> np.ndarray:
    return np.fromiter((in_band(float(s), band) for s in sides), bool, count=len(sides))


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else 0.0


# -- classification --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int

    def to_json(self) -> dict[str, float | int]:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1, "support": self.support}


@dataclass(frozen=True)
class CropMetrics:
    """Accuracy, macro-F1, per-class scores and the confusion matrix (rows true, columns predicted)."""

    count: int
    accuracy: float
    macro_f1: float
    per_class: dict[Label, ClassScores]
    confusion: np.ndarray

    def to_json(self) -> dict[str, object]:
        return {
            "count": self.count,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "per_class": {label.value: scores.to_json() for label, scores in self.per_class.items()},
            "confusion": self.confusion.astype(int).tolist(),
        }


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n: int = len(LABELS)) -> np.ndarray:
    matrix = np.zeros((n, n), np.int64)
    np.add.at(matrix, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return matrix


def crop_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> CropMetrics:
    matrix = confusion_matrix(y_true, y_pred)
    per_class: dict[Label, ClassScores] = {}
    f1s = []
    for i, label in enumerate(LABELS):
        tp, predicted, support = matrix[i, i], matrix[:, i].sum(), matrix[i, :].sum()
        precision, recall = _ratio(tp, predicted), _ratio(tp, support)
        f1 = _ratio(2 * precision * recall, precision + recall)
        per_class[label] = ClassScores(precision, recall, f1, int(support))
        if support or predicted:
            f1s.append(f1)
    total = int(matrix.sum())
    return CropMetrics(
        count=total,
        accuracy=_ratio(np.trace(matrix), total),
        macro_f1=float(np.mean(f1s)) if f1s else 0.0,
        per_class=per_class,
        confusion=matrix,
    )


def crop_metrics_by_band(y_true: np.ndarray, y_pred: np.ndarray, sides: np.ndarray) -> dict[str, CropMetrics]:
    result = {}
    for band in BAND_NAMES:
        mask = band_mask(sides, band)
        result[band] = crop_metrics(y_true[mask], y_pred[mask])
    return result


@dataclass(frozen=True)
class DoorAllows:
    """What single faces would tell the door: whether each counts toward opening it, as the gate's
    policy judges it (:class:`maskgate.gate.policy.DecisionPolicy`). Opening for a face whose true
    label keeps the door shut is the worst error a gate makes; accuracy does not show it."""

    shut_faces: int  # faces whose true label keeps the door shut
    false_allows: int  # ... that would count toward opening it
    open_faces: int  # faces whose true label opens the door
    kept_out: int  # ... that would not count toward opening it (too unsure, or another label)

    def to_json(self) -> dict[str, float | int]:
        return {
            "false_allows": self.false_allows,
            "false_allow_rate": _ratio(self.false_allows, self.shut_faces),
            "kept_out": self.kept_out,
            "kept_out_rate": _ratio(self.kept_out, self.open_faces),
        }


def door_allows(y_true: np.ndarray, counts: np.ndarray, opening: Collection[int]) -> DoorAllows:
    """:class:`DoorAllows` of faces labelled `y_true` (label indices), where `counts` says of each
    whether it would count toward opening the door and the labels `opening` should open it."""
    counts = np.asarray(counts, bool)
    should = np.isin(y_true, list(opening))
    return DoorAllows(
        shut_faces=int((~should).sum()),
        false_allows=int((counts & ~should).sum()),
        open_faces=int(should.sum()),
        kept_out=int((should & ~counts).sum()),
    )


def door_allows_by_band(
    y_true: np.ndarray, counts: Sequence[bool] | np.ndarray, sides: np.ndarray, opening: Collection[int]
) -> dict[str, DoorAllows]:
    counts = np.asarray(counts, bool)
    result = {}
    for band in BAND_NAMES:
        mask = band_mask(sides, band)
        result[band] = door_allows(y_true[mask], counts[mask], opening)
    return result


# -- detection ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detection:
    """One detected face with the detector's score and the classifier's probabilities (LABELS order)."""

    box: Box
    score: float
    probabilities: tuple[float, ...]
    counts_to_open: bool = False  # one frame of it would count toward opening the door (the policy)

    @property
    def label(self) -> Label:
        return LABELS[int(np.argmax(self.probabilities))]


@dataclass(frozen=True)
class GroundTruth:
    box: Box
    label: Label


@dataclass(frozen=True)
class SceneResult:
    """The ground truth and the detections of one image."""

    truth: tuple[GroundTruth, ...]
    detections: tuple[Detection, ...]


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point interpolated average precision (recall ascending, as accumulated)."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the precision envelope
    changes = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


@dataclass(frozen=True)
class _Match:
    truth: int | None  # the ground truth the detection overlaps most at IoU >= 0.5, if any
    taken: bool  # whether this detection took it; False for a duplicate of a better detection


def _match_image(truth: Sequence[GroundTruth], boxes: Sequence[Box], label: Label | None) -> list[_Match]:
    """VOC matching of detections (in decreasing score order); `label` restricts the truth to a class."""
    candidates = [i for i, t in enumerate(truth) if label is None or t.label is label]
    taken: set[int] = set()
    result = []
    for box in boxes:
        best, best_iou = None, 0.0
        for i in candidates:
            iou = box.iou(truth[i].box)
            if iou > best_iou:
                best, best_iou = i, iou
        if best is None or best_iou < IOU_THRESHOLD:
            result.append(_Match(None, False))
        else:
            result.append(_Match(best, best not in taken))
            taken.add(best)
    return result


def _matched_detections(result: SceneResult) -> list[tuple[Detection, _Match]]:
    """Each detection of one image, best score first, with the face it takes under VOC matching."""
    dets = sorted(result.detections, key=lambda d: -d.score)
    return list(zip(dets, _match_image(result.truth, [d.box for d in dets], None), strict=True))


def missed_faces(result: SceneResult) -> list[GroundTruth]:
    """The annotated faces of one image that no detection takes under VOC matching (each detection,
    best score first, takes the free face it overlaps most at IoU >= 0.5), whatever its label: the
    detector's misses, as :func:`scene_metrics` counts them for its recall."""
    found = {match.truth for _, match in _matched_detections(result) if match.taken}
    return [t for i, t in enumerate(result.truth) if i not in found]


def _outcome(match: _Match, truth: Sequence[GroundTruth], box: Box, band: str) -> str:
    """'tp', 'fp' or 'ignore' for one detection in `band`."""
    if match.truth is None:
        return "fp" if in_band(box.side, band) else "ignore"
    if not in_band(truth[match.truth].box.side, band):
        return "ignore"
    return "tp" if match.taken else "fp"


def average_precision(results: Sequence[SceneResult], label: Label, band: str = ALL) -> tuple[float, int]:
    """AP@0.5 of `label` (score = detector score x class probability) and its number of positives."""
    index = LABELS.index(label)
    scored: list[tuple[float, str]] = []
    positives = 0
    for result in results:
        positives += sum(1 for t in result.truth if t.label is label and in_band(t.box.side, band))
        dets = sorted(
            ((d.score * d.probabilities[index], d.box) for d in result.detections), key=lambda x: -x[0]
        )
        matches = _match_image(result.truth, [box for _, box in dets], label)
        for (score, box), match in zip(dets, matches, strict=True):
            outcome = _outcome(match, result.truth, box, band)
            if outcome != "ignore":
                scored.append((score, outcome))
    if positives == 0:
        return 0.0, 0
    scored.sort(key=lambda x: -x[0])
    tp = np.cumsum([outcome == "tp" for _, outcome in scored], dtype=float)
    fp = np.cumsum([outcome == "fp" for _, outcome in scored], dtype=float)
    if not scored:
        return 0.0, positives
    recall = tp / positives
    precision = tp / np.maximum(tp + fp, np.finfo(float).eps)
    return voc_ap(recall, precision), positives


@dataclass(frozen=True)
class BandSceneMetrics:
    truth: dict[Label, int]
    detections: int
    recall: dict[Label, float]  # ground-truth faces of the class found by the detector
    recall_all: float
    precision: dict[Label, float]  # detections classified as the class that are that class's faces
    precision_all: float  # detections that are faces at all
    ap50: dict[Label, float]
    map50: float
    matched: int
    face_accuracy: float
    confusion: np.ndarray

    def to_json(self) -> dict[str, object]:
        return {
            "ground_truth": {label.value: n for label, n in self.truth.items()},
            "detections": self.detections,
            "detection_recall": {**_by_label(self.recall), ALL: self.recall_all},
            "detection_precision": {**_by_label(self.precision), ALL: self.precision_all},
            "ap50": {label.value: ap for label, ap in self.ap50.items()},
            "map50": self.map50,
            "matched_faces": self.matched,
            "face_accuracy": self.face_accuracy,
            "confusion": self.confusion.astype(int).tolist(),
        }


@dataclass(frozen=True)
class SceneDoor:
    """What one frame of each scene would tell the door, face by face (:class:`DoorAllows` for the
    annotated faces; a face counts as let in when any detection of it counts toward opening), and
    the detections on no annotated face that would count toward opening."""

    faces: DoorAllows
    no_face_allows: int

    def to_json(self) -> dict[str, float | int]:
        return self.faces.to_json() | {"no_face_allows": self.no_face_allows}


def scene_door(results: Sequence[SceneResult], opening: Collection[Label], band: str = ALL) -> SceneDoor:
    """:class:`SceneDoor` of the faces in `band` (and the faceless detections of its size), where
    the labels `opening` open the door; a missed face is kept out."""
    shut = let_in = open_faces = kept_out = no_face = 0
    for result in results:
        counted: set[int] = set()
        for det, match in _matched_detections(result):
            if not det.counts_to_open:
                continue
            if match.truth is None:
                no_face += in_band(det.box.side, band)
            else:
                counted.add(match.truth)
        for i, face in enumerate(result.truth):
            if not in_band(face.box.side, band):
                continue
            if face.label in opening:
                open_faces += 1
                kept_out += i not in counted
            else:
                shut += 1
                let_in += i in counted
    return SceneDoor(DoorAllows(shut, let_in, open_faces, kept_out), no_face)


def _by_label(values: dict[Label, float]) -> dict[str, float]:
    return {label.value: value for label, value in values.items()}


def scene_metrics(results: Sequence[SceneResult], band: str = ALL) -> BandSceneMetrics:
    truth_count = dict.fromkeys(LABELS, 0)
    found = dict.fromkeys(LABELS, 0)
    predicted = dict.fromkeys(LABELS, 0)
    correct_pred = dict.fromkeys(LABELS, 0)
    detections = true_dets = 0
    pairs_true: list[int] = []
    pairs_pred: list[int] = []
    for result in results:
        for t in result.truth:
            if in_band(t.box.side, band):
                truth_count[t.label] += 1
        for det, match in _matched_detections(result):
            outcome = _outcome(match, result.truth, det.box, band)
            if outcome == "ignore":
                continue
            detections += 1
            predicted[det.label] += 1
            if outcome == "tp":
                assert match.truth is not None
                gt = result.truth[match.truth]
                true_dets += 1
                found[gt.label] += 1
                correct_pred[det.label] += gt.label is det.label
                pairs_true.append(LABELS.index(gt.label))
                pairs_pred.append(LABELS.index(det.label))
    ap = {label: average_precision(results, label, band) for label in LABELS}
    present = [value for value, positives in ap.values() if positives > 0]
    confusion = confusion_matrix(np.asarray(pairs_true, int), np.asarray(pairs_pred, int))
    return BandSceneMetrics(
        truth=truth_count,
        detections=detections,
        recall={label: _ratio(found[label], truth_count[label]) for label in LABELS},
        recall_all=_ratio(sum(found.values()), sum(truth_count.values())),
        precision={label: _ratio(correct_pred[label], predicted[label]) for label in LABELS},
        precision_all=_ratio(true_dets, detections),
        ap50={label: value for label, (value, _) in ap.items()},
        map50=float(np.mean(present)) if present else 0.0,
        matched=len(pairs_true),
        face_accuracy=_ratio(int(np.trace(confusion)), len(pairs_true)),
        confusion=confusion,
    )
