"""``maskgate ensemble``: several trained classifiers averaged into one model folder.

Networks trained differently (another input size, synthetic masks, another start) make different
mistakes; the mean of their probabilities is right more often than any one of them. The gate
still runs one ``model.tflite``: the ensemble takes the crop at the largest member's size, hands
each smaller member a bilinear resize of it inside the model (measured: the shipped 96 px model
on 128 px crops resized in-model is as accurate as on its own crops, mean |dp| 0.001), and
averages the members' (mirror-averaged) probabilities.

Members must come from the same split (same manifest: the ensemble's held-out metrics are only
honest if no member trained on a held-out image), and crop faces the same way (margin, colour,
and the same detector and box calibration for `photos`). The card lists the members; its metrics
are measured like a trained model's, on the TFLite file, on the members' val and test splits.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from maskgate.config import DetectorConfig
from maskgate.modelcard import CARD_FILE, RUNTIME_FILE, ModelCard, ModelFileError, load_card, write_card
from maskgate.training import cropset, plots
from maskgate.training.datasets import DataSpec
from maskgate.training.evaluate import evaluate_crops
from maskgate.training.export import check_agreement, to_tflite
from maskgate.training.metrics import GATE_BAND
from maskgate.training.split import MANIFEST_FILE, split_images
from maskgate.training.train import AGREEMENT_SAMPLE, CONFUSION_FILE, KERAS_FILE, save_keras

ARCH = "ensemble"


class EnsembleError(ValueError):
    """Members that cannot be averaged honestly (other split, other crops) or a bad folder."""


@dataclass(frozen=True)
class EnsembleResult:
    folder: Path
    card: ModelCard
    seconds: float


def check_members(folders: Sequence[Path]) -> list[ModelCard]:
    """The members' verified cards; EnsembleError if they cannot be averaged honestly."""
    if len(folders) < 2:
        raise EnsembleError("an ensemble needs at least two member models")
    cards = []
    for folder in folders:
        try:
            card = load_card(folder)
        except ModelFileError as exc:
            raise EnsembleError(str(exc)) from None
        if KERAS_FILE not in card.files or MANIFEST_FILE not in card.files:
            raise EnsembleError(f"{folder}: a member needs its {KERAS_FILE} and {MANIFEST_FILE}")
        cards.append(card)
    first = cards[0]
    for folder, card in zip(folders[1:], cards[1:], strict=True):
        if card.data_hash != first.data_hash or card.files[MANIFEST_FILE] != first.files[MANIFEST_FILE]:
            raise EnsembleError(
                f"{folder} was trained on another split than {folders[0]} (its manifest differs): "
                "a member may have trained on the others' held-out images"
            )
        if (card.crop.margin, card.crop.color) != (first.crop.margin, first.crop.color):
            raise EnsembleError(f"{folder} crops with {card.crop}, {folders[0]} with {first.crop}")
        if card.labels != first.labels:
            raise EnsembleError(f"{folder} has the labels {card.labels}, {folders[0]} {first.labels}")
        if not _same_photo_crops(card, first):
            raise EnsembleError(f"{folder} and {folders[0]} cut their photo crops with other detectors")
    return cards


def _same_photo_crops(a: ModelCard, b: ModelCard) -> bool:
    """Whether two models' `photos` crops were cut alike: the same box calibration, and the same
    detector weights where both cards record them (older cards do not)."""
    photos_a = a.training.get("detector_for_photos") or {}
    photos_b = b.training.get("detector_for_photos") or {}
    if photos_a.get("calibration") != photos_b.get("calibration"):
        return False
    weights_a, weights_b = photos_a.get("weights"), photos_b.get("weights")
    return weights_a is None or weights_b is None or weights_a == weights_b


def build_model(folders: Sequence[Path], cards: Sequence[ModelCard]):
    """The Keras ensemble: the largest member's crop in, the members' mean probabilities out."""
    import keras
    from keras import layers

    from maskgate.training.layers import load_keras

    size = max(card.crop.size for card in cards)
    inputs = keras.Input((size, size, cards[0].crop.channels), name="pixels")
    outputs = []
    for index, (folder, card) in enumerate(zip(folders, cards, strict=True)):
        member = load_keras(folder / KERAS_FILE)
        member.name = f"member_{index}"
        x = inputs
        if card.crop.size != size:
            x = layers.Resizing(card.crop.size, card.crop.size, name=f"resize_{index}")(x)
        outputs.append(member(x))
    return keras.Model(inputs, layers.Average(name="probabilities")(outputs), name=ARCH)


