"""A synthetic walk-up for demos and tests: people approach the camera one after another.

The faces are a portrait that ships inside an installed package (scikit-image's astronaut,
public domain, NASA), in variants so that each walker looks a little different. Masks are drawn
from the face detector's own landmarks in three styles: worn properly (nose and mouth
covered), below the nose, and none. Between walkers the scene is empty for longer than the
tracker's dropout tolerance, so each walker is a new person.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from maskgate.core import Label
from maskgate.gate.detector import FaceDetector

log = logging.getLogger(__name__)

Landmarks = dict[str, tuple[float, float]]


class MaskStyle(enum.StrEnum):
    PROPER = "proper"
    BELOW_NOSE = "below_nose"
    NONE = "none"

    @property
    def label(self) -> Label:
        return {
            MaskStyle.PROPER: Label.WITH_MASK,
            MaskStyle.BELOW_NOSE: Label.IMPROPER_MASK,
            MaskStyle.NONE: Label.WITHOUT_MASK,
        }[self]


@dataclass(frozen=True)
class Walker:
    variant: str  # "plain", "mirrored" or "warm"
    style: MaskStyle


DEFAULT_WALKERS = (
    Walker("plain", MaskStyle.PROPER),
    Walker("mirrored", MaskStyle.NONE),
    Walker("warm", MaskStyle.BELOW_NOSE),
)


class SyntheticWalkUp:
    """A recorded source (every frame kept) of `walkers` approaching one after another."""

    live = False
    name = "synthetic walk-up"

    def __init__(
        self,
        walkers: Sequence[Walker] = DEFAULT_WALKERS,
        size: tuple[int, int] = (640, 480),
        fps: float = 30.0,
        walk_s: float = 3.0,
        gap_s: float = 2.5,
        detector: FaceDetector | None = None,
    ):
        self.walkers = tuple(walkers)
        self.size = size
        self.fps = fps
        self.walk_frames = round(walk_s * fps)
        self.gap_frames = round(gap_s * fps)
        self._detector = detector
        self._frames: Iterator[np.ndarray] | None = None

    @property
    def expected_labels(self) -> list[Label]:
        return [walker.style.label for walker in self.walkers]

    def open(self) -> None:
        portraits = self._portraits()
        self._frames = self._generate(portraits)

    def read(self) -> np.ndarray | None:
        if self._frames is None:
            self.open()
        return next(self._frames, None)

    def close(self) -> None:
        self._frames = None

    # -- scene ---------------------------------------------------------------------------------

    def _portraits(self) -> dict[Walker, np.ndarray]:
        from skimage.data import astronaut

        head = _head_crop(astronaut())
        detector = self._detector or _default_detector()
        landmarks = _landmarks(detector, head)
        masked = {walker: draw_mask(head, landmarks, walker.style) for walker in self.walkers}
        return {walker: _variant(image, walker.variant) for walker, image in masked.items()}

    def _generate(self, portraits: dict[Walker, np.ndarray]) -> Iterator[np.ndarray]:
        background = _background(self.size)
        for walker in self.walkers:
            portrait = portraits[walker]
            for step in range(self.walk_frames):
                yield _place(background, portrait, step / max(1, self.walk_frames - 1))
            for _ in range(self.gap_frames):
                yield background.copy()


def _default_detector() -> FaceDetector:
    from maskgate.config import DetectorConfig
    from maskgate.gate.detector import MtcnnDetector

    return MtcnnDetector(DetectorConfig(min_face_size=40))


def _head_crop(image: np.ndarray) -> np.ndarray:
    # The astronaut's head and shoulders: a square that keeps the face well inside.
    return np.ascontiguousarray(image[10:330, 50:370])


def _landmarks(detector: FaceDetector, portrait: np.ndarray) -> Landmarks:
    faces = detector.detect(portrait)
    if not faces or not faces[0].landmarks:
        raise RuntimeError("the detector found no face with landmarks in the synthetic portrait")
    return dict(max(faces, key=lambda face: face.box.area).landmarks)


SURGICAL_BLUE = (168, 208, 232)  # RGB
# Colours real masks come in (RGB): surgical blue and green, white, greys, black, navy, pink, beige.
# Trainers draw from these so that no single colour becomes what "a mask" means.
MASK_COLOURS = (
    SURGICAL_BLUE,
    (150, 200, 185),
    (236, 236, 232),
    (150, 150, 155),
    (85, 85, 90),
    (35, 35, 40),
    (45, 55, 95),
    (225, 165, 185),
    (205, 185, 160),
)


def draw_mask(
    portrait: np.ndarray, landmarks: Landmarks, style: MaskStyle, colour: tuple[int, int, int] = SURGICAL_BLUE
) -> np.ndarray:
    """`portrait` with a surgical-style mask of `colour` drawn from the face's landmarks in `style`."""
    out = portrait.copy()
    if style is MaskStyle.NONE:
        return out
    pleat = tuple(max(0, c - 28) for c in colour)  # a shade darker than the mask
    (lx, ly), (rx, ry) = landmarks["left_eye"], landmarks["right_eye"]
    nose_x, nose_y = landmarks["nose"]
    mouth_y = (landmarks["mouth_left"][1] + landmarks["mouth_right"][1]) / 2
    eye_y, eye_gap = (ly + ry) / 2, abs(rx - lx)
    cx = nose_x
    over_nose = eye_y + 0.45 * (nose_y - eye_y)  # over the bridge of the nose
    under_nose = nose_y + 0.35 * (mouth_y - nose_y)  # under the nose, over the mouth
    top = over_nose if style is MaskStyle.PROPER else under_nose
    chin = mouth_y + 0.85 * eye_gap
    half = 1.05 * eye_gap
    outline = np.array(
        [
            (cx - half, top + 0.1 * eye_gap),
            (cx, top - 0.05 * eye_gap),
            (cx + half, top + 0.1 * eye_gap),
            (cx + 1.1 * half, mouth_y),
            (cx + 0.6 * half, chin - 0.1 * eye_gap),
            (cx, chin),
            (cx - 0.6 * half, chin - 0.1 * eye_gap),
            (cx - 1.1 * half, mouth_y),
        ],
        dtype=np.float64,
    )
    shift = 4  # sub-pixel precision for smooth anti-aliased edges
    points = np.round(outline * (1 << shift)).astype(np.int32)
    cv2.fillPoly(out, [points], colour, lineType=cv2.LINE_AA, shift=shift)
    for fraction in (0.3, 0.5, 0.7):  # pleats
        y = top + fraction * (chin - top) * 0.8
        start = (int((cx - 0.9 * half) * 16), int(y * 16))
        end = (int((cx + 0.9 * half) * 16), int(y * 16))
        cv2.line(out, start, end, pleat, 2, lineType=cv2.LINE_AA, shift=shift)
    for side in (-1, 1):  # ear loops
        start = (int((cx + side * half) * 16), int((top + 0.1 * eye_gap) * 16))
        end = (int((cx + side * 1.6 * half) * 16), int((eye_y + 0.1 * eye_gap) * 16))
        cv2.line(out, start, end, (235, 235, 235), 2, lineType=cv2.LINE_AA, shift=shift)
    return out


