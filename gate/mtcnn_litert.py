"""MTCNN on LiteRT: the `mtcnn` package's networks exported to TFLite, the rest in numpy and OpenCV.

The gate needs no TensorFlow with this detector. It follows the reference implementation
(`mtcnn` 1.0, with the image-pyramid trap fixed) step by step, so that it finds the same faces:

1. normalise RGB to (x - 127.5) / 128 and build the pyramid (:func:`scale_pyramid`);
2. PNet on every level: face cells above the threshold become 12 px boxes with regression,
   NMS per level (IoU 0.5) and across levels (0.7), squared;
3. RNet on 24x24 patches: rescore, regress, threshold, NMS 0.7, square;
4. ONet on 48x48 patches: rescore, regress, landmarks, threshold, NMS 0.7 on the smaller box;
5. boxes clipped to the image.

The networks are tiny; the cost is in the calls, so PNet keeps one interpreter per pyramid
level (their shapes repeat frame after frame) and RNet/ONet take all candidates in one call.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from ai_edge_litert.interpreter import Interpreter

from maskgate.config import DetectorConfig
from maskgate.core import Box, Face
from maskgate.gate.detector import (
    LANDMARK_NAMES,
    check_frame,
    detector_folder,
    read_detector_card,
    resize_to_width,
    scale_pyramid,
)
from maskgate.modelcard import ModelFileError, sha256_file

PNET_STRIDE, PNET_CELL = 2, 12
NMS_PNET_LEVEL, NMS_PNET_ALL, NMS_RNET, NMS_ONET = 0.5, 0.7, 0.7, 0.7
PNET_CACHE = 48


def normalise(image: np.ndarray) -> np.ndarray:
    """RGB uint8 pixels as MTCNN's networks take them: (x - 127.5) / 128, float32."""
    return (image.astype(np.float32) - 127.5) / 128