def ensemble(
    folders: Sequence[Path],
    out: Path,
    cache_dir: Path | None,
    specs: Sequence[DataSpec] | None = None,
    datasets_root: Path | None = None,
    detector: DetectorConfig | None = None,
    progress: bool = True,
) -> EnsembleResult:
    """Write the ensemble of the model `folders` to `out` (replaced as a whole when it is done).

    Its held-out metrics are measured on `specs` (default: the members' sources, found under
    `datasets_root`), restricted to the members' val and test splits.
    """
    started = time.monotonic()
    if out.exists() and any(out.iterdir()) and not (out / CARD_FILE).is_file():
        raise EnsembleError(f"{out} exists and is not a model folder (no {CARD_FILE}): choose another --out")
    cards = check_members(folders)
    first = cards[0]
    crop = replace(first.crop, size=max(card.crop.size for card in cards))
    model = build_model(folders, cards)

    work = out.with_name(f".{out.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    save_keras(model, work / KERAS_FILE)
    to_tflite(model, work / RUNTIME_FILE)
    shutil.copyfile(folders[0] / MANIFEST_FILE, work / MANIFEST_FILE)
    created = datetime.now(UTC)
    card = ModelCard(
        version=f"{out.name}-{created:%Y%m%d-%H%M%S}",
        labels=first.labels,
        crop=crop,
        arch=ARCH,
        created=created.isoformat(timespec="seconds"),
        parameters=sum(card.parameters for card in cards),
        data=first.data,
        data_hash=first.data_hash,
        training={
            "members": [
                {"version": c.version, "arch": c.arch, "crop": c.crop.to_json(), "sha256": c.sha256}
                for c in cards
            ],
            "seed": first.training.get("seed"),
            "split": first.training.get("split"),
            "flip_average": all(c.training.get("flip_average", False) for c in cards),
            "detector_for_photos": first.training.get("detector_for_photos"),
        },
    )
    write_card(work, card)  # a loadable folder, so the gate's own classifier measures it below

    if specs is None:
        specs = [DataSpec.parse(f"{data['name']}:{data['layout']}", datasets_root) for data in first.data]
    metrics: dict[str, object] = {}
    for split in ("val", "test"):
        report = evaluate_crops(work, specs, split, cache_dir, progress, detector)
        metrics[split] = report["bands"]
        if split == "test":
            crops = _sample_crops(work, specs, cache_dir, detector)
            metrics["tflite_keras_max_diff"] = check_agreement(model, work / RUNTIME_FILE, crops)
    matrix = np.asarray(metrics["test"][GATE_BAND]["confusion"])  # type: ignore[index]
    plots.confusion_plot(matrix, work / CONFUSION_FILE, "test split, faces >= 32 px (TFLite)")
    card = replace(
        card, metrics=metrics, training=card.training | {"seconds": round(time.monotonic() - started, 1)}
    )
    card = write_card(work, card)
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    return EnsembleResult(out, card, time.monotonic() - started)


def _member_json(card: ModelCard) -> dict[str, object]:
    return {"version": card.version, "arch": card.arch, "crop": card.crop.to_json(), "sha256": card.sha256}


def _sample_crops(folder: Path, specs: Sequence[DataSpec], cache_dir: Path | None, detector) -> np.ndarray:
    """Up to 256 test crops at the ensemble's size, for the Keras/TFLite agreement check."""
    card = load_card(folder)
    keep = split_images(folder / MANIFEST_FILE, ["test"])
    config = cropset.photo_detector_config(detector)
    for spec in specs:
        crops, _, _ = cropset.load_source(
            spec, card.crop, cache_dir, cropset.detector_factory(config), cropset.detector_id(config), False
        )
        chosen = crops.crops[[(spec.name, image) in keep for image in crops.images]]
        if len(chosen):
            return chosen[:AGREEMENT_SAMPLE]
    raise EnsembleError("no test crops to check the TFLite export against Keras")


def summary(card: ModelCard) -> str:
    """The members and the held-out metrics (what `maskgate ensemble` prints)."""
    from maskgate.training.train import summary as model_summary

    members = ", ".join(member["version"] for member in card.training["members"])
    return f"ensemble of {members}\n{model_summary(card)}"
