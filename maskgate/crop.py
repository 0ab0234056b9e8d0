"""The one face-crop function shared by training and the gate.

Training crops must look exactly like the crops the agent classifies at the door, so both
call :func:`crop_face` with the :class:`CropSpec` stored in the model's card: a square
centred on the box, widened by a margin, padded by replicating the border where it leaves
the image, resized, in RGB (or grey) order.

A detector's boxes are not drawn the way people draw faces (MTCNN's sit higher and tighter than
the hand-drawn boxes the classifier learned from), so a crop of a *detected* face first maps the
box through the detector's :class:`BoxCalibration`, learned from its boxes and hand-drawn ones.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from maskgate.core import Box


class EmptyCropError(ValueError):
    """The box has no area inside the image: there is nothing to classify."""


MIN_SIZE, MAX_SIZE = 8, 1024  # a crop spec's side in pixels (the seed architecture's is 255)


@dataclass(frozen=True, slots=True)
class CropSpec:
    size: int = 96  # output side in pixels
    margin: float = 0.2  # added on each side, as a fraction of the box's longer side
    color: Literal["rgb", "grey"] = "rgb"

    @property
    def channels(self) -> int:
        return 1 if self.color == "grey" else 3

    def to_json(self) -> dict[str, object]:
        return {"size": self.size, "margin": self.margin, "color": self.color}

    def problem(self) -> str | None:
        """Why this spec cannot cut crops (None if it can): the size, margin and colour a card may hold."""
        size, margin = self.size, self.margin
        whole = isinstance(size, numbers.Integral) and not isinstance(size, bool)
        if not whole or not MIN_SIZE <= size <= MAX_SIZE:
            return f"the crop size must be a whole number from {MIN_SIZE} to {MAX_SIZE}, not {size!r}"
        if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or not 0 <= margin <= 1:
            return f"the crop margin must be a number from 0 to 1, not {margin!r}"  # NaN fails 0 <= NaN too
        if self.color not in ("rgb", "grey"):
            return f"the crop colour must be 'rgb' or 'grey', not {self.color!r}"
        return None

    @classmethod
    def from_json(cls, data: object) -> CropSpec:
        """Raises ValueError ("invalid crop spec ...") naming what is wrong with `data`."""
        if not isinstance(data, dict) or not {"size", "margin", "color"} <= set(data):
            raise ValueError(f"invalid crop spec {data!r}: expected an object with size, margin and color")
        spec = cls(size=data["size"], margin=data["margin"], color=data["color"])
        if problem := spec.problem():
            raise ValueError(f"invalid crop spec {data!r}: {problem}")
        return cls(size=int(spec.size), margin=float(spec.margin), color=spec.color)


@dataclass(frozen=True, slots=True)
class BoxCalibration:
    """Maps a detector's box to the box a person would draw around the same face.

    The centre moves by (`dx` x width, `dy` x height) of the detected box, and its width and
    height are scaled. The identity (the default) leaves boxes as they are.
    """

    dx: float = 0.0
    dy: float = 0.0
    width_scale: float = 1.0
    height_scale: float = 1.0

    # Anything beyond these is not a calibration but a broken fit or a tampered card.
    MAX_SHIFT = 0.5
    SCALE_RANGE = (0.5, 2.0)

    def __post_init__(self) -> None:
        low, high = self.SCALE_RANGE
        values = (self.dx, self.dy, self.width_scale, self.height_scale)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"box calibration has a non-finite value: {values}")
        if max(abs(self.dx), abs(self.dy)) > self.MAX_SHIFT:
            raise ValueError(f"box calibration shifts by more than {self.MAX_SHIFT} of the box: {values}")
        if not (low <= self.width_scale <= high and low <= self.height_scale <= high):
            raise ValueError(f"box calibration scales outside {low}-{high}: {values}")

    @property
    def is_identity(self) -> bool:
        return self == BoxCalibration()

    def apply(self, box: Box) -> Box:
        cx, cy = box.center
        cx, cy = cx + self.dx * box.width, cy + self.dy * box.height
        half_w, half_h = box.width * self.width_scale / 2, box.height * self.height_scale / 2
        return Box(cx - half_w, cy - half_h, cx + half_w, cy + half_h)

    def invert(self, box: Box) -> Box:
        """The box that :meth:`apply` maps to `box`."""
        width, height = box.width / self.width_scale, box.height / self.height_scale
        cx, cy = box.center
        cx, cy = cx - self.dx * width, cy - self.dy * height
        return Box(cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2)

    @classmethod
    def fit(cls, detected: Sequence[Box], drawn: Sequence[Box]) -> BoxCalibration:
        """The calibration from pairs of (detector box, hand-drawn box) of the same faces.

        Medians of the per-face shift and log scale: a few wrong pairs (a neighbour's box, a
        partly hidden face) do not move them.
        """
        if len(detected) != len(drawn) or not detected:
            raise ValueError(f"need matching non-empty lists of boxes, got {len(detected)} and {len(drawn)}")
        pairs = [(d, g) for d, g in zip(detected, drawn, strict=True) if d.area > 0 and g.area > 0]
        if not pairs:
            raise ValueError("no pair of boxes with an area")
        dx = [(g.center[0] - d.center[0]) / d.width for d, g in pairs]
        dy = [(g.center[1] - d.center[1]) / d.height for d, g in pairs]
        log_w = [math.log(g.width / d.width) for d, g in pairs]
        log_h = [math.log(g.height / d.height) for d, g in pairs]
        return cls(
            dx=float(np.median(dx)),
            dy=float(np.median(dy)),
            width_scale=float(math.exp(np.median(log_w))),
            height_scale=float(math.exp(np.median(log_h))),
        )

    def to_json(self) -> dict[str, float]:
        return {
            "dx": round(self.dx, 6),
            "dy": round(self.dy, 6),
            "width_scale": round(self.width_scale, 6),
            "height_scale": round(self.height_scale, 6),
        }

    @classmethod
    def from_json(cls, data: object) -> BoxCalibration:
        """Raises ValueError naming what is wrong with `data`."""
        keys = ("dx", "dy", "width_scale", "height_scale")
        if not isinstance(data, dict) or set(data) - {*keys, "fitted"} or not set(keys) <= set(data):
            raise ValueError(f"box calibration must have the keys {', '.join(keys)}, got {data!r}")
        values = [data[key] for key in keys]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise ValueError(f"invalid box calibration {data!r}: the values must be numbers")
        return cls(*(float(v) for v in values))


def square_box(box: Box, margin: float) -> Box:
    """The square around `box`'s centre with side = longer side x (1 + 2 x margin)."""
    cx, cy = box.center
    half = box.side * (1 + 2 * margin) / 2
    return Box(cx - half, cy - half, cx + half, cy + half)


