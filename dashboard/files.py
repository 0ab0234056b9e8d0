"""Files the dashboard serves from disk: face snapshots and model cards and plots.

Every path is checked by :mod:`maskgate.files` first (inside its folder, links resolved, an image).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from maskgate.files import IMAGE_TYPES, inside
from maskgate.store import ModelVersion

PLOT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
CARD_FILE = "card.json"
MAX_CARD_BYTES = 1_000_000

# A plot opened on its own (not through <img>) could run script if it is SVG: forbid it.
PLOT_CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; sandbox"


def read_card(model: ModelVersion) -> dict[str, Any] | None:
    """The model's card.json, or None when it is missing or unreadable (the page says so)."""
    path = Path(model.path) / CARD_FILE
    try:
        if path.stat().st_size > MAX_CARD_BYTES:
            return None
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) else None


def card_facts(card: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What a person wants to know of a model card, as (name, text) rows. Cards are files on disk,
    so every field is checked for its type; an odd one is left out, never an error."""
    facts: list[tuple[str, str]] = []
    arch = card.get("arch")
    if isinstance(arch, str):
        training = card.get("training")
        members = training.get("members") if isinstance(training, Mapping) else None
        if isinstance(members, list) and members:
            versions = [str(m.get("version", "?")) for m in members if isinstance(m, Mapping)]
            arch += f" of {len(members)}: {', '.join(versions)}"
        facts.append(("architecture", arch))
    crop = card.get("crop")
    if isinstance(crop, Mapping) and {"size", "color", "margin"} <= set(crop):
        facts.append(("crop", f"{crop['size']} px {crop['color']}, margin {crop['margin']}"))
    parameters = card.get("parameters")
    if isinstance(parameters, int) and not isinstance(parameters, bool):
        facts.append(("parameters", f"{parameters:,}"))
    labels = card.get("labels")
    if isinstance(labels, list):
        facts.append(("labels", ", ".join(str(label) for label in labels)))
    for key in ("created", "version"):
        if isinstance(card.get(key), str):
            facts.append((key, card[key]))
    if isinstance(card.get("data_hash"), str):
        facts.append(("data hash", card["data_hash"][:12]))
    return facts


def plot_names(model: ModelVersion) -> list[str]:
    """The image files in the model's folder (confusion matrix, curves...), by name."""
    folder = Path(model.path)
    try:
        names = sorted(entry.name for entry in folder.iterdir())
    except OSError:
        return []
    return [name for name in names if plot_file(model, name) is not None]


def plot_file(model: ModelVersion, name: str) -> Path | None:
    """One plot of the model, by file name only; anything else (a path, a non-image) is None."""
    if not PLOT_NAME.match(name) or name.startswith("."):
        return None
    found = inside(Path(model.path), name, IMAGE_TYPES)
    return found if found is not None and found.parent == Path(model.path).resolve() else None


def flat_metrics(metrics: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested metrics as (dotted name, value) pairs for a table: {"recall": {"x": 1}} -> ("recall.x", 1)."""
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flat_metrics(value, prefix=f"{name}.")
        elif isinstance(value, list | tuple):
            yield name, ", ".join(str(item) for item in value[:20])
        else:
            yield name, value
