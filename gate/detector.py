"""Face detection behind a small interface; the reference implementation is the `mtcnn` package.

Known trap (DESIGN.md): `mtcnn` 1.0 sizes its image pyramid from the image alone and then
starts it at 12 / min_face_size, so with a minimum face size above about 21 on 640x480 the last
levels shrink below PNet's 12x12 window; the convolution fails inside and the package returns no
faces at all (older Keras; Keras 3.15 raises the convolution's error instead).
:func:`scale_pyramid` computes the pyramid correctly (every level at least 12 px) and
:class:`MtcnnDetector` runs the package with it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from maskgate.config import DetectorConfig
from maskgate.core import Box, Face
from maskgate.crop import BoxCalibration
from maskgate.modelcard import ModelCard, ModelFileError

log = logging.getLogger(__name__)

PNET_WINDOW = 12  # PNet's receptive field: no pyramid level may be smaller
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
DEFAULT_DETECTOR_DIR = Path(__file__).resolve().parent / "assets" / "mtcnn-litert"  # the stock weights
CALIBRATION_KEY = "box_calibration"  # in a detector folder's card.json


class InvalidFrameError(ValueError):
    """An image the detector cannot use (wrong shape or type, empty)."""


class FaceDetector(Protocol):
    """Finds faces in an RGB uint8 image (H, W, 3); boxes and landmarks in that image's pixels."""

    def detect(self, image: np.ndarray) -> list[Face]: ...


def check_frame(image: np.ndarray) -> None:
    """Raise :class:`InvalidFrameError` unless `image` is a non-empty RGB uint8 array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise InvalidFrameError(f"expected a uint8 numpy image, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < PNET_WINDOW:
        raise InvalidFrameError(f"expected an RGB image of at least 12x12, got shape {image.shape}")


def scale_pyramid(width: int, height: int, min_face_size: int, scale_factor: float) -> list[float]:
    """Scales at which PNet's 12 px window matches faces from `min_face_size` up to the whole image."""
    if not 0 < scale_factor < 1:
        raise ValueError(f"scale_factor must be between 0 and 1, got {scale_factor}")
    scale = PNET_WINDOW / max(min_face_size, 1)
    scales = []
    while min(width, height) * scale >= PNET_WINDOW:
        scales.append(scale)
        scale *= scale_factor
    return scales


