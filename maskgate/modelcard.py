"""Model folders and their cards: the contract between training, the gate and the dashboard.

A model is a folder (DESIGN.md, "Models"):

- ``model.tflite`` what the gate runs (LiteRT); input float32 (N, size, size, channels) holding
  0-255 pixel values from :func:`maskgate.crop.crop_face` (any normalisation is inside the
  model); output (N, len(labels)) probabilities in ``labels`` order;
- ``model.keras`` the trainable model;
- ``card.json`` this card: labels, crop spec, architecture, metrics, data sources and their
  hash, creation time, and the sha256 of every file above;
- plots (PNG), listed in the card too.

:func:`load_card` refuses a folder whose files are missing or differ from the card, and one
whose version breaks the MQTT contract's rule for model versions (door controllers enforce it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maskgate.const import MODEL_VERSION_PATTERN
from maskgate.core import Label
from maskgate.crop import CropSpec

CARD_FILE = "card.json"
RUNTIME_FILE = "model.tflite"
CARD_FORMAT = 1


class ModelFileError(ValueError):
    """A model folder that cannot be trusted: missing, unreadable or altered files."""


@dataclass(frozen=True)
class ModelCard:
    version: str
    labels: tuple[Label, ...]
    crop: CropSpec
    arch: str
    created: str  # ISO 8601 UTC
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    parameters: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    data: list[dict[str, Any]] = field(default_factory=list)  # sources: path, layout, licence, counts
    data_hash: str = ""
    training: dict[str, Any] = field(default_factory=dict)  # epochs, seconds, seed, ...

    @property
    def sha256(self) -> str:
        """The digest of what the gate runs: identifies the model in MQTT and the registry."""
        return self.files.get(RUNTIME_FILE, "")

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CARD_FORMAT,
            "version": self.version,
            "labels": [label.value for label in self.labels],
            "crop": self.crop.to_json(),
            "arch": self.arch,
            "parameters": self.parameters,
            "created": self.created,
            "metrics": self.metrics,
            "data": self.data,
            "data_hash": self.data_hash,
            "training": self.training,
            "files": self.files,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelCard:
        if data.get("format") != CARD_FORMAT:
            raise ValueError(f"unsupported card format {data.get('format')!r} (expected {CARD_FORMAT})")
        return cls(
            version=str(data["version"]),
            labels=tuple(Label.parse(name) for name in data["labels"]),
            crop=CropSpec.from_json(data["crop"]),
            arch=str(data["arch"]),
            created=str(data["created"]),
            files={str(k): str(v) for k, v in data["files"].items()},
            parameters=int(data.get("parameters", 0)),
            metrics=dict(data.get("metrics", {})),
            data=list(data.get("data", [])),
            data_hash=str(data.get("data_hash", "")),
            training=dict(data.get("training", {})),
        )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def card_sha256(folder: str | Path) -> str:
    """The sha256 of the folder's card.json. It lists every other file's sha256, so it pins the
    whole folder, labels and crop spec included, which the model file's own digest does not."""
    path = Path(folder) / CARD_FILE
    try:
        return sha256_file(path)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot be read: {exc.strerror or exc}") from None


def write_card(folder: Path, card: ModelCard) -> ModelCard:
    """Write `card` into `folder`, recording the sha256 of every other file in the folder."""
    files = {
        path.name: sha256_file(path)
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != CARD_FILE
    }
    if RUNTIME_FILE not in files:
        raise ModelFileError(f"{folder}: no {RUNTIME_FILE} to describe")
    card = ModelCard(**{**card.__dict__, "files": files})
    (folder / CARD_FILE).write_text(json.dumps(card.to_json(), indent=2) + "\n")
    return card


def load_card(folder: str | Path, verify: bool = True) -> ModelCard:
    """The card of the model in `folder`; with `verify`, every listed file must match its sha256."""
    folder = Path(folder)
    path = folder / CARD_FILE
    try:
        card = ModelCard.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ModelFileError(f"{folder}: not a model folder (no {CARD_FILE})") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{path}: invalid model card: {exc}") from None
    if RUNTIME_FILE not in card.files:
        raise ModelFileError(f"{path}: the card lists no {RUNTIME_FILE}")
    if problem := version_problem(card.version):
        raise ModelFileError(f"{folder}: {problem}")
    if verify:
        for name, expected in card.files.items():
            file = folder / name
            if not file.is_file():
                raise ModelFileError(f"{folder}: {name} is missing")
            if sha256_file(file) != expected:
                raise ModelFileError(f"{folder}: {name} does not match the sha256 in {CARD_FILE} (altered?)")
    return card


def version_problem(version: str) -> str | None:
    """Why `version` cannot name a model (None if it can): the MQTT contract's rule, checked on the
    door command, the gate's state and the active-model announcement that carry it (docs/mqtt.md)."""
    if MODEL_VERSION_PATTERN.fullmatch(version):
        return None
    return (
        f"model version {version!r} ({len(version)} characters) does not match "
        f"{MODEL_VERSION_PATTERN.pattern}, the MQTT contract's rule for model versions "
        "(door controllers enforce it)"
    )
