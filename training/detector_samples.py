"""Training samples for MTCNN's networks, made the way the MTCNN paper makes them (issue #9).

A sample is a square crop of a scene, resized to the network's input (12, 24 or 48 px), with:

- a class by its best IoU with the annotated faces: positive (>= 0.65), part face (0.4-0.65),
  negative (< 0.3); crops in between are not used, as in the paper;
- box-regression targets in the `mtcnn` package's convention, so that the fine-tuned nets stay
  compatible with :mod:`maskgate.gate.mtcnn_litert`'s decoding: the detector moves each side of a
  box by ``offset * size``, with ``size = x2 - x1 + 1`` for R- and O-net (``adjust_bboxes``) and
  ``size = x2 - x1`` for P-net's 12 px cells (11 in the level's pixels), so the target is
  ``(truth - crop) / size``.

Crops come from three places: the boxes the previous stock stage proposes on the scene (what
the network will be shown at the gate; the paper's hard examples), random jitter around every
annotated face (enough positives and part faces for every class), and random squares away from
faces (negatives). Patches are cut with the detector's own :func:`patches` (the same bilinear
sampling as ``tf.image.crop_and_resize``), from the image normalised as the detector does it.

Synthetic masks (:func:`synthetic_scenes`): bare faces get a mask drawn from the stock
detector's landmarks by :func:`maskgate.gate.synthetic.draw_mask`, worn properly, below the nose
or on the chin, because real improperly worn masks are scarce (123 boxes in fmd).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from maskgate.core import Box, Label
from maskgate.gate.detector import resize_to_width
from maskgate.gate.synthetic import MASK_COLOURS, SURGICAL_BLUE, MaskStyle, draw_mask
from maskgate.training.metrics import GroundTruth

POSITIVE_IOU, PART_IOU, NEGATIVE_IOU = 0.65, 0.4, 0.3
NETWORK_SIZE = {"pnet": 12, "rnet": 24, "onet": 48}


class Kind(enum.IntEnum):
    IGNORE = -1
    NEGATIVE = 0
    POSITIVE = 1
    PART = 2


@dataclass
class Scene:
    """One image at the detector's working width, its annotated faces in that image's pixels."""

    path: str
    image: np.ndarray  # RGB uint8
    boxes: np.ndarray  # (M, 4) x1, y1, x2, y2
    labels: list[str]
    sides: np.ndarray  # (M,) longer side in the original image (the size bands' measure)
    synthetic: str = ""  # mask style drawn, "" for a real scene
    focus: int = -1  # the face the synthetic mask is drawn on (samples come from around it only)


@dataclass
class Samples:
    """Network inputs (normalised patches) with their class, regression and landmark targets."""

    patches: np.ndarray  # (N, S, S, 3) float32, (pixel - 127.5) / 128
    kinds: np.ndarray  # (N,) Kind
    offsets: np.ndarray  # (N, 4) regression targets (0 for negatives)
    labels: np.ndarray  # (N,) face class of the matched face ("" for negatives), for the card
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 10), np.float32))
    # (N,) longer side of the matched face in the original image (the size bands' measure), 0 for
    # negatives; empty when unknown
    sides: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return len(self.kinds)

    @staticmethod
    def concat(parts: Sequence[Samples], size: int) -> Samples:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Samples(
                np.zeros((0, size, size, 3), np.float32), np.zeros(0, int), np.zeros((0, 4)), np.zeros(0)
            )
        return Samples(
            np.concatenate([p.patches for p in parts]),
            np.concatenate([p.kinds for p in parts]),
            np.concatenate([p.offsets for p in parts]).astype(np.float32),
            np.concatenate([p.labels for p in parts]),
            sides=(
                np.concatenate([p.sides for p in parts])
                if all(len(p.sides) == len(p) for p in parts)
                else np.zeros(0)
            ),
        )

    def counts(self) -> dict[str, int]:
        return {
            kind.name.lower(): int((self.kinds == kind).sum()) for kind in Kind if kind is not Kind.IGNORE
        }


# -- geometry ---------------------------------------------------------------------------------------


def box_rows(boxes: Iterable[Box]) -> np.ndarray:
    """`boxes` as corner rows (N, 4) ``x1, y1, x2, y2``, the form :func:`iou_matrix` takes."""
    return np.asarray([[b.x1, b.y1, b.x2, b.y2] for b in boxes], np.float64).reshape(-1, 4)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (N, 4) with every box in `b` (M, 4), as :meth:`Box.iou` computes it."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def classify_crops(
    crops: np.ndarray, truth: np.ndarray, part_iou: float = PART_IOU, negative_iou: float = NEGATIVE_IOU
) -> tuple[np.ndarray, np.ndarray]:
    """Each crop's :class:`Kind` by its best IoU with `truth`, and the index of that face (-1: none)."""
    if len(truth) == 0:
        return np.full(len(crops), Kind.NEGATIVE, int), np.full(len(crops), -1, int)
    ious = iou_matrix(crops, truth)
    best, match = ious.max(axis=1), ious.argmax(axis=1)
    kinds = np.full(len(crops), Kind.IGNORE, int)
    kinds[best < negative_iou] = Kind.NEGATIVE
    kinds[(best >= part_iou) & (best < POSITIVE_IOU)] = Kind.PART
    kinds[best >= POSITIVE_IOU] = Kind.POSITIVE
    return kinds, np.where(kinds == Kind.NEGATIVE, -1, match)