class LiteRtNetwork:
    """One TFLite network of a detector folder; `run` returns its outputs in the order `outputs`
    names them by channel count (for MTCNN's nets, the order the reference returns them)."""

    def __init__(self, path: Path, outputs: tuple[int, ...], num_threads: int = 1):
        self._interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self._input = self._interpreter.get_input_details()[0]["index"]
        # The converter does not keep output order: find each output by its channel count
        # (4 box offsets, 10 landmark coordinates, 2 face/no-face probabilities).
        by_channels = {int(d["shape"][-1]): d["index"] for d in self._interpreter.get_output_details()}
        self._outputs = [by_channels[channels] for channels in outputs]
        self._shape: tuple[int, ...] = ()

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The input shape the file was exported with (the batch may be resized)."""
        return tuple(int(n) for n in self._interpreter.get_input_details()[0]["shape"])

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.shape != self._shape:
            self._interpreter.resize_tensor_input(self._input, images.shape)
            self._interpreter.allocate_tensors()
            self._shape = images.shape
        self._interpreter.set_tensor(self._input, images)
        self._interpreter.invoke()
        return [self._interpreter.get_tensor(index) for index in self._outputs]


class LiteRtMtcnnDetector:
    """MTCNN run by LiteRT: same boxes as the reference, a fraction of its time, no TensorFlow."""

    def __init__(self, config: DetectorConfig | None = None, folder: Path | None = None):
        self.config = config or DetectorConfig()
        self.folder = folder or detector_folder(self.config)
        verify_folder(self.folder)
        self._rnet = LiteRtNetwork(self.folder / "rnet.tflite", outputs=(4, 2))
        self._onet = LiteRtNetwork(self.folder / "onet.tflite", outputs=(4, 10, 2))
        # One PNet per pyramid level shape: a camera's frames repeat the same few shapes.
        self._pnets: OrderedDict[tuple[int, int], LiteRtNetwork] = OrderedDict()
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray) -> list[Face]:
        check_frame(image)
        small, factor = resize_to_width(image, self.config.working_width)
        with self._lock:
            boxes = self._detect(small)
        return [_face(row, 1 / factor) for row in boxes]

    def face_scores(self, image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
        """ONet's face probability for each box of `image` (its pixels), as the box's square sees it.

        A second opinion on faces another detector found; ONet alone, since PNet and RNet are what
        lose masked faces, and ONet judges a whole face patch (docs/detector.md).
        """
        check_frame(image)
        if not boxes:
            return np.empty(0, np.float32)
        small, factor = resize_to_width(image, self.config.working_width)
        rows = np.array([[b.x1, b.y1, b.x2, b.y2, 0.0] for b in boxes], np.float32) * [*[factor] * 4, 1]
        normalised = normalise(small)
        with self._lock:
            _, _, probability = self._onet.run(patches(normalised, square(rows), 48))
        return probability[:, 1]

    def _detect(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        normalised = normalise(image)
        low, mid, high = self.config.thresholds
        boxes = self._proposals(normalised, low)
        if len(boxes):
            boxes = self._refine(normalised, boxes, mid)
        if len(boxes):
            boxes = self._output(normalised, boxes, high)
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width - 1)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height - 1)
        return boxes

    # -- stages -----------------------------------------------------------------------------

    def _proposals(self, image: np.ndarray, threshold: float) -> np.ndarray:
        """PNet over the pyramid: rows of x1, y1, x2, y2, score."""
        height, width = image.shape[:2]
        levels = []
        for scale in scale_pyramid(width, height, self.config.min_face_size, self.config.scale_factor):
            size = (int(width * scale), int(height * scale))
            level = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            regression, probability = self._pnet(level.shape[:2]).run(level[np.newaxis])
            boxes = _cells_to_boxes(regression[0], probability[0, :, :, 1], threshold, scale)
            levels.append(boxes[nms(boxes, NMS_PNET_LEVEL)])
        boxes = np.concatenate(levels) if levels else np.empty((0, 5), np.float32)
        boxes = boxes[np.argsort(-boxes[:, 4], kind="stable")]
        return square(boxes[nms(boxes, NMS_PNET_ALL)])

    def _refine(self, image: np.ndarray, boxes: np.ndarray, threshold: float) -> np.ndarray:
        offsets, probability = self._rnet.run(patches(image, boxes, 24))
        boxes = regress(_rescore(boxes, probability[:, 1]), offsets)
        boxes = boxes[boxes[:, 4] > threshold]
        boxes = boxes[np.argsort(-boxes[:, 4], kind="stable")]
        return square(boxes[nms(boxes, NMS_RNET)])

    def _output(self, image: np.ndarray, boxes: np.ndarray, threshold: float) -> np.ndarray:
        """ONet: rows of x1, y1, x2, y2, score, then 5 landmark x and 5 landmark y."""
        offsets, landmarks, probability = self._onet.run(patches(image, boxes, 48))
        w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        xs = w * landmarks[:, :5] + boxes[:, 0:1] - 1
        ys = h * landmarks[:, 5:] + boxes[:, 1:2] - 1
        boxes = np.concatenate([regress(_rescore(boxes, probability[:, 1]), offsets), xs, ys], axis=1)
        boxes = boxes[boxes[:, 4] > threshold]
        boxes = boxes[np.argsort(-boxes[:, 4], kind="stable")]
        return boxes[nms(boxes, NMS_ONET, by_min=True)]

    def _pnet(self, shape: tuple[int, int]) -> LiteRtNetwork:
        if shape in self._pnets:
            self._pnets.move_to_end(shape)
        else:
            self._pnets[shape] = LiteRtNetwork(self.folder / "pnet.tflite", outputs=(4, 2))
            while len(self._pnets) > PNET_CACHE:  # images of many sizes (a photo folder)
                self._pnets.popitem(last=False)
        return self._pnets[shape]


def verify_folder(folder: Path) -> None:
    """Every file the detector folder's card lists is there and matches its sha256 (ModelFileError)."""
    card = read_detector_card(folder)
    for name, expected in card.get("files", {}).items():
        if not (folder / name).is_file() or sha256_file(folder / name) != expected:
            raise ModelFileError(f"{folder}: {name} is missing or does not match its sha256")


