"""``maskgate train-detector``: MTCNN's networks fine-tuned to find masked faces (issue #9).

Measured first (``python -m maskgate.training.detector_stages --split train``, stock nets, fmd
train split, faces >= 32 px, recall at IoU 0.5 after each stage, with / without / improper):
P-net puts a box within IoU 0.3 of 0.94 / 0.96 / 0.93 of the faces, but at IoU 0.5 only of
0.76 / 0.87 / 0.82, and R-net rejects the rest outright (0.69 / 0.89 / 0.73 after O-net): the
hand-drawn boxes sit lower and wider than MTCNN's, and masks hide what the nets place boxes by.
So each network can be fine-tuned (``networks``), starting from the package's weights or from an
earlier detector folder (``start``), on samples cut from what the stage before it proposes
(:mod:`maskgate.training.detector_samples`); docs/detector.md has the rounds that were run.

Losses as in the paper: cross-entropy on positives and negatives, squared error of the box
offsets on positives and part faces (weight 0.5), and for O-net the landmarks distilled from
the stock O-net on the same patches (weight 0.5): nothing here labels landmarks, and the
synthetic masks are drawn from them. Each epoch is kept if its validation loss is the best.

The detector folder: ``{p,r,o}net.tflite`` (what the gate runs), ``{p,r,o}net.joblib`` (Keras
weights in the `mtcnn` package's own format, for the TensorFlow reference detector), card.json
(data, settings, history, metrics, sha256 of every file) and ``training_curves.png``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from maskgate.config import DetectorConfig
from maskgate.training.detector_samples import (
    Kind,
    SampleConfig,
    Samples,
    build_samples,
    load_scenes,
    synthetic_scenes,
)

TRAINED = ("rnet", "onet")
NETWORKS = ("pnet", *TRAINED)
BOX_WEIGHT, LANDMARK_WEIGHT = 0.5, 0.5
REPORTED = ("ground_truth", "detection_recall", "detection_precision", "map50")


@dataclass(frozen=True)
class DetectorTrainConfig:
    data: str = "scenes/fmd"
    manifest: str = "models/default/manifest.csv.gz"  # its "test" images are never trained on
    epochs: int = 6
    batch_size: int = 256
    learning_rate: float = 3e-4
    synthetic: bool = True
    masked_weight: float = 2.0  # classification weight of masked and improper faces
    bare_weight: float = 1.0  # classification weight of bare faces (without_mask)
    # Faces of at least `large_face_px` (longer side in the original image, the size bands' measure)
    # weigh `large_face_weight` times more, on top of their class's weight.
    large_face_weight: float = 1.0
    large_face_px: float = 96.0
    # Networks that learn to score part faces (IoU 0.4-0.65) as faces. Hand-drawn boxes sit lower
    # and wider than MTCNN's, so P-net's proposals for a face are often only IoU 0.3-0.6 with the
    # annotation; an R-net that rejects those loses the face before regression can fix its box.
    part_is_face: tuple[str, ...] = ("rnet",)
    # For those networks, the loosest part face and the tightest negative (paper: 0.4 and 0.3).
    loose_part_iou: float = 0.4
    loose_negative_iou: float = 0.3
    networks: tuple[str, ...] = TRAINED  # the networks fine-tuned; the others are kept as they start
    start: str = ""  # detector folder whose weights every network starts from; "" = the package's
    samples: SampleConfig = field(default_factory=SampleConfig)
    proposal_min_face: int = 20  # the stock detector's minimum face when proposing samples
    max_scenes: int | None = None  # use at most this many training scenes (smoke runs, tests)
    threads: int = 2
    seed: int = 1337
    progress: bool = True


@dataclass
class NetworkHistory:
    loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    best_epoch: int = 0


def _stage_model(name: str, weights: str | None = None):
    from mtcnn.stages import StageONet, StagePNet, StageRNet

    stage = {"pnet": StagePNet, "rnet": StageRNet, "onet": StageONet}[name]
    return (stage(weights=weights) if weights else stage())._model  # no public accessor


def _outputs(model, patches, training: bool = False):
    """(offsets, landmarks or None, probabilities), whatever the network."""
    out = model(patches, training=training)
    if len(out) == 3:
        return out[0], out[1], out[2]
    offsets, prob = out
    if len(offsets.shape) == 4:  # P-net on 12 px patches: one cell each
        offsets, prob = offsets[:, 0, 0, :], prob[:, 0, 0, :]
    return offsets, None, prob


def _batch_loss(model, batch: dict[str, np.ndarray], training: bool = False, part_is_face: bool = False):
    """The paper's multi-task loss; `part_is_face` also trains part faces to score as faces (R-net)."""
    import tensorflow as tf

    offsets, landmarks, prob = _outputs(model, batch["patches"], training)
    kinds = batch["kinds"]
    face = (kinds == Kind.POSITIVE) | (kinds == Kind.PART) if part_is_face else kinds == Kind.POSITIVE
    cls_mask = tf.cast(face | (kinds == Kind.NEGATIVE), tf.float32) * batch["weights"]
    target = tf.cast(face, tf.float32)
    p_face = tf.clip_by_value(prob[:, 1], 1e-7, 1 - 1e-7)
    ce = -(target * tf.math.log(p_face) + (1 - target) * tf.math.log(1 - p_face))
    box_mask = tf.cast((kinds == Kind.POSITIVE) | (kinds == Kind.PART), tf.float32)
    box = tf.reduce_sum(tf.square(offsets - batch["offsets"]), axis=1)
    loss = tf.reduce_sum(ce * cls_mask) / tf.maximum(tf.reduce_sum(cls_mask), 1.0)
    loss += BOX_WEIGHT * tf.reduce_sum(box * box_mask) / tf.maximum(tf.reduce_sum(box_mask), 1.0)
    if landmarks is not None and "landmarks" in batch:
        mark = tf.reduce_sum(tf.square(landmarks - batch["landmarks"]), axis=1)
        loss += LANDMARK_WEIGHT * tf.reduce_sum(mark * box_mask) / tf.maximum(tf.reduce_sum(box_mask), 1.0)
    correct = tf.cast(tf.equal(tf.cast(p_face > 0.5, tf.float32), target), tf.float32)
    accuracy = tf.reduce_sum(correct * tf.cast(cls_mask > 0, tf.float32))
    return loss, accuracy, tf.reduce_sum(tf.cast(cls_mask > 0, tf.float32))


