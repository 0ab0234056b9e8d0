"""The one face-crop function shared by training and the gate.

Training crops must look exactly like the crops the agent classifies at the door, so both
call :func:`crop_face` with the :class:`CropSpec` stored in the model's card: a square
centred on the box, widened by a margin, padded by replicating the border where it leaves
the image, resized, in RGB (or grey) order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from maskgate.core import Box


class EmptyCropError(ValueError):
    """The box has no area inside the image: there is nothing to classify."""


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

    @classmethod
    def from_json(cls, data: dict[str, object]) -> CropSpec:
        spec = cls(size=int(data["size"]), margin=float(data["margin"]), color=str(data["color"]))  # type: ignore[arg-type]
        if spec.size < 8 or not 0 <= spec.margin <= 1 or spec.color not in ("rgb", "grey"):
            raise ValueError(f"invalid crop spec {data!r}")
        return spec


def square_box(box: Box, margin: float) -> Box:
    """The square around `box`'s centre with side = longer side x (1 + 2 x margin)."""
    cx, cy = box.center
    half = box.side * (1 + 2 * margin) / 2
    return Box(cx - half, cy - half, cx + half, cy + half)


def crop_face(image: np.ndarray, box: Box, spec: CropSpec) -> np.ndarray:
    """The classifier's input for the face in `box`: uint8, (size, size, channels).

    `image` is RGB uint8 (H, W, 3). Raises :class:`EmptyCropError` if the box does not
    overlap the image (a face at the border may be partly outside: that part is padded).
    """
    height, width = image.shape[:2]
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
