"""``maskgate train-face-check``: a detector folder's face-check net (:mod:`maskgate.gate.face_check`).

Beside the stock nets, the faces a tuned folder's nets add are checked by the stock ONet, whose
scores do not tell masked faces from the folder's false faces between 0.05 and 0.3 (a wall it
scored 0.147 that the classifier called masked at 0.94, masked faces at 0.05-0.1). The face-check
net learns exactly that difference, on the train split of the scenes (never their test images):

- **faces**: every drawn face of at least ``min_face`` px, cut at its box and at ``jitters``
  boxes a little off (a detector's box is never the drawn one), the faces the pair adds that
  fit a drawn face (IoU >= 0.5), and (``photos``) the largest face the pair finds in photos of
  masked people;
- **not faces**: ``random`` boxes of each scene away from every drawn face (IoU < 0.2), and the
  hard ones: what the folder's nets box at low thresholds away from every drawn face, and the
  faces the pair adds that fit none (IoU < 0.3), weighted ``hard_weight`` times.

Crops are cut as the classifier's are (:func:`maskgate.crop.crop_face` around the box in the drawn
boxes' convention), smaller (64 px). Training: balanced classes, mirror images, brightness and
contrast; the epoch of the lowest validation loss is kept. The net is exported to TFLite (checked
against Keras), added to the folder with its sha256, and the card's ``face_check`` entry records
the crop, data, settings, history and what the check does on the validation split's added faces.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from maskgate.config import DetectorConfig
from maskgate.core import Box
from maskgate.crop import CropSpec, crop_faces
from maskgate.training.augment import AugmentConfig
from maskgate.training.detector_samples import box_rows, iou_matrix, jitter_crops, random_crops, split_scenes

_GATE = DetectorConfig()
CHECK_KERAS = "check.keras"
CHECK_CURVES = "face_check_curves.png"
FACE_IOU, NOT_FACE_IOU, ADDED_NOT_FACE_IOU = 0.5, 0.2, 0.3
# The folder's nets at these thresholds box much that is not a face: the hard examples.
LOW_THRESHOLDS = (0.3, 0.5, 0.05)
CHECK_CROP = CropSpec(size=64, margin=0.2)  # the classifier's margin; a face or not needs fewer pixels
AUGMENT = AugmentConfig(
    rotation_deg=0, zoom=0, shift=0, brightness=0.2, contrast=0.2, saturation=0,
    blur_probability=0, lowres_probability=0,
)  # fmt: skip


class FaceCheckError(ValueError):
    """The data gives nothing to learn from."""


@dataclass(frozen=True)
class FaceCheckConfig:
    detector: str = "models/detector-masked"  # the folder whose added faces are checked
    data: str = "scenes/fmd"
    manifest: str = "models/default/manifest.csv.gz"
    crop: CropSpec = CHECK_CROP
    # The folder's nets' stage thresholds beside the stock nets (detector.thresholds): its P-net at
    # 0.3 adds more faces, true and false, to learn from, and is the setting measured with the check.
    thresholds: tuple[float, float, float] = (0.3, 0.7, 0.8)
    epochs: int = 8
    members: int = 3  # nets from successive seeds, averaged
    batch_size: int = 128
    learning_rate: float = 1e-3
    min_face: float = 20.0  # drawn faces smaller than this (px) are not trained on
    jitters: int = 3  # boxes a little off per drawn face, besides the drawn box
    random: int = 40  # random boxes per scene
    hard_weight: float = 3.0
    # Folders of photos of masked people (under the datasets root): the largest face the pair finds
    # in each is a face too, of more kinds of mask than the scenes show. Never the unmasked photos
    # (detector_compare's door-safety measure).
    photos: tuple[str, ...] = ()
    # The gate's defaults, at which the card's validation figures are measured.
    threshold: float = _GATE.face_check
    floor: float = _GATE.face_check_floor
    stock_check: float = _GATE.stock_check
    seed: int = 0
    threads: int = 2
    max_scenes: int = 0  # 0 = all (tests use a few)
    progress: bool = True


@dataclass(frozen=True, eq=False)
class CheckSamples:
    """Crops (N, S, S, C) uint8, is-a-face (N,) and whether each is a hard example (N,)."""

    crops: np.ndarray
    faces: np.ndarray
    hard: np.ndarray

    @staticmethod
    def empty(crop: CropSpec) -> CheckSamples:
        no = np.zeros(0, bool)
        return CheckSamples(np.zeros((0, crop.size, crop.size, crop.channels), np.uint8), no, no)

    @staticmethod
    def concat(parts: list[CheckSamples], crop: CropSpec) -> CheckSamples:
        if not parts:
            return CheckSamples.empty(crop)
        return CheckSamples(
            *(np.concatenate([getattr(p, k) for p in parts]) for k in ("crops", "faces", "hard"))
        )

    def counts(self) -> dict[str, int]:
        return {
            "faces": int(self.faces.sum()),
            "not_faces": int((~self.faces).sum()),
            "hard_not_faces": int((self.hard & ~self.faces).sum()),
        }


@dataclass(frozen=True, eq=False)
class AddedFace:
    """A face the pair adds on a scene: its stock ONet score, its fit to the drawn faces, its crop."""

    stock_score: float
    iou: float  # best IoU with a drawn face (0 without any)
    crop: np.ndarray


def pair_config(config: FaceCheckConfig) -> DetectorConfig:
    """The pair the net checks for: the folder's nets at `config.thresholds` beside the stock nets,
    with the stock check alone (a face-check net already in the folder must not pick the samples)."""
    return DetectorConfig(model=config.detector, with_stock=True, thresholds=config.thresholds, face_check=0)


def _boxes(rows: np.ndarray) -> list[Box]:
    return [Box(*map(float, row[:4])) for row in rows]


def _cut(image: np.ndarray, boxes: list[Box], crop: CropSpec) -> list[np.ndarray]:
    return crop_faces(image, boxes, crop)[0]


def added_faces(pair, image: np.ndarray, truth: np.ndarray, crop: CropSpec) -> list[AddedFace]:
    """The faces only the folder's nets find on `image` (drawn faces `truth`, (M, 4)), each cut in
    the drawn boxes' convention, with its stock ONet score and its best IoU with a drawn face."""
    _, added, scores = pair.stock_and_added(image)
    result = []
    for face, score in zip(added, scores, strict=True):
        box = pair.tuned_calibration.apply(face.box)
        cut = _cut(image, [box], crop)
        if cut:
            fit = iou_matrix(box_rows([box]), truth).max() if len(truth) else 0.0
            result.append(AddedFace(float(score), float(fit), cut[0]))
    return result


