"""Training: data sources -> split by source image -> fit with early stopping -> model folder.

The model folder (``maskgate.modelcard``) gets ``model.keras``, ``model.tflite`` (checked
against Keras), ``manifest.csv.gz`` (every file, its hash and its split), the PNG plots and
``card.json`` with the held-out metrics as measured on the TFLite model the gate runs.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from maskgate.config import DetectorConfig
from maskgate.core import LABELS
from maskgate.crop import CropSpec
from maskgate.modelcard import (
    CARD_FILE,
    RUNTIME_FILE,
    ModelCard,
    ModelFileError,
    load_card,
    version_problem,
    write_card,
)
from maskgate.training import cropset, plots
from maskgate.training.archs import ARCHS, trainable_parameters, with_flip_average
from maskgate.training.augment import AugmentConfig, augment_batch
from maskgate.training.cropset import CropSet
from maskgate.training.datasets import (
    DataSpec,
    Layout,
    SourceImage,
    SourceReport,
    is_non_commercial,
    licence_of,
)
from maskgate.training.export import check_agreement, tflite_predict, to_tflite
from maskgate.training.label_review import LabelReview
from maskgate.training.metrics import GATE_BAND, crop_metrics_by_band
from maskgate.training.split import (
    MANIFEST_FILE,
    ManifestRow,
    Split,
    SplitConfig,
    assign,
    data_hash,
    manifest_rows,
    read_manifest,
    write_manifest,
)
from maskgate.training.synthetic_crops import synthetic_masked_crops

log = logging.getLogger(__name__)

KERAS_FILE = "model.keras"
CURVES_FILE = "training_curves.png"
CONFUSION_FILE = "confusion_matrix.png"
AGREEMENT_SAMPLE = 256  # crops on which Keras and TFLite must agree at export


class TrainError(ValueError):
    """A training run that cannot start as asked (no data for a split, an --out that is not a model)."""


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "compact"
    crop: CropSpec | None = None  # None: the architecture's own
    epochs: int = 40
    batch_size: int = 64
    patience: int = 10  # epochs without a better validation loss before stopping
    learning_rate: float | None = None  # None: the architecture's own
    label_smoothing: float = 0.05
    class_weight_power: float = 0.5  # 1: fully balanced; 0: none (sqrt tempers the rare class's noise)
    split: SplitConfig = field(default_factory=SplitConfig)
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    max_train: int | None = None  # a random subset of the training split (slow architectures on a CPU)
    threads: int = 2
    progress: bool = True
    detector: DetectorConfig = field(default_factory=DetectorConfig)  # the gate's: it crops `photos`
    synthetic_masks: int = 0  # bare training faces that get a drawn mask (synthetic_crops.py)
    label_review: LabelReview | None = None  # corrections to the sources' labels (label_review.py)
    init_from: Path | None = None  # a model folder of the same arch and crop to start from
    run_seed: int | None = None  # weights, shuffling, augmentation, synthetic masks; None: the split's seed

    @property
    def effective_run_seed(self) -> int:
        """The seed of everything random in the run but the split (so ensemble members can differ)."""
        return self.split.seed if self.run_seed is None else self.run_seed

    @property
    def crop_spec(self) -> CropSpec:
        return self.crop or ARCHS[self.arch].crop

    @property
    def lr(self) -> float:
        return self.learning_rate or ARCHS[self.arch].learning_rate


@dataclass
class PoolData:
    """All crops of the requested sources, each with its split, and what was read from where."""

    crops: CropSet
    splits: np.ndarray  # str (N,), Split values
    specs: list[DataSpec]
    reports: list[SourceReport]
    rows: list[ManifestRow]

    def part(self, split: Split) -> CropSet:
        return self.crops.subset(self.splits == split.value)


def load_pool(
    specs: Sequence[DataSpec],
    crop: CropSpec,
    split: SplitConfig,
    cache_dir: Path | None,
    progress: bool = True,
    detector: DetectorConfig | None = None,
    review: LabelReview | None = None,
) -> PoolData:
    detector_config = cropset.photo_detector_config(detector)
    sets, reports = [], []
    images: dict[str, Sequence[SourceImage]] = {}
    for spec in specs:
        crops, report, source_images = cropset.load_source(
            spec,
            crop,
            cache_dir,
            cropset.detector_factory(detector_config),
            cropset.detector_id(detector_config),
            progress,
            review,
        )
        log.info("%s", report.summary())
        sets.append(crops)
        reports.append(report)
        images[spec.name] = source_images
    by_image = assign(images, split)
    crops = CropSet.concat(sets) if sets else CropSet.empty(crop)
    splits = np.asarray(
        [by_image[(s, i)].value for s, i in zip(crops.sources, crops.images, strict=True)], dtype="<U5"
    )
    return PoolData(crops, splits, list(specs), reports, manifest_rows(images, by_image))


def class_weights(labels: np.ndarray, power: float) -> np.ndarray:
    """Per-class loss weights ~ (n / (k * count)) ** power, normalised to a mean sample weight of 1."""
    counts = np.bincount(labels, minlength=len(LABELS)).astype(float)
    present = counts > 0
    weights = np.zeros(len(LABELS))
    weights[present] = (counts[present].sum() / (present.sum() * counts[present])) ** power
    return weights / (weights[labels].mean() if len(labels) else 1.0)


def make_dataset(
    crops: CropSet,
    batch_size: int,
    weights: np.ndarray | None,
    augment: AugmentConfig | None,
    seed: int,
    shuffle: bool,
):
    onehot = np.eye(len(LABELS), dtype=np.float32)[crops.labels]
    sample_w = weights[crops.labels] if weights is not None else np.ones(len(crops))
    return pixel_dataset(crops.crops, onehot, sample_w, batch_size, augment, seed, shuffle)


def pixel_dataset(
    pixels: np.ndarray,
    targets: np.ndarray,
    sample_weights: np.ndarray,
    batch_size: int,
    augment: AugmentConfig | None,
    seed: int,
    shuffle: bool,
):
    """Batches of (0-255 float32 pixels, augmented if `augment`; targets; per-sample weights)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((pixels, targets, sample_weights.astype(np.float32)))
    if shuffle:
        ds = ds.shuffle(len(pixels), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)

    def prepare(x, y, w):
        x = tf.cast(x, tf.float32)
        if augment is not None:
            x = augment_batch(x, augment)
        return x, y, w

    return ds.map(prepare, num_parallel_calls=1).prefetch(2)