def regression_targets(crops: np.ndarray, truth: np.ndarray, network: str) -> np.ndarray:
    """Offsets that move each crop onto its face, as the detector applies them (see module doc)."""
    crops, truth = np.asarray(crops, np.float64), np.asarray(truth, np.float64)
    extra = 0.0 if network == "pnet" else 1.0
    w = crops[:, 2] - crops[:, 0] + extra
    h = crops[:, 3] - crops[:, 1] + extra
    return ((truth - crops[:, :4]) / np.stack([w, h, w, h], axis=1)).astype(np.float32)


def jitter_crops(
    truth: np.ndarray,
    per_face: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.8, 1.25),
    shift: float = 0.2,
) -> np.ndarray:
    """Random squares around each face: side `scale` times the face's, centre moved up to `shift` side."""
    if len(truth) == 0 or per_face == 0:
        return np.zeros((0, 4))
    faces = np.repeat(np.asarray(truth, np.float64), per_face, axis=0)
    side = np.maximum(faces[:, 2] - faces[:, 0], faces[:, 3] - faces[:, 1])
    cx, cy = (faces[:, 0] + faces[:, 2]) / 2, (faces[:, 1] + faces[:, 3]) / 2
    new = side * rng.uniform(*scale, len(faces))
    cx += side * rng.uniform(-shift, shift, len(faces))
    cy += side * rng.uniform(-shift, shift, len(faces))
    return np.stack([cx - new / 2, cy - new / 2, cx + new / 2, cy + new / 2], axis=1)