def scene_samples(
    image: np.ndarray,
    truth: np.ndarray,
    added: list[AddedFace],
    low_boxes: np.ndarray,
    config: FaceCheckConfig,
    rng: np.random.Generator,
) -> CheckSamples:
    """One scene's samples (module doc): `truth` the drawn faces (M, 4), `added` the pair's added
    faces, `low_boxes` the folder's nets' boxes at LOW_THRESHOLDS (K, 4)."""
    height, width = image.shape[:2]
    truth = np.asarray(truth, np.float64).reshape(-1, 4)
    sides = np.maximum(truth[:, 2] - truth[:, 0], truth[:, 3] - truth[:, 1])
    large = truth[sides >= config.min_face]
    jittered = jitter_crops(large, config.jitters, rng, scale=(0.9, 1.15), shift=0.1)
    face_crops = _cut(image, _boxes(np.concatenate([large, jittered])), config.crop)
    face_crops += [a.crop for a in added if a.iou >= FACE_IOU]

    def away(boxes: np.ndarray) -> np.ndarray:
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if not len(truth):
            return boxes
        return boxes[iou_matrix(boxes, truth).max(axis=1) < NOT_FACE_IOU]

    random = _cut(image, _boxes(away(random_crops(width, height, config.random, 20, rng))), config.crop)
    hard = _cut(image, _boxes(away(low_boxes)), config.crop)
    hard += [a.crop for a in added if a.iou < ADDED_NOT_FACE_IOU]
    crops = face_crops + random + hard
    return CheckSamples(
        np.stack(crops) if crops else CheckSamples.empty(config.crop).crops,
        np.array([True] * len(face_crops) + [False] * (len(random) + len(hard)), bool),
        np.array([False] * (len(face_crops) + len(random)) + [True] * len(hard), bool),
    )