def learning_rate_schedule(peak: float, epochs: int, steps_per_epoch: int):
    """Linear warm-up over the first epoch (batch norm statistics settle), then cosine decay to 1 %.

    A fixed schedule rather than "reduce on plateau": the validation loss is noisy with ~50
    improper faces in it, and a plateau rule cut the rate too early in our runs.
    """
    import keras

    warmup = steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak * 0.1,
        warmup_target=peak,
        warmup_steps=warmup,
        decay_steps=max(1, epochs * steps_per_epoch - warmup),
        alpha=0.01,
    )


def save_keras(model, path: Path) -> None:
    """Save weights and architecture without the optimizer state (a third of the size; the
    retraining job compiles afresh)."""
    import keras

    # Rebuilt from its config: uncompiled, so no optimizer variables (clone_model keeps them).
    plain = keras.Model.from_config(model.get_config())
    plain.set_weights(model.get_weights())
    plain.save(path)


def configure_tensorflow(threads: int, seed: int) -> None:
    """Threads and seeds for a training run (threads only if TensorFlow has not started yet)."""
    import keras
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    except RuntimeError:
        pass  # already initialised in this process (tests): keep its settings
    keras.utils.set_random_seed(seed)


@dataclass(frozen=True)
class TrainResult:
    folder: Path
    card: ModelCard
    seconds: float