def _flip_batch(batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Half the batch mirrored: left/right offsets swap sign and place; landmarks mirror too."""
    out = dict(batch)
    rows = rng.random(len(batch["kinds"])) < 0.5
    patches, offsets = batch["patches"].copy(), batch["offsets"].copy()
    patches[rows] = patches[rows, :, ::-1]
    offsets[rows, 0], offsets[rows, 2] = -batch["offsets"][rows, 2], -batch["offsets"][rows, 0]
    out["patches"], out["offsets"] = patches, offsets
    if "landmarks" in batch:
        marks = batch["landmarks"].copy()
        xs = 1 - batch["landmarks"][rows, :5]  # x in the mirrored patch, then left/right swapped
        marks[rows, :5] = xs[:, [1, 0, 2, 4, 3]]
        marks[rows, 5:] = batch["landmarks"][rows][:, [6, 5, 7, 9, 8]]
        out["landmarks"] = marks
    return out


def _arrays(samples: Samples, weights: np.ndarray, landmarks: np.ndarray | None) -> dict[str, np.ndarray]:
    arrays = {
        "patches": samples.patches,
        "kinds": samples.kinds.astype(np.int32),
        "offsets": samples.offsets.astype(np.float32),
        "weights": weights.astype(np.float32),
    }
    if landmarks is not None:
        arrays["landmarks"] = landmarks.astype(np.float32)
    return arrays


def _take(arrays: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {key: value[index] for key, value in arrays.items()}


def sample_weights(
    samples: Samples,
    masked_weight: float,
    bare_weight: float = 1.0,
    large_face_weight: float = 1.0,
    large_face_px: float = 96.0,
) -> np.ndarray:
    """Masked and improperly masked faces weigh more: they are what the stock nets miss. Bare faces
    can weigh more too (so they are not traded for masked ones), and so can large faces."""
    labels = samples.labels.astype(str)
    masked = np.isin(labels, ["with_mask", "improper_mask"])
    weights = np.where(masked, masked_weight, np.where(labels == "without_mask", bare_weight, 1.0))
    if large_face_weight != 1.0 and len(samples.sides) == len(samples):
        weights = np.where(samples.sides >= large_face_px, weights * large_face_weight, weights)
    return weights


def _weights(samples: Samples, config: DetectorTrainConfig) -> np.ndarray:
    return sample_weights(
        samples, config.masked_weight, config.bare_weight, config.large_face_weight, config.large_face_px
    )


def evaluate_loss(
    model, arrays: dict[str, np.ndarray], batch_size: int, part_is_face: bool = False
) -> tuple[float, float]:
    total, correct, counted, batches = 0.0, 0.0, 0.0, 0
    for start in range(0, len(arrays["kinds"]), batch_size * 4):
        batch = _take(arrays, np.arange(start, min(start + batch_size * 4, len(arrays["kinds"]))))
        loss, acc, n = _batch_loss(model, batch, part_is_face=part_is_face)
        total, correct, counted, batches = (
            total + float(loss),
            correct + float(acc),
            counted + float(n),
            batches + 1,
        )
    return total / max(batches, 1), correct / max(counted, 1)


def fit_network(
    model,
    train: dict[str, np.ndarray],
    val: dict[str, np.ndarray],
    config: DetectorTrainConfig,
    name: str,
) -> NetworkHistory:
    """Adam with cosine decay; the weights of the epoch with the best validation loss are kept."""
    import tensorflow as tf

    rng = np.random.default_rng(config.seed)
    part_is_face = name in config.part_is_face
    steps = max(1, len(train["kinds"]) // config.batch_size)
    schedule = tf.keras.optimizers.schedules.CosineDecay(config.learning_rate, steps * config.epochs)
    optimizer = tf.keras.optimizers.Adam(schedule)
    history = NetworkHistory()
    best, accuracy = evaluate_loss(model, val, config.batch_size, part_is_face)
    best_weights = model.get_weights()
    history.val_loss.append(best)
    history.loss.append(float("nan"))
    history.val_accuracy.append(accuracy)

    @tf.function(reduce_retracing=True)
    def step(batch):
        with tf.GradientTape() as tape:
            loss, _, _ = _batch_loss(model, batch, training=True, part_is_face=part_is_face)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    for epoch in range(1, config.epochs + 1):
        order = rng.permutation(len(train["kinds"]))
        losses = []
        bar = tqdm(range(steps), desc=f"{name} epoch {epoch}", disable=not config.progress, leave=False)
        for i in bar:
            batch = _flip_batch(_take(train, order[i * config.batch_size : (i + 1) * config.batch_size]), rng)
            losses.append(float(step({k: tf.constant(v) for k, v in batch.items()})))
            if i % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        val_loss, val_acc = evaluate_loss(model, val, config.batch_size, part_is_face)
        history.loss.append(float(np.mean(losses)))
        history.val_loss.append(val_loss)
        history.val_accuracy.append(val_acc)
        print(f"{name} epoch {epoch}: loss {history.loss[-1]:.4f} val {val_loss:.4f} acc {val_acc:.4f}")
        if val_loss < best:
            best, best_weights, history.best_epoch = val_loss, model.get_weights(), epoch
    model.set_weights(best_weights)
    return history


def _distilled_landmarks(samples: Samples, batch_size: int = 1024) -> np.ndarray:
    """The stock O-net's landmarks on every patch: the targets that keep its landmarks."""
    stock = _stage_model("onet")
    out = [
        np.asarray(_outputs(stock, samples.patches[i : i + batch_size])[1])
        for i in range(0, len(samples), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, 10), np.float32)


@dataclass
class DetectorTrainResult:
    folder: Path
    card: dict
    seconds: float


def train_detector(
    out: Path, config: DetectorTrainConfig, datasets_root: Path, log: Callable[[str], None] = print
) -> DetectorTrainResult:
    """Fine-tune R- and O-net, export all three nets, write the card and the curves into `out`."""
    import joblib

    from maskgate.gate.detector import read_detector_card
    from maskgate.gate.mtcnn_litert import LiteRtMtcnnDetector
    from maskgate.training.datasets import DataSpec
    from maskgate.training.detector_calibrate import (
        CalibrationError,
        calibrate,
        format_effect,
        write_calibration,
    )
    from maskgate.training.detector_export import export_detector
    from maskgate.training.train import configure_tensorflow

    started = time.monotonic()
    configure_tensorflow(config.threads, config.seed)
    out.mkdir(parents=True, exist_ok=True)

    stock = LiteRtMtcnnDetector(DetectorConfig(min_face_size=config.proposal_min_face))
    # Samples come from what the stage before proposes: the starting detector's stages (the
    # paper's cascade: R-net learns from P-net's proposals, O-net from R-net's).
    proposer = LiteRtMtcnnDetector(replace(stock.config, model=config.start)) if config.start else stock
    width = stock.config.working_width
    manifest = Path(config.manifest)
    train_scenes = load_scenes(config.data, datasets_root, manifest, {"train"}, width, config.progress)
    val_scenes = load_scenes(config.data, datasets_root, manifest, {"val"}, width, config.progress)
    if config.max_scenes:
        train_scenes = train_scenes[: config.max_scenes]
        val_scenes = val_scenes[: max(1, config.max_scenes // 4)]
    rng = np.random.default_rng(config.seed)
    synthetic = synthetic_scenes(train_scenes, stock, rng) if config.synthetic else []
    log(f"scenes: {len(train_scenes)} train (+{len(synthetic)} with synthetic masks), {len(val_scenes)} val")

    histories, counts = {}, {}
    for name in NETWORKS:
        model = _stage_model(name, _start_weights(config.start, name))
        if name in config.networks:
            histories[name], counts[name] = _train_network(
                model, name, train_scenes + synthetic, val_scenes, proposer, config, log
            )
        joblib.dump(model.get_weights(), out / f"{name}.joblib")

    provenance = {
        "source": "mtcnn package weights (MIT), R- and O-net fine-tuned by maskgate train-detector",
        "training": {
            "data": {
                "source": config.data,
                "licence": "CC0 1.0",
                "train_images": len(train_scenes),
                "val_images": len(val_scenes),
                "synthetic_scenes": len(synthetic),
                "split": f"{config.manifest} (train / val; its test images are never used)",
            },
            "settings": _settings_json(config),
            "samples": counts,
            "history": {name: asdict(h) for name, h in histories.items()},
            "started_from": {
                n: (config.start or "mtcnn package") + ("" if n in config.networks else " (kept)")
                for n in NETWORKS
            },
        },
    }
    plot = out / "training_curves.png"
    plot_detector_history(histories, plot)
    export_detector(out, weights={n: out / f"{n}.joblib" for n in NETWORKS}, extra=provenance)
    # The tuned nets regress towards the drawn boxes already; what is left is fitted as for the
    # stock weights and stored in the card (applied where detector.box_calibration is on).
    spec = DataSpec.parse(config.data, datasets_root)
    try:
        calibration, fitted = calibrate(
            DetectorConfig(model=str(out)), spec, manifest, progress=False, max_scenes=config.max_scenes
        )
        write_calibration(out, calibration, fitted)
        log(format_effect(calibration, fitted))
    except CalibrationError as exc:  # the nets are trained: keep them, without a calibration
        log(f"no box calibration for {out}: {exc}")
    card = read_detector_card(out)
    card["metrics"] = held_out_metrics(out, config, datasets_root, val_scenes)
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return DetectorTrainResult(out, card, time.monotonic() - started)


def held_out_metrics(out: Path, config: DetectorTrainConfig, root: Path, val_scenes) -> dict:
    """Stock against tuned at the gate's detector defaults: recall after each stage on the
    validation scenes, and end to end on the manifest's held-out test scenes with the classifier
    whose manifest it is (detection recall per class, precision, mAP@0.5, per size band)."""
    from maskgate.gate.mtcnn_litert import LiteRtMtcnnDetector
    from maskgate.training import evaluate
    from maskgate.training.datasets import DataSpec
    from maskgate.training.detector_stages import stage_recall

    base = DetectorConfig()
    metrics: dict[str, dict] = {"detector": asdict(base), "val_stage_recall": {}, "test": {}}
    classifier = Path(config.manifest).parent
    spec = DataSpec.parse(config.data, root)
    for name, folder in (("stock", ""), ("tuned", str(out))):
        detector_config = replace(base, model=folder)
        metrics["val_stage_recall"][name] = stage_recall(
            LiteRtMtcnnDetector(detector_config), val_scenes, False
        )
        report = evaluate.evaluate_scenes(classifier, [spec], "test", detector_config, False)
        metrics["test"][name] = {
            band: {
                key: m[key] for key in ("ground_truth", "detection_recall", "detection_precision", "map50")
            }
            for band, m in report["bands"].items()
        }
    return metrics


def _start_weights(start: str, name: str) -> str | None:
    """The weights a network starts from: an earlier detector folder's, else the package's (None)."""
    return str(Path(start) / f"{name}.joblib") if start else None


def _train_network(
    model, name: str, train_scenes, val_scenes, proposer, config, log
) -> tuple[NetworkHistory, dict]:
    """Samples for `name` from the `proposer`'s previous stage, then fine-tuning in place."""
    if name in config.part_is_face:
        samples = replace(
            config.samples, part_iou=config.loose_part_iou, negative_iou=config.loose_negative_iou
        )
        config = replace(config, samples=samples)
    train_samples = build_samples(train_scenes, name, proposer, config.samples, config.progress)
    val_samples = build_samples(
        val_scenes, name, proposer, replace(config.samples, seed=config.seed + 1), False
    )
    counts = {"train": train_samples.counts(), "val": val_samples.counts()}
    log(f"{name} samples: {counts}")
    marks = _distilled_landmarks if name == "onet" else (lambda _: None)
    train = _arrays(train_samples, _weights(train_samples, config), marks(train_samples))
    val = _arrays(val_samples, _weights(val_samples, config), marks(val_samples))
    del train_samples, val_samples
    return fit_network(model, train, val, config, name), counts


def _settings_json(config: DetectorTrainConfig) -> dict:
    settings = asdict(config)
    settings.pop("progress")
    return settings


def plot_detector_history(histories: dict[str, NetworkHistory], path: Path) -> None:
    """Training and validation loss and validation accuracy per epoch, one column per network."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(histories), figsize=(5 * len(histories), 6), squeeze=False)
    for col, (name, history) in enumerate(histories.items()):
        epochs = range(len(history.val_loss))
        axes[0, col].plot(epochs, history.loss, marker="o", label="train")
        axes[0, col].plot(epochs, history.val_loss, marker="o", label="validation")
        axes[0, col].axvline(history.best_epoch, color="grey", linestyle=":", label="kept")
        axes[0, col].set_title(f"{name} loss (epoch 0 = stock weights)")
        axes[0, col].legend()
        axes[1, col].plot(epochs, history.val_accuracy, marker="o", color="tab:green")
        axes[1, col].set_title(f"{name} validation face/non-face accuracy")
        axes[1, col].set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary(card: dict) -> str:
    return json.dumps(card.get("metrics", {}), indent=2)