def _scenes(config: FaceCheckConfig, root: Path, split: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(RGB pixels, drawn face boxes (M, 4)) of the scenes of `split` in the manifest, at full size."""
    scenes = split_scenes(config.data, root, Path(config.manifest), {split}, config.progress)
    for count, (_, rgb, truth) in enumerate(scenes, start=1):
        yield rgb, box_rows(t.box for t in truth)
        if config.max_scenes and count >= config.max_scenes:
            return


def build_samples(config: FaceCheckConfig, root: Path, split: str) -> tuple[CheckSamples, list[AddedFace]]:
    """The samples of every scene of `split`, and the pair's added faces there."""
    from maskgate.training.cropset import make_detector

    pair = make_detector(pair_config(config))
    low = make_detector(DetectorConfig(model=config.detector, thresholds=LOW_THRESHOLDS))
    rng = np.random.default_rng(config.seed)
    parts, all_added = [], []
    for rgb, truth in _scenes(config, root, split):
        added = added_faces(pair, rgb, truth, config.crop)
        # In the drawn boxes' convention, like the added faces and the drawn faces they are kept from.
        low_rows = box_rows(pair.tuned_calibration.apply(face.box) for face in low.detect(rgb))
        parts.append(scene_samples(rgb, truth, added, low_rows, config, rng))
        all_added += added
    if split == "train" and config.photos:
        photos = photo_faces(config, root, pair)
        parts.append(CheckSamples(photos, np.ones(len(photos), bool), np.zeros(len(photos), bool)))
    return CheckSamples.concat(parts, config.crop), all_added


def photo_faces(config: FaceCheckConfig, root: Path, pair) -> np.ndarray:
    """Crops of the largest face the pair finds in each photo of `config.photos` (its box in the
    drawn boxes' convention, as the check sees an added face); photos without one are skipped."""
    from tqdm import tqdm

    from maskgate.training.cropset import read_rgb
    from maskgate.training.datasets import is_image

    crops = []
    for folder in config.photos:
        paths = sorted(path for path in (root / folder).iterdir() if is_image(path))
        for path in tqdm(paths[: config.max_scenes or None], desc=folder, disable=not config.progress):
            rgb = read_rgb(path)
            faces = pair.detect(rgb) if rgb is not None else []
            if faces:
                largest = max(faces, key=lambda face: face.box.area)
                crops += _cut(rgb, [pair.tuned_calibration.apply(largest.box)], config.crop)
    return np.stack(crops) if crops else CheckSamples.empty(config.crop).crops


def sample_weights(samples: CheckSamples, hard_weight: float) -> np.ndarray:
    """Faces and not-faces weigh the same in all, then hard not-faces `hard_weight` times more:
    the check errs towards turning a face away (a masked face the stock ONet doubts is one of a
    few, a false face may count toward opening the door). Mean 1."""
    weights = np.ones(len(samples.faces))
    for kind in (True, False):
        chosen = samples.faces == kind
        if chosen.any():
            weights[chosen] = len(samples.faces) / (2 * chosen.sum())
    weights[samples.hard] *= hard_weight
    return weights / weights.mean() if len(weights) else weights


def check_figures(added: list[AddedFace], scores: np.ndarray, config: FaceCheckConfig) -> dict:
    """What the check does on added faces: true ones (IoU >= 0.5) and false ones (IoU < 0.3) that
    the stock ONet alone passes, and that pass with the face-check net's `scores` (the gate's rule,
    :func:`maskgate.gate.detector.passes_added_check`, at `config`'s settings)."""
    from maskgate.gate.detector import passes_added_check

    stock = np.array([a.stock_score for a in added])
    fits = np.array([a.iou for a in added])
    alone = passes_added_check(stock, config.stock_check, config.floor, config.threshold, None)
    scores = np.asarray(scores)
    with_net = passes_added_check(
        stock, config.stock_check, config.floor, config.threshold, scores.__getitem__
    )
    figures = {}
    for name, chosen in (("faces", fits >= FACE_IOU), ("false_faces", fits < ADDED_NOT_FACE_IOU)):
        figures[name] = {
            "added": int(chosen.sum()),
            "passed_stock_check": int((alone & chosen).sum()),
            "passed_with_face_check": int((with_net & chosen).sum()),
        }
    return figures


@dataclass(frozen=True)
class Member:
    seed: int
    history: dict[str, list[float]]
    best_epoch: int


def _fit_member(
    train: CheckSamples,
    val: CheckSamples,
    config: FaceCheckConfig,
    seed: int,
    path: Path,
    log: Callable[[str], None],
) -> Member:
    """One net from `seed`, keeping the epoch of the lowest validation loss (the last without `val`)."""
    import keras

    from maskgate.training.archs import face_check
    from maskgate.training.train import pixel_dataset

    keras.utils.set_random_seed(seed)

    def dataset(samples: CheckSamples, augment: AugmentConfig | None, shuffle: bool):
        targets = samples.faces.astype(np.float32)[:, None]
        weights = sample_weights(samples, config.hard_weight)
        return pixel_dataset(samples.crops, targets, weights, config.batch_size, augment, seed, shuffle)

    model = face_check(config.crop)
    model.compile(
        keras.optimizers.Adam(config.learning_rate), "binary_crossentropy", weighted_metrics=["accuracy"]
    )
    has_val = len(val.crops) > 0
    history = model.fit(
        dataset(train, AUGMENT, shuffle=True),
        validation_data=dataset(val, None, shuffle=False) if has_val else None,
        epochs=config.epochs,
        callbacks=[keras.callbacks.ModelCheckpoint(path, monitor="val_loss", save_best_only=True)]
        if has_val
        else [],
        verbose=2 if config.progress else 0,
        shuffle=False,  # the dataset shuffles itself (seeded)
    ).history
    if not has_val:
        model.save(path)
    best_epoch = int(np.argmin(history["val_loss"])) + 1 if has_val else len(history["loss"])
    log(f"face-check member {seed}: epoch {best_epoch} kept, losses {[round(v, 4) for v in history['loss']]}")
    return Member(seed, history, best_epoch)


def _averaged(members: list, crop: CropSpec):
    """One model whose face probability is the mean of the members': a single net's scores of the
    few doubted faces move by tenths from seed to seed (docs/detector.md)."""
    import keras
    from keras import layers

    if len(members) == 1:
        return members[0]
    inputs = keras.Input((crop.size, crop.size, crop.channels), name="pixels")
    outputs = []
    for i, member in enumerate(members):
        member.name = f"face_check_{i}"
        outputs.append(member(inputs))
    return keras.Model(inputs, layers.Average(name="face")(outputs), name="face_check_average")


@dataclass(frozen=True)
class FaceCheckResult:
    folder: Path
    entry: dict
    seconds: float


def train_face_check(
    out: Path, config: FaceCheckConfig, root: Path, log: Callable[[str], None] = print
) -> FaceCheckResult:
    """Train the face-check net for `config.detector` and write the folder with it into `out`
    (the detector folder itself, or a copy of it)."""
    import keras

    from maskgate.gate.face_check import CHECK_FILE
    from maskgate.training.archs import trainable_parameters
    from maskgate.training.export import check_agreement, to_tflite
    from maskgate.training.plots import training_curves
    from maskgate.training.train import configure_tensorflow

    started = time.monotonic()
    configure_tensorflow(config.threads, config.seed)
    source = Path(config.detector)
    if out.resolve() != source.resolve():
        shutil.copytree(source, out, dirs_exist_ok=True)
    train, _ = build_samples(config, root, "train")
    val, val_added = build_samples(config, root, "val")
    log(f"face-check samples: train {train.counts()}, val {val.counts()}")
    if not train.faces.any() or train.faces.all():
        raise FaceCheckError(f"{config.data}: the train split gives no faces or no not-faces to learn from")

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-face-check-") as scratch:
        staging = Path(scratch)
        members = [
            _fit_member(train, val, config, config.seed + i, staging / f"member{i}.keras", log)
            for i in range(config.members)
        ]
        loaded = [
            keras.models.load_model(staging / f"member{i}.keras", compile=False) for i in range(len(members))
        ]
        model = _averaged(loaded, config.crop)
        model.save(staging / CHECK_KERAS)
        to_tflite(model, staging / CHECK_FILE)
        agreement = check_agreement(
            model, staging / CHECK_FILE, val.crops[:256] if len(val.crops) else train.crops[:256]
        )
        epochs = min(len(m.history["loss"]) for m in members)
        mean_history = {
            key: list(np.mean([m.history[key][:epochs] for m in members], axis=0))
            for key in members[0].history
        }
        training_curves(mean_history, staging / CHECK_CURVES)
        val_scores = (
            model.predict(np.stack([a.crop for a in val_added]), verbose=0)[:, 0] if val_added else []
        )
        entry = {
            "crop": config.crop.to_json(),
            "parameters": trainable_parameters(model),
            "data": _data_record(config, root),
            "settings": {k: v for k, v in asdict(config).items() if k not in ("crop", "progress")},
            "samples": {"train": train.counts(), "val": val.counts()},
            "members": [
                {
                    "seed": m.seed,
                    "best_epoch": m.best_epoch,
                    "history": {
                        key: [round(float(v), 5) for v in values] for key, values in m.history.items()
                    },
                }
                for m in members
            ],
            "tflite_max_difference": agreement,
            "val_added_faces": check_figures(val_added, np.asarray(val_scores), config),
            "seconds": round(time.monotonic() - started, 1),
        }
        _install(staging, out, entry)
    return FaceCheckResult(out, entry, time.monotonic() - started)


def _data_record(config: FaceCheckConfig, root: Path) -> dict:
    """The card's account of the data: the scenes and each photo folder, with their licences."""
    from maskgate.training.datasets import DataSpec, licence_of

    scenes = DataSpec.parse(config.data, root)
    return {
        "source": config.data,
        "licence": licence_of(scenes, root),
        "split": f"{config.manifest} (train; val picks each net's epoch; test never read)",
        "photos": [{"source": folder, "licence": folder_licence(folder, root)} for folder in config.photos],
    }


def folder_licence(folder: str, root: Path) -> str:
    """The licence of the dataset `folder` belongs to (the README names datasets, not their class
    folders: ``folders/chandrikadeb7``, not ``folders/chandrikadeb7/with_mask``)."""
    from maskgate.training.datasets import DataSpec, licence_of

    path = Path(folder)
    for candidate in (path, *path.parents[:-1]):
        licence = licence_of(DataSpec.parse(str(candidate), root), root)
        if licence != "unknown":
            return licence
    return "unknown"


def _write_card(folder: Path, card: dict) -> None:
    """card.json replaced in one step: a reader sees the old card or the new one, never half of it."""
    partial = folder / "card.json.partial"
    partial.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(partial, folder / "card.json")


def _install(staging: Path, out: Path, entry: dict) -> None:
    """Move the new net into `out` so that the folder passes its sha256 check at every step: the
    card first forgets the old net, then the files move, then the card names them. An interrupted
    run leaves the folder usable (without a face check at worst)."""
    from maskgate.gate.detector import read_detector_card
    from maskgate.gate.face_check import CHECK_FILE, CHECK_KEY
    from maskgate.modelcard import sha256_file

    names = (CHECK_FILE, CHECK_KERAS, CHECK_CURVES)
    card = read_detector_card(out)
    card.pop(CHECK_KEY, None)
    for name in names:
        card.get("files", {}).pop(name, None)
    _write_card(out, card)
    for name in names:
        os.replace(staging / name, out / name)
    card[CHECK_KEY] = entry
    card.setdefault("files", {}).update({name: sha256_file(out / name) for name in names})
    _write_card(out, card)


def summary(entry: dict) -> str:
    """The card's face_check entry in a few lines."""
    lines = [
        f"face-check net: {entry['parameters']:,} parameters, {entry['crop']['size']} px, "
        f"{len(entry['members'])} members averaged"
    ]
    for name, figures in entry["val_added_faces"].items():
        lines.append(
            f"  val, {name} only the folder's nets find: {figures['added']}, through the stock check "
            f"{figures['passed_stock_check']}, with the face check {figures['passed_with_face_check']}"
        )
    return "\n".join(lines)
