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
from maskgate.gate.synthetic import LENS_COLOURS, MASK_COLOURS, Landmarks, MaskStyle, draw_glasses
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
MIN_GLASSES_SHARE = 0.03  # glasses cover less of a face than a mask
GLASSES_LABELS = (Label.WITHOUT_MASK, Label.WITH_MASK)


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
    styles = list(STYLE_SHARES)
    shares = np.asarray(list(STYLE_SHARES.values()))

    def draw(crop: np.ndarray, landmarks: Landmarks, _label: Label) -> tuple[np.ndarray, Label, str]:
        style = styles[int(rng.choice(len(styles), p=shares))]
        colour = MASK_COLOURS[int(rng.integers(len(MASK_COLOURS)))]
        return draw_on_crop(crop, landmarks, style, colour), Label(STYLE_LABEL[style]), style

    bare = _faces_labelled(train, Label.WITHOUT_MASK)
    return _drawn_crops(
        train, bare, count, detect, rng, draw, styles, MIN_MASK_SHARE, "synthetic masks", progress
    )


def synthetic_glasses_crops(
    train: CropSet, count: int, detect: Detect, rng: np.random.Generator, progress: bool = False
) -> tuple[CropSet, SyntheticReport]:
    """Up to `count` new crops: bare and masked faces of `train` (>= MIN_SIDE px) with glasses drawn
    over their eyes, sunglasses (a random lens of LENS_COLOURS) three times in four, else clear.

    The label stays the face's own: glasses say nothing about a mask. Sunglasses on bare faces are
    the hard negatives (dark sunglasses were called masked, the one error that opens the door);
    glasses on masked faces keep them from becoming a cue for "bare".
    """

    def draw(crop: np.ndarray, landmarks: Landmarks, label: Label) -> tuple[np.ndarray, Label, str]:
        sunglasses = rng.random() < 0.75
        lens = LENS_COLOURS[int(rng.integers(len(LENS_COLOURS)))] if sunglasses else None
        kind = f"{'sunglasses' if sunglasses else 'clear'} {label.value}"
        return on_rgb(crop, lambda rgb: draw_glasses(rgb, landmarks, lens)), label, kind

    faces = np.concatenate([_faces_labelled(train, label) for label in GLASSES_LABELS])
    kinds = [f"{kind} {label.value}" for kind in ("sunglasses", "clear") for label in GLASSES_LABELS]
    return _drawn_crops(
        train, faces, count, detect, rng, draw, kinds, MIN_GLASSES_SHARE, "synthetic glasses", progress
    )


def _faces_labelled(train: CropSet, label: Label) -> np.ndarray:
    return np.flatnonzero((train.labels == LABELS.index(label)) & (train.sides >= MIN_SIDE))


def _drawn_crops(
    train: CropSet,
    candidates: np.ndarray,
    count: int,
    detect: Detect,
    rng: np.random.Generator,
    draw: Callable[[np.ndarray, Landmarks, Label], tuple[np.ndarray, Label, str]],
    kinds: list[str],
    min_share: float,
    what: str,
    progress: bool,
) -> tuple[CropSet, SyntheticReport]:
    """Up to `count` crops of `candidates` (indices into `train`, taken in random order) changed by
    `draw`; a face without landmarks, or whose drawing changes under `min_share` of the crop (it
    fell mostly outside), is passed over."""
    kept, labels, drawn = [], [], dict.fromkeys(kinds, 0)
    no_landmarks = off_crop = 0
    for index in tqdm(rng.permutation(candidates), desc=what, disable=not progress, leave=False):
        if len(kept) >= count:
            break
        crop = train.crops[index]
        landmarks = crop_landmarks(crop, detect)
        if landmarks is None:
            no_landmarks += 1
            continue
        changed, label, kind = draw(crop, landmarks, LABELS[int(train.labels[index])])
        if np.any(changed != crop, axis=-1).mean() < min_share:
            off_crop += 1
            continue
        kept.append((index, changed))
        labels.append(LABELS.index(label))
        drawn[kind] += 1
    report = SyntheticReport(len(candidates), drawn, no_landmarks, off_crop)
    log.info("%s: %s", what, report.to_json())
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


def crop_landmarks(crop: np.ndarray, detect: Detect) -> Landmarks | None:
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
    crop: np.ndarray, landmarks: Landmarks, style: str, colour: tuple[int, int, int]
) -> np.ndarray:
    """`crop` (RGB or grey, like the crop spec) with a mask in `style` and `colour`."""
    return on_rgb(crop, lambda rgb: draw_style(rgb, landmarks, style, colour))


def on_rgb(crop: np.ndarray, change: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`change` applied to `crop` in RGB, handed back in the crop's own colour (RGB or grey)."""
    drawn = change(_rgb(crop))
    if crop.shape[-1] == 1:
        return cv2.cvtColor(drawn, cv2.COLOR_RGB2GRAY)[..., None]
    return drawn


def _rgb(crop: np.ndarray) -> np.ndarray:
    if crop.shape[-1] == 1:
        return cv2.cvtColor(crop, cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(crop)
