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
import re
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
    def from_json(cls, data: object) -> ModelCard:
        """The card in `data` (parsed card.json). Raises :class:`ModelFileError` (a ValueError)
        naming the field that is missing or of the wrong type or range."""
        if not isinstance(data, dict):
            raise ModelFileError(f"the card must be a JSON object, not {type(data).__name__}")
        card_format = data.get("format")
        if type(card_format) is not int or card_format != CARD_FORMAT:
            raise ModelFileError(f"unsupported card format {card_format!r} (expected {CARD_FORMAT})")
        labels = _field(data, "labels", list)
        if not labels or not all(isinstance(name, str) for name in labels):
            raise ModelFileError(f"labels must be a non-empty list of label names, not {labels!r}")
        # An unknown label's error names it; one per output, distinct, is the classifier's check.
        parsed = tuple(Label.parse(name) for name in labels)
        files = _field(data, "files", dict)
        for name, digest in files.items():
            if not name or not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                raise ModelFileError(f"files: {name!r} must map to a sha256 (64 hex digits), not {digest!r}")
        try:
            crop = CropSpec.from_json(_field(data, "crop", dict))
        except ValueError as exc:
            raise ModelFileError(f"crop: {exc}") from None
        parameters = data.get("parameters", 0)
        if type(parameters) is not int or not 0 <= parameters <= MAX_PARAMETERS:
            raise ModelFileError(
                f"parameters must be a whole number from 0 to {MAX_PARAMETERS}, not {parameters!r}"
            )
        return cls(
            version=_field(data, "version", str),
            labels=parsed,
            crop=crop,
            arch=_field(data, "arch", str),
            created=_field(data, "created", str),
            files=dict(files),
            parameters=parameters,
            metrics=_field(data, "metrics", dict, {}),
            data=_field(data, "data", list, []),
            data_hash=_field(data, "data_hash", str, ""),
            training=_field(data, "training", dict, {}),
        )


_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_PARAMETERS = 10**12  # far above any classifier a gate runs; JSON may hold any number
_MISSING = object()
_KINDS = {str: "a string", dict: "an object", list: "a list"}


def _field(data: dict[str, Any], name: str, kind: type, default: object = _MISSING) -> Any:
    """`data[name]`, which must be of `kind` (a required field when there is no `default`)."""
    if name not in data:
        if default is _MISSING:
            raise ModelFileError(f"{name} is missing")
        return default
    value = data[name]
    if not isinstance(value, kind):
        raise ModelFileError(f"{name} must be {_KINDS[kind]}, not {value!r}")
    return value


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
