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
    return [replace(face, box=calibration.apply(face.box)) for face in faces]


def box_calibration(config: DetectorConfig) -> BoxCalibration:
    """The box calibration of the detector folder `config` selects; the identity when switched off
    (`detector.box_calibration = false`) or when the folder has none.

    Raises ModelFileError for a folder without a readable card or with an invalid calibration.
    """
    if not config.box_calibration:
        return BoxCalibration()
    folder = detector_folder(config)
    data = read_detector_card(folder).get(CALIBRATION_KEY)
    if data is None:
        return BoxCalibration()
    try:
        return BoxCalibration.from_json(data)
    except ValueError as exc:
        raise ModelFileError(f"{folder / 'card.json'}: {CALIBRATION_KEY}: {exc}") from None


CALIBRATION_TOLERANCE = 0.02  # per term; smaller differences do not visibly change a crop


def calibration_mismatch(card: ModelCard, calibration: BoxCalibration) -> str | None:
    """Why the classifier of `card` would see other crops at this gate than it was trained on, or None.

    Its `photos` crops were cut around detector boxes mapped through the calibration its card
    records; a gate calibrating otherwise (or not at all) shifts every crop, and the classifier
    was measured unsafe that way (docs/detector.md, "Safety at the door"). None when the card
    records no calibration: older models, and models trained without a `photos` source (their
    crops come from annotated boxes, which a calibrated gate's crops resemble).
    """
    photos = card.training.get("detector_for_photos")
    if not isinstance(photos, dict) or "calibration" not in photos:
        return None
    try:
        trained = BoxCalibration.from_json(photos["calibration"])
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
