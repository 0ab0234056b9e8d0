"""A detector folder's face-check net: a second opinion on the faces its nets add beside the stock nets.

Beside the stock nets (`detector.with_stock`), the faces only a tuned folder's nets find are checked
by the stock ONet (`detector.stock_check`). Its scores do not separate the masked faces it doubts
from the false faces (walls, trees, hair) the tuned nets box: both fall between 0.05 and 0.3
(docs/detector.md). The face-check net (``maskgate train-face-check``) is trained on those very
false faces as negatives, against the drawn faces of the same scenes, and judges a crop cut as the
classifier's crops are cut (around the box in the drawn boxes' convention, with a margin), larger
than ONet's 48 px patch.

Files in the detector folder: ``check.tflite`` (uint8-valued float32 crops (N, S, S, 3) -> face
probability (N, 1)), listed with its sha256 in ``card.json`` like the other nets, and the card's
``face_check`` entry with the crop it takes (``crop``) and how it was trained.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from maskgate.core import Box
from maskgate.crop import CropSpec, crop_faces
from maskgate.gate.detector import read_detector_card
from maskgate.gate.mtcnn_litert import LiteRtNetwork, verify_folder
from maskgate.modelcard import ModelFileError

CHECK_FILE = "check.tflite"
CHECK_KEY = "face_check"  # the card's entry


def has_face_check(folder: Path) -> bool:
    """Whether the detector folder's card names a face-check net."""
    return CHECK_KEY in read_detector_card(folder)


class FaceCheckNet:
    """Scores boxes of an image as faces (0-1) with a folder's face-check net, run by LiteRT.

    A :class:`maskgate.gate.detector.FaceScorer`. Boxes are in the drawn boxes' convention (a
    detector's box through its calibration); a box with no pixels inside the image scores 0.
    """

    def __init__(self, folder: Path):
        verify_folder(folder)  # every file of the card, this one included, against its sha256
        card = read_detector_card(folder)
        entry = card.get(CHECK_KEY)
        if not isinstance(entry, dict) or CHECK_FILE not in card.get("files", {}):
            raise ModelFileError(f"{folder}: card.json names no face-check net ({CHECK_KEY}, {CHECK_FILE})")
        try:
            self.crop = CropSpec.from_json(entry["crop"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{folder}: card.json: {CHECK_KEY}.crop: {exc!r}") from None
        try:
            self._net = LiteRtNetwork(folder / CHECK_FILE, outputs=(1,))
        except (ValueError, RuntimeError, KeyError) as exc:
            raise ModelFileError(f"{folder}: LiteRT cannot load {CHECK_FILE}: {exc}") from None
        # The net would take crops of any size (its pooling is global) and score them wrongly.
        expected = (self.crop.size, self.crop.size, self.crop.channels)
        if self._net.input_shape[1:] != expected:
            raise ModelFileError(
                f"{folder}: {CHECK_FILE} takes {self._net.input_shape[1:]}, the card says {expected}"
            )
        self._lock = threading.Lock()

    def face_scores(self, image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
        scores = np.zeros(len(boxes), np.float32)
        crops, cut = crop_faces(image, boxes, self.crop)
        if crops:
            with self._lock:
                (probability,) = self._net.run(np.stack(crops))
            scores[cut] = probability[:, 0]
        return scores