def random_crops(width: int, height: int, count: int, min_side: int, rng: np.random.Generator) -> np.ndarray:
    """`count` random squares inside the image (the paper's negatives, before the IoU check)."""
    top = max(min_side + 1, min(width, height) // 2)
    side = rng.uniform(min_side, top, count)
    x1 = rng.uniform(0, np.maximum(width - side, 1))
    y1 = rng.uniform(0, np.maximum(height - side, 1))
    return np.stack([x1, y1, x1 + side, y1 + side], axis=1)


# -- scenes -----------------------------------------------------------------------------------------


def split_scenes(
    data: str, root: Path, manifest: Path, splits: set[str], progress: bool = True
) -> Iterator[tuple[str, np.ndarray, tuple[GroundTruth, ...]]]:
    """(path, RGB pixels, drawn faces) of each VOC scene of `data` whose split in `manifest` is one
    of `splits` (never an unlisted image), at full size, one at a time."""
    from maskgate.training.datasets import DataSpec, scan
    from maskgate.training.evaluate import labelled_scenes
    from maskgate.training.split import split_images

    spec = DataSpec.parse(data, root)
    wanted = split_images(manifest, splits)
    images, _ = scan(spec)
    yield from labelled_scenes(spec, images, wanted, progress=progress)


def load_scenes(
    data: str, root: Path, manifest: Path, splits: set[str], working_width: int, progress: bool = True
) -> list[Scene]:
    """The VOC scenes of `data` whose split in `manifest` is one of `splits`, at `working_width`.

    The manifest is the shipped classifier's (models/default): its test images are the held-out
    scenes every detector is measured on, so they must never reach training.
    """
    scenes = []
    for path, rgb, truth in split_scenes(data, root, manifest, splits, progress):
        small, factor = resize_to_width(rgb, working_width)
        labels = [t.label.value for t in truth]
        sides = np.asarray([t.box.side for t in truth], np.float64)
        scenes.append(Scene(path, small, box_rows(t.box for t in truth) * factor, labels, sides))
    return scenes


CHIN = "chin"
SYNTHETIC_STYLES = (MaskStyle.PROPER.value, MaskStyle.BELOW_NOSE.value, CHIN)
STYLE_LABEL = {
    MaskStyle.PROPER.value: Label.WITH_MASK.value,
    MaskStyle.BELOW_NOSE.value: Label.IMPROPER_MASK.value,
    CHIN: Label.IMPROPER_MASK.value,
}


def draw_style(
    image: np.ndarray,
    landmarks: dict[str, tuple[float, float]],
    style: str,
    colour: tuple[int, int, int] = SURGICAL_BLUE,
) -> np.ndarray:
    """`image` with a mask of `colour` drawn in `style`; "chin" is :func:`draw_mask`'s below-nose
    mask moved down.

    The chin mask reuses the below-nose drawing with the nose and mouth landmarks lowered by the
    nose-to-mouth distance, so the mask's top edge sits under the mouth.
    """
    if style != CHIN:
        return draw_mask(image, landmarks, MaskStyle(style), colour)
    nose_y = landmarks["nose"][1]
    mouth_y = (landmarks["mouth_left"][1] + landmarks["mouth_right"][1]) / 2
    drop = 1.1 * max(mouth_y - nose_y, 1.0)
    lowered = dict(landmarks)
    for name in ("nose", "mouth_left", "mouth_right"):
        x, y = landmarks[name]
        lowered[name] = (x, y + drop)
    return draw_mask(image, lowered, MaskStyle.BELOW_NOSE, colour)


def synthetic_scenes(
    scenes: Iterable[Scene], detector, rng: np.random.Generator, min_side: float = 20
) -> list[Scene]:
    """For each bare face the stock detector finds (IoU >= 0.5, landmarks), a copy of its scene with
    a mask drawn on it in a random style and colour (real masks are black, white, blue...); the
    face keeps its annotated box, its label becomes the style's. Faces under `min_side` px are
    skipped: landmarks there are too coarse to draw from."""
    out = []
    for scene in scenes:
        bare = [i for i, label in enumerate(scene.labels) if label == Label.WITHOUT_MASK.value]
        bare = [
            i
            for i in bare
            if max(scene.boxes[i, 2] - scene.boxes[i, 0], scene.boxes[i, 3] - scene.boxes[i, 1]) >= min_side
        ]
        if not bare:
            continue
        faces = [f for f in detector.detect(scene.image) if f.landmarks]
        if not faces:
            continue
        found = box_rows(f.box for f in faces)
        ious = iou_matrix(scene.boxes[bare], found)
        for row, index in enumerate(bare):
            if ious[row].max() < 0.5:
                continue
            style = SYNTHETIC_STYLES[int(rng.integers(len(SYNTHETIC_STYLES)))]
            colour = MASK_COLOURS[int(rng.integers(len(MASK_COLOURS)))]
            image = draw_style(scene.image, dict(faces[int(ious[row].argmax())].landmarks), style, colour)
            labels = list(scene.labels)
            labels[index] = STYLE_LABEL[style]
            out.append(Scene(scene.path, image, scene.boxes.copy(), labels, scene.sides.copy(), style, index))
    return out


# -- samples ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleConfig:
    jitter_per_face: int = 8  # random crops around each annotated face
    negatives_per_image: int = 40  # random squares away from faces
    proposals_per_image: int = 80  # at most this many boxes of the previous stage, best first
    min_face: int = 12  # faces smaller than this (working-width px) give no positives
    part_iou: float = PART_IOU  # lowest IoU of a part face (the paper's 0.4)
    negative_iou: float = NEGATIVE_IOU  # highest IoU of a negative (the paper's 0.3)
    seed: int = 1337


def scene_samples(
    scene: Scene, network: str, proposals: np.ndarray, config: SampleConfig, rng: np.random.Generator
) -> Samples:
    """All samples for `network` from one scene: previous-stage proposals, jitter, random negatives."""
    size = NETWORK_SIZE[network]
    height, width = scene.image.shape[:2]
    sides = np.maximum(scene.boxes[:, 2] - scene.boxes[:, 0], scene.boxes[:, 3] - scene.boxes[:, 1])
    usable = scene.boxes[sides >= config.min_face]
    proposals = proposals[: config.proposals_per_image, :4].reshape(-1, 4)
    negatives = random_crops(width, height, config.negatives_per_image, max(config.min_face, 12), rng)
    if scene.focus >= 0:  # a synthetic copy: only what overlaps its masked face is new
        usable = scene.boxes[scene.focus : scene.focus + 1]
        proposals = proposals[iou_matrix(proposals, usable)[:, 0] > 0] if len(proposals) else proposals
        negatives = negatives[:0]
    crops = np.concatenate([proposals, jitter_crops(usable, config.jitter_per_face, rng), negatives])
    crops = crops[(crops[:, 2] - crops[:, 0] >= 4) & (crops[:, 3] - crops[:, 1] >= 4)]
    kinds, match = classify_crops(crops, scene.boxes, config.part_iou, config.negative_iou)
    keep = kinds != Kind.IGNORE
    crops, kinds, match = crops[keep], kinds[keep], match[keep]
    offsets = np.zeros((len(crops), 4), np.float32)
    faces = kinds != Kind.NEGATIVE
    if faces.any():
        offsets[faces] = regression_targets(crops[faces], scene.boxes[match[faces]], network)
    labels = np.asarray([scene.labels[m] if m >= 0 else "" for m in match], dtype=object)
    face_sides = np.asarray([scene.sides[m] if m >= 0 else 0.0 for m in match], np.float64)
    return Samples(cut(scene.image, crops, size), kinds, offsets, labels, sides=face_sides)


def cut(image: np.ndarray, crops: np.ndarray, size: int) -> np.ndarray:
    """Normalised size x size patches for `crops`, as the detector cuts them.

    R- and O-net patches are the detector's own (:func:`patches`). P-net sees a 12 px window of a
    pyramid level that was shrunk with area averaging, so its patches are cut at 4x and shrunk
    the same way rather than sampled at 12 points (which would alias).
    """
    from maskgate.gate.mtcnn_litert import normalise, patches

    if len(crops) == 0:
        return np.zeros((0, size, size, 3), np.float32)
    normalised = normalise(image)
    if size > NETWORK_SIZE["pnet"]:
        return patches(normalised, np.asarray(crops, np.float32), size)
    big = patches(normalised, np.asarray(crops, np.float32), 4 * size)
    return np.stack([cv2.resize(p, (size, size), interpolation=cv2.INTER_AREA) for p in big])


def stage_proposals(detector, image: np.ndarray, network: str) -> np.ndarray:
    """The boxes the stock detector hands to `network`: P-net's for R-net, R-net's for O-net."""
    from maskgate.gate.mtcnn_litert import normalise

    if network == "pnet":
        return np.zeros((0, 5))
    normalised = normalise(image)
    low, mid, _ = detector.config.thresholds
    boxes = detector._proposals(normalised, low)
    if network == "onet" and len(boxes):
        boxes = detector._refine(normalised, boxes, mid)
    return boxes


def build_samples(
    scenes: Sequence[Scene], network: str, detector, config: SampleConfig, progress: bool = True
) -> Samples:
    rng = np.random.default_rng(config.seed)
    parts = []
    for scene in tqdm(scenes, desc=f"samples {network}", disable=not progress, leave=False):
        proposals = stage_proposals(detector, scene.image, network)
        parts.append(scene_samples(scene, network, proposals, config, rng))
    return Samples.concat(parts, NETWORK_SIZE[network])


def flip(samples: Samples) -> Samples:
    """Mirrored copies: a face mirrored is a face, its left and right offsets swap and change sign."""
    offsets = samples.offsets.copy()
    offsets[:, [0, 2]] = -samples.offsets[:, [2, 0]]
    return Samples(
        samples.patches[:, :, ::-1].copy(),
        samples.kinds.copy(),
        offsets,
        samples.labels.copy(),
        sides=samples.sides.copy(),
    )