def _cells_to_boxes(
    regression: np.ndarray, probability: np.ndarray, threshold: float, scale: float
) -> np.ndarray:
    """PNet's face cells as boxes in the level's source image: the cell's 12 px window, regressed."""
    ys, xs = np.nonzero(probability > threshold)
    if not len(ys):
        return np.empty((0, 5), np.float32)
    x1, y1 = xs * PNET_STRIDE + 1, ys * PNET_STRIDE + 1
    x2, y2 = xs * PNET_STRIDE + PNET_CELL, ys * PNET_STRIDE + PNET_CELL
    side = PNET_CELL - 1
    reg = regression[ys, xs]
    boxes = np.stack(
        [x1 + reg[:, 0] * side, y1 + reg[:, 1] * side, x2 + reg[:, 2] * side, y2 + reg[:, 3] * side], axis=1
    )
    scores = probability[ys, xs]
    order = np.argsort(-scores, kind="stable")
    return np.concatenate([boxes / scale, scores[:, None]], axis=1)[order].astype(np.float32)


def _rescore(boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    boxes = boxes.copy()
    boxes[:, 4] = scores
    return boxes


def nms(boxes: np.ndarray, threshold: float, by_min: bool = False) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression over rows sorted by score (best first).

    A box is dropped if it overlaps any better-scored box by more than `threshold` (IoU, or the
    intersection over the smaller box with `by_min`), whether or not that box was kept itself,
    as the reference implementation does.
    """
    if len(boxes) == 0:
        return np.empty(0, dtype=int)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1) * (y2 - y1)
    inter_w = np.maximum(0, np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None]))
    inter_h = np.maximum(0, np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None]))
    inter = inter_w * inter_h
    denominator = np.minimum(area[:, None], area[None]) if by_min else area[:, None] + area[None] - inter
    overlap = inter / np.maximum(denominator, 1e-9)
    suppressed = np.triu(overlap > threshold, k=1).any(axis=0)
    return np.nonzero(~suppressed)[0]


def square(boxes: np.ndarray) -> np.ndarray:
    """Each box grown to a square around its centre."""
    boxes = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] += (w - side) / 2
    boxes[:, 1] += (h - side) / 2
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, :4] += offsets * np.stack([w, h, w, h], axis=1)
    return boxes


def patches(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Bilinear size x size patches of `image` for each box, zero outside the image.

    Samples where TensorFlow's crop_and_resize does for the box divided by the image size,
    as the reference implementation calls it.
    """
    height, width = image.shape[:2]
    steps = np.arange(size, dtype=np.float32) / (size - 1)
    out = np.empty((len(boxes), size, size, 3), dtype=np.float32)
    for i, (x1, y1, x2, y2) in enumerate(boxes[:, :4]):
        xs = (x1 / width + steps * (x2 - x1) / width) * (width - 1)
        ys = (y1 / height + steps * (y2 - y1) / height) * (height - 1)
        map_x, map_y = np.meshgrid(xs.astype(np.float32), ys.astype(np.float32))
        out[i] = cv2.remap(
            image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
    return out


def _face(row: np.ndarray, scale: float) -> Face:
    # Whole pixels, as the reference reports them.
    x1, y1, x2, y2 = (float(round(v)) for v in row[:4])
    score = float(row[4])
    landmarks = {
        name: (float(round(row[5 + i])) * scale, float(round(row[10 + i])) * scale)
        for i, name in enumerate(LANDMARK_NAMES)
    }
    return Face(Box(x1 * scale, y1 * scale, x2 * scale, y2 * scale), score, landmarks)