def resize_to_width(image: np.ndarray, width: int) -> tuple[np.ndarray, float]:
    """`image` scaled down to `width` (never up) and the factor applied."""
    if image.shape[1] <= width:
        return image, 1.0
    factor = width / image.shape[1]
    size = (width, max(1, round(image.shape[0] * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), factor


class MtcnnDetector:
    """The `mtcnn` package (TensorFlow) with a correct image pyramid, at a configurable working width."""

    def __init__(self, config: DetectorConfig | None = None):
        from mtcnn import MTCNN  # imports TensorFlow: only when this detector is used

        _fix_mtcnn_pyramid()
        self.config = config or DetectorConfig()
        self._mtcnn = MTCNN(stages=_stages(self.config.model), device="CPU:0")
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray) -> list[Face]:
        check_frame(image)
        small, factor = resize_to_width(image, self.config.working_width)
        with self._lock:
            found = self._mtcnn.detect_faces(
                small,
                min_face_size=self.config.min_face_size,
                scale_factor=self.config.scale_factor,
                threshold_pnet=self.config.thresholds[0],
                threshold_rnet=self.config.thresholds[1],
                threshold_onet=self.config.thresholds[2],
                box_format="xyxy",
            )
        return [_face(item, 1 / factor) for item in found]


def _stages(model: str) -> str | list:
    """The package's stock stages, or for a trained detector folder its three nets' Keras weights.

    `maskgate train-detector` writes them in the package's own format (`{p,r,o}net.joblib`), so
    the package's stages load them as they load their stock weights.
    """
    if not model:
        return "face_and_landmarks_detection"
    from pathlib import Path

    from mtcnn.stages import StageONet, StagePNet, StageRNet

    folder = Path(model)
    missing = [n for n in ("pnet", "rnet", "onet") if not (folder / f"{n}.joblib").is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: no Keras weights for {', '.join(missing)} (*.joblib)")
    return [
        StagePNet(weights=str(folder / "pnet.joblib")),
        StageRNet(weights=str(folder / "rnet.joblib")),
        StageONet(weights=str(folder / "onet.joblib")),
    ]


def _face(item: dict, scale: float) -> Face:
    x1, y1, x2, y2 = (float(v) * scale for v in item["box"])
    landmarks = {
        name: (float(x) * scale, float(y) * scale) for name, (x, y) in item.get("keypoints", {}).items()
    }
    return Face(Box(x1, y1, x2, y2), float(item["confidence"]), landmarks)


def _mtcnn_pyramid(width, height, min_face_size, scale_factor, min_size=PNET_WINDOW):
    """Drop-in for `mtcnn.utils.images.build_scale_pyramid` with the trap fixed."""
    return np.asarray(scale_pyramid(int(width), int(height), int(min_face_size), float(scale_factor)))


def _fix_mtcnn_pyramid() -> None:
    # The package's PNet stage calls the builder it imported by name; replacing that one name
    # fixes every MTCNN instance in the process, and only changes what was broken.
    from mtcnn.stages import stage_pnet

    stage_pnet.build_scale_pyramid = _mtcnn_pyramid


def detector_folder(config: DetectorConfig) -> Path:
    """The folder `config` selects: `detector.model` (a trained detector), else the stock export."""
    return Path(config.model) if config.model else DEFAULT_DETECTOR_DIR


def stock_nets_config(config: DetectorConfig) -> DetectorConfig:
    """The settings of the stock nets that run beside `config`'s folder (`detector.with_stock`)."""
    return replace(config, model="", thresholds=config.stock_thresholds)


class CalibratedDetector:
    """A detector whose boxes go through a :class:`BoxCalibration` (for tools that match or crop
    detected boxes outside the agent, which calibrates in its crop call)."""

    def __init__(self, detector: FaceDetector, calibration: BoxCalibration):
        self.detector, self.calibration = detector, calibration

    def detect(self, image: np.ndarray) -> list[Face]:
        return calibrated(self.detector.detect(image), self.calibration)


def calibrated(faces: list[Face], calibration: BoxCalibration) -> list[Face]:
    """`faces` with their boxes mapped through `calibration` (to the hand-drawn convention)."""
    if calibration.is_identity:
        return faces
    return [
        replace(
            face,
            box=calibration.apply(face.box),
            crop_box=None if face.crop_box is None else calibration.apply(face.crop_box),
        )
        for face in faces
    ]


def box_calibration(config: DetectorConfig) -> BoxCalibration:
    """The box calibration of the detector folder `config` selects; the identity when switched off
    (`detector.box_calibration = false`) or when the folder has none.

    Raises ModelFileError for a folder without a readable card or with an invalid calibration.
    """
    if not config.box_calibration:
        return BoxCalibration()
    return folder_calibration(detector_folder(config))


def folder_calibration(folder: Path) -> BoxCalibration:
    """The box calibration a detector folder's card records; the identity when it records none."""
    data = read_detector_card(folder).get(CALIBRATION_KEY)
    if data is None:
        return BoxCalibration()
    try:
        return BoxCalibration.from_json(data)
    except ValueError as exc:
        raise ModelFileError(f"{folder / 'card.json'}: {CALIBRATION_KEY}: {exc}") from None


class FaceScorer(Protocol):
    """Scores boxes of an image as faces (0-1): a second opinion on another detector's faces."""

    def face_scores(self, image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray: ...


class StockFirstDetector:
    """A trained detector folder's nets with the stock nets beside them (`detector.with_stock`).

    Every face the stock nets find is kept and cropped around the stock box; where the folder's nets
    box the same face and their box fits the stock one (IoU >= RELOCATE_IOU), that box locates it,
    the stock box becomes its `crop_box` and it carries the surer of the two scores (a face of
    theirs lying mostly inside a stock one is the same face, as ONet's last suppression judges it).
    The folder's nets add the faces the stock nets miss, where the stock ONet's face probability for
    the added box is at least `stock_check` (0: no check), or, with a `face_check` (the folder's
    face-check net, :mod:`maskgate.gate.face_check`), at least `face_check_floor` and that net's
    score at least `face_check_threshold`.

    Why stock first and the check: the shipped classifier learned from crops around stock boxes,
    and a tuned detector alone was measured to open the door for an unmasked man, both by its own
    box on his face and by a false face on the trees behind him that the classifier called masked.
    The stock ONet rejects such false faces and keeps most masked ones: the stock nets miss masked
    faces mostly at PNet and RNet (docs/detector.md). The folder's box of a face both find is
    the better fit to a masked face (IoU with the drawn box often 0.8-0.9 where the stock box sits
    at 0.45-0.5), so it says where the face is, while the crop stays the one the classifier
    learned. Boxes come out in the folder's convention,
    stock ones mapped through both calibrations, so the gate's calibration for the folder crops a
    stock face exactly as the stock calibration would; a gate that crops raw boxes
    (`calibrated` off) gets the stock boxes raw. The check maps an added box into the stock
    convention with the folders' calibrations either way.
    """

    SAME_FACE = 0.7  # intersection over the smaller box
    # A looser fit is not a box of the same face but one over two faces, or around a part of one. In
    # the fmd scenes one pair of 1,546 fits worse (a box four times the face); 11 fit at 0.35-0.5,
    # masked faces the tuned box fits better than the stock one.
    RELOCATE_IOU = 0.3

    def __init__(
        self,
        tuned: FaceDetector,
        stock: FaceDetector,
        tuned_calibration: BoxCalibration,
        stock_calibration: BoxCalibration,
        checker: FaceScorer | None = None,
        stock_check: float = 0.0,
        calibrated: bool = True,
        face_check: FaceScorer | None = None,
        face_check_threshold: float = 0.9,
        face_check_floor: float = 0.05,
    ):
        self.tuned, self.stock, self.checker = tuned, stock, checker
        self.tuned_calibration, self.stock_calibration = tuned_calibration, stock_calibration
        self.stock_check = stock_check
        self.face_check = face_check
        self.face_check_threshold, self.face_check_floor = face_check_threshold, face_check_floor
        self.calibrated = calibrated
        # The tuned nets run in a thread of their own beside the stock nets: LiteRT lets go of the
        # GIL while a network runs, so on two cores a frame costs about one detector, not two.
        self._beside = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuned-detector")

    def detect(self, image: np.ndarray) -> list[Face]:
        kept, added, scores = self.stock_and_added(image)
        if self.has_check:
            passed = self.passes_check(image, added, scores)
            added = [face for face, ok in zip(added, passed, strict=True) if ok]
        for face in sorted(added, key=lambda f: -f.score):
            if not self._seen(face, kept):
                kept.append(face)
        return kept

    @property
    def has_check(self) -> bool:
        return self.checker is not None and self.stock_check > 0

    def stock_and_added(self, image: np.ndarray) -> tuple[list[Face], list[Face], np.ndarray]:
        """The stock nets' faces as :meth:`detect` gives them (in the folder's convention, located by
        the folder's box where it fits), the faces only the folder's nets find, and the stock ONet's
        score for each of those (NaN without a check: not run)."""
        beside = self._beside.submit(self.tuned.detect, image)
        stock = self.stock.detect(image)
        if self.calibrated:
            stock = [replace(face, box=self.to_tuned(face.box)) for face in stock]
        tuned = beside.result()
        added = [face for face in tuned if not self._seen(face, stock)]
        found_by_both = self._located(stock, tuned)
        if not (added and self.has_check):
            return found_by_both, added, np.full(len(added), np.nan)
        scores = self.checker.face_scores(image, [self.to_stock(face.box) for face in added])
        return found_by_both, added, np.asarray(scores, float)

    def passes_check(self, image: np.ndarray, added: Sequence[Face], scores: np.ndarray) -> np.ndarray:
        """Which `added` faces (with their stock ONet `scores`) pass the check
        (:func:`passes_added_check`), the face-check net asked in the drawn boxes' convention."""
        face_check = self.face_check

        def net_scores(doubted: np.ndarray) -> np.ndarray:
            return face_check.face_scores(
                image, [self.tuned_calibration.apply(added[i].box) for i in doubted]
            )

        return passes_added_check(
            scores,
            self.stock_check,
            self.face_check_floor,
            self.face_check_threshold,
            net_scores if face_check is not None else None,
        )

    def _located(self, stock: Sequence[Face], tuned: Sequence[Face]) -> list[Face]:
        """`stock`, each face located by the folder's box of the same face where one fits it (IoU >=
        RELOCATE_IOU; best fits first, each box of theirs locating one face), then cropped around its
        own box and scored by the surer of the two nets (the stock nets are unsure of masked faces:
        their score kept masked faces both find under the policy's `min_detector_score`); the
        others as they are."""
        fits = sorted(
            (
                (face.box.iou(other.box), i, j)
                for i, face in enumerate(stock)
                for j, other in enumerate(tuned)
                if self._same(face, other)
            ),
            reverse=True,
        )
        located, used = list(stock), set()
        for fit, i, j in fits:
            if fit < self.RELOCATE_IOU:
                break
            if located[i] is stock[i] and j not in used:
                score = max(stock[i].score, tuned[j].score)
                located[i] = replace(stock[i], box=tuned[j].box, crop_box=stock[i].box, score=score)
                used.add(j)
        return located

    def _same(self, face: Face, other: Face) -> bool:
        return face.box.overlap_of_smaller(other.box) > self.SAME_FACE

    def _seen(self, face: Face, kept: Sequence[Face]) -> bool:
        return any(self._same(face, other) for other in kept)

    def to_tuned(self, box: Box) -> Box:
        """A stock box in the folder's convention: the box its calibration maps to the same place."""
        return self.tuned_calibration.invert(self.stock_calibration.apply(box))

    def to_stock(self, box: Box) -> Box:
        """A box of the folder's nets in the stock convention (the inverse of :meth:`to_tuned`)."""
        return self.stock_calibration.invert(self.tuned_calibration.apply(box))


def passes_added_check(
    stock_scores: np.ndarray,
    stock_check: float,
    face_check_floor: float,
    face_check: float,
    net_scores: Callable[[np.ndarray], np.ndarray] | None,
) -> np.ndarray:
    """Which faces only a tuned folder's nets find pass the check, given the stock ONet's scores:
    at least `stock_check`, or, with a face-check net (`net_scores` scores the faces at the indices
    it is given; None or `face_check` 0: none), at least `face_check_floor` and the net's score at
    least `face_check`. The net judges only those in between (a few per hundred frames); both must
    vouch for them, so a face that neither believes in stays out (the trees behind an unmasked man
    score under 0.02 with the stock ONet). The gate's rule, and what training reports of it."""
    stock_scores = np.asarray(stock_scores, float)
    passed = stock_scores >= stock_check
    if net_scores is None or face_check <= 0:
        return passed
    doubted = np.flatnonzero(~passed & (stock_scores >= face_check_floor))
    if len(doubted):
        passed[doubted] = np.asarray(net_scores(doubted)) >= face_check
    return passed


CALIBRATION_TOLERANCE = 0.02  # per term; smaller differences do not visibly change a crop


def crops_calibrated_as(detector: FaceDetector, calibration: BoxCalibration) -> BoxCalibration:
    """The calibration the gate's crops of `detector`'s faces amount to when it crops through
    `calibration`: `calibration` itself, but for a :class:`StockFirstDetector` that calibrates the
    stock calibration. It hands over each stock face so that `calibration` crops it exactly as the
    stock calibration would, and crops the faces only its folder's nets find like the drawn boxes
    of the classifier's scene crops; so its crops are those a stock-trained classifier expects.
    """
    if isinstance(detector, StockFirstDetector) and detector.calibrated:
        return detector.stock_calibration
    return calibration


def calibration_mismatch(card: ModelCard, calibration: BoxCalibration) -> str | None:
    """Why the classifier of `card` would see other crops at this gate than it was trained on, or None.

    Its `photos` crops were cut around detector boxes mapped through the calibration its card
    records (for photos a detector folder located beside the stock nets, the stock calibration:
    :func:`crops_calibrated_as`); a gate calibrating otherwise (or not at all) shifts every crop,
    and the classifier was measured unsafe that way (docs/detector.md, "Safety at the door").
    None when the card records no calibration: older models, and models trained without a
    `photos` source (their crops come from annotated boxes, which a calibrated gate's crops
    resemble).
    """
    photos = card.training.get("detector_for_photos")
    if not isinstance(photos, dict) or "calibration" not in photos:
        return None
    # Photos located by a detector folder beside the stock nets were cut as crops_calibrated_as
    # says such a detector cuts: through the stock calibration.
    key = "stock_calibration" if "stock_calibration" in photos else "calibration"
    try:
        trained = BoxCalibration.from_json(photos[key])
    except ValueError:
        return None
    pairs = zip(trained.to_json().values(), calibration.to_json().values(), strict=True)
    if all(abs(a - b) <= CALIBRATION_TOLERANCE for a, b in pairs):
        return None
    return (
        f"model {card.version} was trained on crops around detector boxes calibrated as "
        f"{trained.to_json()}, but this gate calibrates as {calibration.to_json()}: its crops differ "
        "from the training crops, so its decisions may be wrong (set detector.box_calibration and "
        "detector.model as the model was trained, or retrain it)"
    )


def read_detector_card(folder: Path) -> dict:
    """A detector folder's card.json as a dict; ModelFileError if it is missing or unreadable."""
    try:
        card = json.loads((folder / "card.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{folder}: not a detector folder: {exc}") from None
    if not isinstance(card, dict):
        raise ModelFileError(f"{folder}: not a detector folder: card.json is not an object")
    return card