def crop_faces(image: np.ndarray, boxes: Sequence[Box], spec: CropSpec) -> tuple[list[np.ndarray], list[int]]:
    """:func:`crop_face` for each of `boxes` (no calibration: boxes as they are to be cut), and the
    indices of the boxes cut; a box with no pixels inside the image is left out."""
    crops, cut = [], []
    for i, box in enumerate(boxes):
        try:
            crops.append(crop_face(image, box, spec))
        except EmptyCropError:
            continue
        cut.append(i)
    return crops, cut


def crop_face(
    image: np.ndarray, box: Box, spec: CropSpec, calibration: BoxCalibration | None = None
) -> np.ndarray:
    """The classifier's input for the face in `box`: uint8, (size, size, channels).

    `image` is RGB uint8 (H, W, 3). A detected box goes through the detector's `calibration`
    first; a hand-drawn one needs none. Raises :class:`EmptyCropError` if the box does not
    overlap the image (a face at the border may be partly outside: that part is padded).
    """
    if calibration is not None:
        box = calibration.apply(box)
    height, width = image.shape[:2]
    corners = (box.x1, box.y1, box.x2, box.y2)
    if not all(math.isfinite(v) for v in corners):
        raise EmptyCropError(f"box {box} is not finite")
    # A face at the border reaches out of the image by part of its side; a box reaching out further
    # than half the image's longer side is no face but a broken one (a box of 1e9 px would make
    # the padded square below take gigabytes): it is clipped to the image first. Other boxes are
    # cut as they are, so the padded square stays within a few times the image.
    reach = max(width, height) / 2
    if min(box.x1, box.y1) < -reach or box.x2 > width + reach or box.y2 > height + reach:
        box = box.clip(width, height)
    if box.clip(width, height).area < 1:
        raise EmptyCropError(f"box {box} has no area inside the {width}x{height} image")
    square = square_box(box, spec.margin)
    x1, y1 = int(np.floor(square.x1)), int(np.floor(square.y1))
    side = max(1, round(square.width))
    x2, y2 = x1 + side, y1 + side
    # Pad only as much as the square leaves the image, replicating the edge pixels.
    pad = (max(0, -y1), max(0, y2 - height), max(0, -x1), max(0, x2 - width))
    inside = image[max(0, y1) : min(height, y2), max(0, x1) : min(width, x2)]
    if any(pad):
        inside = cv2.copyMakeBorder(inside, *pad, borderType=cv2.BORDER_REPLICATE)
    interpolation = cv2.INTER_AREA if side > spec.size else cv2.INTER_LINEAR
    crop = cv2.resize(inside, (spec.size, spec.size), interpolation=interpolation)
    if spec.color == "grey":
        crop = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)[..., np.newaxis]
    return crop
