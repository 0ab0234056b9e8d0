"""Synthetic masks on bare training faces: more masked and improperly masked crops for the classifier.

Real improperly worn masks are scarce (a few hundred training faces), and the class is defined by
*where* the mask sits. Drawing masks on bare faces from their landmarks (worn properly, below the
nose, on the chin) gives examples of every placement on the same faces, so the network learns the
placement rather than the look of one mask. Properly worn synthetic masks are drawn as often as the
two improper placements together, and every mask gets a random colour of
:data:`maskgate.gate.synthetic.MASK_COLOURS`, so that
"looks drawn" or "is light blue" is no cue for either label.

Only crops of the training split are used (the caller passes them), so no held-out image is ever
seen in any form. Landmarks come from the gate's detector run on the crop itself, enlarged: a bare
crop is centred on its face, so the largest face with landmarks is the one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from tqdm import tqdm

from maskgate.core import LABELS, Face, Label
from maskgate.gate.synthetic import MASK_COLOURS, MaskStyle
from maskgate.training.cropset import CropSet
from maskgate.training.detector_samples import CHIN, STYLE_LABEL, draw_style

log = logging.getLogger(__name__)

Detect = Callable[[np.ndarray], list[Face]]

# Placement -> share: as many proper as improper masks (see the module docstring).
STYLE_SHARES = {MaskStyle.PROPER.value: 0.5, MaskStyle.BELOW_NOSE.value: 0.25, CHIN: 0.25}
DETECT_SIDE = 192  # crops are enlarged to this side before the detector looks for landmarks
MIN_FACE_SHARE = 0.4  # the crop's own face fills most of it; a smaller find is a face behind it
# A mask must cover this share of the crop to count: tight crops cut a chin mask off, and a crop
# labelled improper_mask that shows no mask would teach the network noise.
MIN_MASK_SHARE = 0.08
MIN_SIDE = 32.0  # faces smaller than this in their photo have too coarse landmarks to draw from


@dataclass(frozen=True)
class SyntheticReport:
    """How many bare faces were candidates, how many got a mask, of which placement."""

    candidates: int
    drawn: dict[str, int]
    no_landmarks: int
    off_crop: int  # masks that would have fallen (mostly) outside the crop

    def to_json(self) -> dict[str, object]:
        return {
            "candidates": self.candidates,
            "drawn": dict(self.drawn),
            "no_landmarks": self.no_landmarks,
            "off_crop": self.off_crop,
        }


def synthetic_masked_crops(
    train: CropSet, count: int, detect: Detect, rng: np.random.Generator, progress: bool = False
) -> tuple[CropSet, SyntheticReport]:
    """Up to `count` new crops: bare faces of `train` (>= MIN_SIDE px) with a mask drawn on them.

    Each new crop keeps its face's source, image and side (it belongs to the same split group) and
    takes the label of its placement: proper -> with_mask, below the nose or on the chin ->
    improper_mask.
    """
    bare = np.flatnonzero((train.labels == LABELS.index(Label.WITHOUT_MASK)) & (train.sides >= MIN_SIDE))
    order = rng.permutation(bare)
    styles = list(STYLE_SHARES)
    shares = np.asarray(list(STYLE_SHARES.values()))
    kept, labels, drawn = [], [], dict.fromkeys(styles, 0)
    no_landmarks = off_crop = 0
    for index in tqdm(order, desc="synthetic masks", disable=not progress, leave=False):
        if len(kept) >= count:
            break
        crop = train.crops[index]
        landmarks = crop_landmarks(crop, detect)
        if landmarks is None:
            no_landmarks += 1
            continue
        style = styles[int(rng.choice(len(styles), p=shares))]
        colour = MASK_COLOURS[int(rng.integers(len(MASK_COLOURS)))]
        masked = draw_on_crop(crop, landmarks, style, colour)
        if np.any(masked != crop, axis=-1).mean() < MIN_MASK_SHARE:
            off_crop += 1
            continue
        kept.append((index, masked))
        labels.append(LABELS.index(Label(STYLE_LABEL[style])))
        drawn[style] += 1
    report = SyntheticReport(len(bare), drawn, no_landmarks, off_crop)
    log.info("synthetic masks: %s", report.to_json())
    if not kept:
        return train.subset(np.zeros(len(train), bool)), report
    rows = np.asarray([i for i, _ in kept])
    return (
        CropSet(
            np.stack([c for _, c in kept]).astype(np.uint8),
            np.asarray(labels, np.int64),
            train.sides[rows],
            train.sources[rows],
            train.images[rows],
        ),
        report,
    )


def crop_landmarks(crop: np.ndarray, detect: Detect) -> dict[str, tuple[float, float]] | None:
    """The landmarks (in `crop` pixels) of the largest face the detector finds in `crop`."""
    scale = DETECT_SIDE / crop.shape[0]
    big = cv2.resize(_rgb(crop), (DETECT_SIDE, DETECT_SIDE), interpolation=cv2.INTER_CUBIC)
    faces = [face for face in detect(big) if face.landmarks and _is_the_crops_face(face)]
    if not faces:
        return None
    face = max(faces, key=lambda f: f.box.area)
    return {name: (x / scale, y / scale) for name, (x, y) in face.landmarks.items()}


def _is_the_crops_face(face: Face) -> bool:
    centre_x, centre_y = (face.box.x1 + face.box.x2) / 2, (face.box.y1 + face.box.y2) / 2
    middle = (DETECT_SIDE / 3, 2 * DETECT_SIDE / 3)
    return (
        face.box.side >= MIN_FACE_SHARE * DETECT_SIDE
        and middle[0] <= centre_x <= middle[1]
        and middle[0] <= centre_y <= middle[1]
    )


def draw_on_crop(
    crop: np.ndarray, landmarks: dict[str, tuple[float, float]], style: str, colour: tuple[int, int, int]
) -> np.ndarray:
    """`crop` (RGB or grey, like the crop spec) with a mask in `style` and `colour`."""
    drawn = draw_style(_rgb(crop), landmarks, style, colour)
    if crop.shape[-1] == 1:
        return cv2.cvtColor(drawn, cv2.COLOR_RGB2GRAY)[..., None]
    return drawn


def _rgb(crop: np.ndarray) -> np.ndarray:
    if crop.shape[-1] == 1:
        return cv2.cvtColor(crop, cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(crop)