def _variant(portrait: np.ndarray, variant: str) -> np.ndarray:
    if variant == "mirrored":
        return np.ascontiguousarray(portrait[:, ::-1])
    if variant == "warm":
        tinted = portrait.astype(np.float32) * np.array([1.08, 1.0, 0.9], dtype=np.float32)
        return np.clip(tinted, 0, 255).astype(np.uint8)
    return portrait


def _background(size: tuple[int, int]) -> np.ndarray:
    width, height = size
    ramp = np.linspace(70, 150, height, dtype=np.float32)[:, None, None]
    scene = np.broadcast_to(ramp * np.array([0.9, 0.95, 1.0], dtype=np.float32), (height, width, 3)).copy()
    cv2.rectangle(scene, (width // 8, height // 10), (7 * width // 8, height), (95, 85, 75), 12)  # door frame
    return scene.astype(np.uint8)


def _place(background: np.ndarray, portrait: np.ndarray, progress: float) -> np.ndarray:
    """The portrait at `progress` (0..1) of its walk: growing and drifting to the centre."""
    height, width = background.shape[:2]
    side = round(height * (0.45 + 0.45 * progress))
    head = cv2.resize(portrait, (side, side), interpolation=cv2.INTER_AREA)
    cx = int(width * (0.35 + 0.15 * progress))
    x1, y1 = cx - side // 2, max(0, height - side - int(0.05 * height))
    frame = background.copy()
    fx1, fy1, fx2, fy2 = max(0, x1), y1, min(width, x1 + side), min(height, y1 + side)
    frame[fy1:fy2, fx1:fx2] = head[fy1 - y1 : fy2 - y1, fx1 - x1 : fx2 - x1]
    return frame
