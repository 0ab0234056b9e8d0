"""``maskgate ensemble``: several trained classifiers averaged into one model folder.

Networks trained differently (another input size, synthetic masks, another start) make different
mistakes; the mean of their probabilities is right more often than any one of them. The gate
still runs one ``model.tflite``: the ensemble takes the crop at the largest member's size, hands
each smaller member a bilinear resize of it inside the model (measured: compact-v4, 96 px,
on 128 px crops resized in-model is as accurate as on its own crops, mean |dp| 0.001), and
averages the members' (mirror-averaged) probabilities.

Members must come from the same split (same manifest: the ensemble's held-out metrics are only
honest if no member trained on a held-out image), and crop faces the same way (margin, colour,
and the same detector and box calibration for `photos`). The card lists the members; its metrics
are measured like a trained model's, on the TFLite file, on the members' val and test splits.
An ensemble given as a member adds its own networks, so a new network joins the shipped ones at
an equal weight; one network is never averaged in twice.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from maskgate.config import DetectorConfig, PolicyConfig
from maskgate.modelcard import RUNTIME_FILE, ModelCard, ModelFileError, load_card, write_card
from maskgate.training import cropset, plots
from maskgate.training.datasets import DataSpec
from maskgate.training.evaluate import evaluate_crops, split_crops
from maskgate.training.export import check_agreement, to_tflite
from maskgate.training.label_review import LabelReview
from maskgate.training.metrics import GATE_BAND
from maskgate.training.split import MANIFEST_FILE, split_images
from maskgate.training.train import (
    AGREEMENT_SAMPLE,
    CONFUSION_FILE,
    KERAS_FILE,
    TrainResult,
    check_out_folder,
    model_version,
    save_keras,
)

ARCH = "ensemble"
# What a member's card says about how it was trained, repeated in the ensemble's list of members.
MEMBER_TRAINING = ("run_seed", "epochs_run", "synthetic_masks", "label_review")


class EnsembleError(ValueError):
    """Members that cannot be averaged honestly (other split, other crops) or a bad folder."""


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
        if not same_photo_detector(
            card.training.get("detector_for_photos"), first.training.get("detector_for_photos")
        ):
            raise EnsembleError(f"{folder} and {folders[0]} cut their photo crops with other detectors")
    return cards


def same_photo_detector(a: dict | None, b: dict | None) -> bool:
    """Whether two recorded photo detectors (``training.detector_for_photos``) cut crops alike:
    the same settings and box calibration, and the same weights where both records name them
    (older cards do not)."""
    if a is None or b is None:
        return a is b
    weights_a, weights_b = a.get("weights"), b.get("weights")
    settings_a = {k: v for k, v in a.items() if k != "weights"}
    settings_b = {k: v for k, v in b.items() if k != "weights"}
    return settings_a == settings_b and (weights_a is None or weights_b is None or weights_a == weights_b)


def build_model(folders: Sequence[Path], cards: Sequence[ModelCard]):
    """The Keras ensemble: the largest member's crop in, the mean probabilities of every member
    network out (an ensemble given as a member contributes its own members)."""
    import keras
    from keras import layers

    size = max(card.crop.size for card in cards)
    inputs = keras.Input((size, size, cards[0].crop.channels), name="pixels")
    outputs = []
    networks = [
        net for folder, card in zip(folders, cards, strict=True) for net in member_networks(folder, card)
    ]
    for index, (network, network_size) in enumerate(networks):
        network.name = f"member_{index}"
        x = inputs
        if network_size != size:
            x = layers.Resizing(network_size, network_size, name=f"resize_{index}")(x)
        outputs.append(network(x))
    return keras.Model(inputs, layers.Average(name="probabilities")(outputs), name=ARCH)


def member_networks(folder: Path, card: ModelCard) -> list[tuple[object, int]]:
    """The networks a member folder adds, each with its input size: the folder's model, or for an
    ensemble its members, so that a network added to an ensemble weighs as much as each of
    the others rather than as much as all of them together."""
    from maskgate.training.layers import load_keras

    model = load_keras(folder / KERAS_FILE)
    if card.arch != ARCH:
        return [(model, card.crop.size)]
    records = card.training.get("members", [])
    inner = [layer for layer in model.layers if layer.name.startswith("member_")]
    if len(inner) != len(records):
        raise EnsembleError(f"{folder}: {len(inner)} member networks, its card lists {len(records)}")
    networks = []
    for index, record in enumerate(records):
        try:
            network = model.get_layer(f"member_{index}")
        except ValueError:
            raise EnsembleError(
                f"{folder}: its card lists member {index}, its model has no member_{index}"
            ) from None
        size = int(record["crop"]["size"])
        if record.get("arch") == ARCH or tuple(network.inputs[0].shape[1:3]) != (size, size):
            raise EnsembleError(f"{folder}: member {index} is not the {size} px network its card says")
        networks.append((network, size))
    return networks


def member_records(cards: Sequence[ModelCard]) -> list[dict[str, object]]:
    """What the card says of each member network (an ensemble member: its own members);
    EnsembleError if one network (by its sha256) would be averaged in twice."""
    records = []
    for card in cards:
        records.extend(card.training.get("members", []) if card.arch == ARCH else [_member_json(card)])
    seen: dict[str, str] = {}
    for record in records:
        sha256, version = str(record["sha256"]), str(record["version"])
        if sha256 in seen:
            raise EnsembleError(f"{version} would be averaged in twice (the network of {seen[sha256]})")
        seen[sha256] = version
    return records


def ensemble(
    folders: Sequence[Path],
    out: Path,
    cache_dir: Path | None,
    specs: Sequence[DataSpec] | None = None,
    datasets_root: Path | None = None,
    detector: DetectorConfig | None = None,
    progress: bool = True,
    review: LabelReview | None = None,
    policy: PolicyConfig | None = None,
) -> TrainResult:
    """Write the ensemble of the model `folders` to `out` (replaced as a whole when it is done).

    Its held-out metrics are measured on `specs` (default: the members' sources, found under
    `datasets_root`), restricted to the members' val and test splits (those that have images),
    against the labels as `review` corrects them (None: the sources' own) and with what each band
    would tell the door under `policy`; `photos` are cropped by `detector` (the gate's), which must
    be the one the members recorded.
    """
    started = time.monotonic()
    check_out_folder(out)
    if out.resolve() in {folder.resolve() for folder in folders}:
        raise EnsembleError(f"{out} is one of the members: write the ensemble to another folder")
    cards = check_members(folders)
    first = cards[0]
    photos = _photo_detector(cards, detector)
    crop = replace(first.crop, size=max(card.crop.size for card in cards))
    members = member_records(cards)
    model = build_model(folders, cards)

    work = out.with_name(f".{out.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    save_keras(model, work / KERAS_FILE)
    to_tflite(model, work / RUNTIME_FILE)
    shutil.copyfile(folders[0] / MANIFEST_FILE, work / MANIFEST_FILE)
    created = datetime.now(UTC)
    card = ModelCard(
        version=model_version(out, created),
        labels=first.labels,
        crop=crop,
        arch=ARCH,
        created=created.isoformat(timespec="seconds"),
        parameters=sum(card.parameters for card in cards),
        data=first.data,
        data_hash=first.data_hash,
        training={
            "members": members,
            "seed": first.training.get("seed"),
            "split": first.training.get("split"),
            "flip_average": all(c.training.get("flip_average", False) for c in cards),
            "detector_for_photos": photos,
            "label_review": review.to_json() if review else None,
        },
    )
    write_card(work, card)  # a loadable folder, so the gate's own classifier measures it below

    if specs is None:
        specs = [DataSpec.parse(f"{data['name']}:{data['layout']}", datasets_root) for data in first.data]
    metrics: dict[str, object] = {}
    splits = [split for split in ("val", "test") if split_images(work / MANIFEST_FILE, [split])]
    for split in splits:
        report = evaluate_crops(
            work, specs, split, cache_dir, progress, detector, policy=policy, review=review
        )
        metrics[split] = report["bands"]
    shown = splits[-1]  # test where there is one (a retraining candidate has none)
    crops = _sample_crops(work, specs, shown, cache_dir, detector)
    metrics["tflite_keras_max_diff"] = check_agreement(model, work / RUNTIME_FILE, crops)
    matrix = np.asarray(metrics[shown][GATE_BAND]["confusion"])  # type: ignore[index]
    plots.confusion_plot(matrix, work / CONFUSION_FILE, f"{shown} split, faces >= 32 px (TFLite)")
    card = replace(
        card, metrics=metrics, training=card.training | {"seconds": round(time.monotonic() - started, 1)}
    )
    card = write_card(work, card)
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    return TrainResult(out, card, time.monotonic() - started)


def _photo_detector(cards: Sequence[ModelCard], detector: DetectorConfig | None) -> dict | None:
    """The members' photo detector record, the most complete one (with weights where any has
    them); EnsembleError if `detector` would cut the held-out photos otherwise."""
    records = [card.training.get("detector_for_photos") for card in cards]
    record = next((r for r in records if r and "weights" in r), records[0])
    if record is not None:
        current = cropset.photo_detector_record(detector)
        if not same_photo_detector(record, current):
            raise EnsembleError(
                "the configured detector cuts photo crops otherwise than the members were trained with "
                f"({current} against {record}): set [detector] as they were trained"
            )
    return record


def _member_json(card: ModelCard) -> dict[str, object]:
    """A member network as the ensemble's card lists it: enough to tell how it was trained after
    its own folder is gone (a retraining run's networks live only in the run's work folder)."""
    training = card.training
    return {
        "version": card.version,
        "arch": card.arch,
        "crop": card.crop.to_json(),
        "sha256": card.sha256,
        **{key: training[key] for key in MEMBER_TRAINING if key in training},
    }


def _sample_crops(
    folder: Path, specs: Sequence[DataSpec], split: str, cache_dir: Path | None, detector
) -> np.ndarray:
    """Up to AGREEMENT_SAMPLE crops of `split` at the ensemble's size, for the Keras/TFLite check."""
    keep = split_images(folder / MANIFEST_FILE, [split])
    crops, _ = split_crops(load_card(folder).crop, specs, keep, cache_dir, detector, progress=False)
    if not len(crops):
        raise EnsembleError(f"no {split} crops to check the TFLite export against Keras")
    return crops.crops[:AGREEMENT_SAMPLE]


def summary(card: ModelCard) -> str:
    """The members and the held-out metrics (what `maskgate ensemble` prints)."""
    from maskgate.training.train import summary as model_summary

    members = ", ".join(member["version"] for member in card.training["members"])
    return f"ensemble of {members}\n{model_summary(card)}"