def train(
    specs: Sequence[DataSpec],
    out: Path,
    config: TrainConfig,
    cache_dir: Path | None,
    datasets_root: Path | None = None,
) -> TrainResult:
    """Train on `specs` and write the model folder `out` (replaced as a whole when it is done)."""
    started = time.monotonic()
    check_out_folder(out)
    if config.synthetic_masks < 0:
        raise TrainError(f"synthetic masks must be 0 or more, not {config.synthetic_masks}")
    start_card = _start_card(config) if config.init_from else None
    configure_tensorflow(config.threads, config.effective_run_seed)
    pool = load_pool(
        specs,
        config.crop_spec,
        config.split,
        cache_dir,
        config.progress,
        config.detector,
        config.label_review,
    )
    if config.init_from:
        _check_unseen(config.init_from, pool.rows)
    train_set, val_set, test_set = (pool.part(s) for s in (Split.TRAIN, Split.VAL, Split.TEST))
    if config.max_train and len(train_set) > config.max_train:
        rng = np.random.default_rng(config.effective_run_seed)
        train_set = train_set.subset(np.sort(rng.choice(len(train_set), config.max_train, replace=False)))
    if len(train_set) == 0 or len(val_set) == 0:
        raise TrainError(f"not enough data: {len(train_set)} training and {len(val_set)} validation crops")
    synthetic = None
    if config.synthetic_masks:
        drawn, synthetic = synthetic_masked_crops(
            train_set,
            config.synthetic_masks,
            cropset.make_detector(cropset.photo_detector_config(config.detector)).detect,
            np.random.default_rng(config.effective_run_seed),
            config.progress,
        )
        train_set = CropSet.concat([train_set, drawn])
    log.info(
        "split by source image: train %s, val %s, test %s",
        *(p.counts() for p in (train_set, val_set, test_set)),
    )
    weights = class_weights(train_set.labels, config.class_weight_power)
    log.info(
        "class weights %s",
        dict(zip((label.value for label in LABELS), weights.round(3).tolist(), strict=True)),
    )

    fit_started = time.monotonic()
    model, history = _fit(config, train_set, val_set, weights)
    fit_seconds = time.monotonic() - fit_started
    arch = ARCHS[config.arch]
    final = with_flip_average(model) if arch.flip_average else model

    # Written beside the target and swapped in at the end: a gate never sees half a model.
    work = out.with_name(f".{out.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    save_keras(final, work / KERAS_FILE)
    to_tflite(final, work / RUNTIME_FILE)
    agreement = check_agreement(
        final, work / RUNTIME_FILE, (test_set if len(test_set) else val_set).crops[:AGREEMENT_SAMPLE]
    )
    write_manifest(work / MANIFEST_FILE, pool.rows)
    metrics: dict[str, object] = {"tflite_keras_max_diff": agreement}
    for name, part in (("val", val_set), ("test", test_set)):
        if len(part):
            predicted = tflite_predict(work / RUNTIME_FILE, part.crops).argmax(axis=1)
            metrics[name] = {
                b: m.to_json() for b, m in crop_metrics_by_band(part.labels, predicted, part.sides).items()
            }
    best_epoch = int(np.argmin(history["val_loss"])) + 1
    plots.training_curves(history, work / CURVES_FILE, best_epoch)
    shown = "test" if "test" in metrics else "val"
    matrix = np.asarray(metrics[shown][GATE_BAND]["confusion"])  # type: ignore[index]
    plots.confusion_plot(matrix, work / CONFUSION_FILE, f"{shown} split, faces >= 32 px (TFLite)")

    created = datetime.now(UTC)
    card = ModelCard(
        version=model_version(out, created),
        labels=LABELS,
        crop=config.crop_spec,
        arch=config.arch,
        created=created.isoformat(timespec="seconds"),
        parameters=trainable_parameters(model),
        metrics=metrics,
        data=[
            _source_json(spec, rep, datasets_root) for spec, rep in zip(pool.specs, pool.reports, strict=True)
        ],
        data_hash=data_hash(pool.rows),
        training={
            "epochs_run": len(history["loss"]),
            "best_epoch": best_epoch,
            "seconds": round(time.monotonic() - started, 1),
            "fit_seconds": round(fit_seconds, 1),
            "seed": config.split.seed,
            "run_seed": config.effective_run_seed,
            "split": {"val": config.split.val, "test": config.split.test, "by": "source image"},
            "crops": {s.value: pool.part(s).counts() for s in Split} | {"train_used": train_set.counts()},
            "flip_average": arch.flip_average,
            "batch_size": config.batch_size,
            "learning_rate": config.lr,
            "label_smoothing": config.label_smoothing,
            "class_weights": {label.value: float(w) for label, w in zip(LABELS, weights, strict=True)},
            "augment": config.augment.to_json() if config.augment else None,
            "max_train": config.max_train,
            "synthetic_masks": synthetic.to_json() if synthetic else None,
            "label_review": config.label_review.to_json() if config.label_review else None,
            "started_from": start_card.version if start_card else None,
            # What cut the `photos` crops (the gate must calibrate its boxes the same way); None
            # when no source needed a detector: annotated boxes fit any calibrated gate.
            "detector_for_photos": cropset.photo_detector_record(config.detector)
            if any(spec.layout is Layout.PHOTOS for spec in specs)
            else None,
            "history": {k: [round(float(v), 5) for v in values] for k, values in history.items()},
        },
    )
    card = write_card(work, card)
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    return TrainResult(out, card, time.monotonic() - started)


def model_version(out: Path, created: datetime) -> str:
    """The version of the model written to `out`: the folder's name and the time."""
    return f"{out.name}-{created:%Y%m%d-%H%M%S}"


def check_out_folder(out: Path) -> None:
    """Refuse to replace a folder that holds something other than a model (e.g. `--out .`), and a
    folder name that would give a model version the gates refuse to load (checked before any work)."""
    if out.exists() and any(out.iterdir()) and not (out / CARD_FILE).is_file():
        raise TrainError(f"{out} exists and is not a model folder (no {CARD_FILE}): choose another --out")
    version = model_version(out, datetime.now(UTC))
    if problem := version_problem(version):
        raise TrainError(
            f"--out {out}: the folder's name would give a {problem}: choose another name "
            f"(the version is the name and {len(version) - len(out.name)} more characters)"
        )


def _start_card(config: TrainConfig) -> ModelCard:
    """The card of `config.init_from`, checked: intact, same architecture, same crop."""
    try:
        card = load_card(config.init_from)
    except ModelFileError as e:
        raise TrainError(f"cannot start from {config.init_from}: {e}") from e
    if card.arch != config.arch or card.crop != config.crop_spec:
        raise TrainError(
            f"cannot start from {config.init_from}: it is {card.arch} with crop {card.crop}, "
            f"this run trains {config.arch} with crop {config.crop_spec}"
        )
    if KERAS_FILE not in card.files:
        raise TrainError(f"cannot start from {config.init_from}: it has no {KERAS_FILE} to take weights from")
    return card


def _check_unseen(folder: Path, rows: Sequence[ManifestRow]) -> None:
    """Refuse to start from a model that trained on this run's validation or test images (matched by
    content): early stopping and the card's held-out metrics would be measured on seen faces."""
    manifest = folder / MANIFEST_FILE
    if not manifest.is_file():
        raise TrainError(f"cannot start from {folder}: no {MANIFEST_FILE}: its training images are unknown")
    trained = {row.sha256 for row in read_manifest(manifest) if row.split is Split.TRAIN}
    held_out = [row for row in rows if row.split is not Split.TRAIN]
    seen = sum(row.sha256 in trained for row in held_out)
    if seen:
        raise TrainError(
            f"cannot start from {folder}: it was trained on {seen} of this run's {len(held_out)} validation "
            "and test images (another seed, split or data); start from a model trained on the same split"
        )


def start_weights(model, folder: Path) -> None:
    """Set `model`'s weights from the saved model in `folder` (its inner network when the saved one
    is wrapped by :func:`with_flip_average`)."""
    from maskgate.training.layers import load_keras

    saved = load_keras(folder / KERAS_FILE)
    inner = [layer for layer in saved.layers if hasattr(layer, "layers")]
    source = inner[0] if len(inner) == 1 else saved
    model.set_weights(source.get_weights())


def _fit(config: TrainConfig, train_set: CropSet, val_set: CropSet, weights: np.ndarray):
    """The compiled model fitted with early stopping (best weights restored) and its history."""
    import keras

    model = ARCHS[config.arch].build(config.crop_spec)
    if config.init_from:
        start_weights(model, config.init_from)
    steps = -(-len(train_set) // config.batch_size)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate_schedule(config.lr, config.epochs, steps)),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
    )
    seed = config.effective_run_seed
    history = model.fit(
        make_dataset(train_set, config.batch_size, weights, config.augment, seed, shuffle=True),
        validation_data=make_dataset(val_set, config.batch_size, None, None, seed, shuffle=False),
        epochs=config.epochs,
        callbacks=[keras.callbacks.EarlyStopping(patience=config.patience, restore_best_weights=True)],
        shuffle=False,  # the dataset shuffles itself (seeded)
        verbose=(1 if sys.stderr.isatty() else 2) if config.progress else 0,
    ).history
    return model, history


def _source_json(spec: DataSpec, report: SourceReport, root: Path | None) -> dict[str, object]:
    licence = licence_of(spec, root)
    return {
        "name": spec.name,
        "layout": spec.layout.value,
        "licence": licence,
        "non_commercial": is_non_commercial(spec, licence),
        **{k: v for k, v in report.to_json().items() if k not in ("source", "layout")},
    }


def summary(card: ModelCard) -> str:
    """The held-out metrics of a card as a short table (the `train` command prints it)."""
    lines = [f"model {card.version}: {card.arch}, {card.parameters:,} parameters, crop {card.crop.to_json()}"]
    test = card.metrics.get("test") or card.metrics.get("val") or {}
    for band, m in test.items():
        per = "  ".join(
            f"{name} P {s['precision']:.3f} R {s['recall']:.3f} (n={s['support']})"
            for name, s in m["per_class"].items()
        )
        lines.append(
            f"  {band:>6}: n={m['count']:5d} acc {m['accuracy']:.4f} macro-F1 {m['macro_f1']:.4f} | {per}"
        )
    return "\n".join(lines)
