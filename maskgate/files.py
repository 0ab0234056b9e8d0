"""Files a stored path points at: face snapshots (and model plots), checked before anything is
read or deleted.

A path comes from the database (written by the agent or the training job), never from a URL,
and is still checked: after resolving symbolic links it must lie inside its folder and be an
image, so a stored ``../../etc/passwd`` or a link out of the folder is neither served, nor
trained on, nor deleted. Used by the dashboard (serving), the retraining pool (reading) and
``maskgate db purge`` (deleting the snapshots of the events it deletes).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".svg": "image/svg+xml"}
SNAPSHOT_TYPES = {key: value for key, value in IMAGE_TYPES.items() if key != ".svg"}


def inside(folder: Path, stored: str | Path, types: Mapping[str, str]) -> Path | None:
    """`stored` (relative to `folder`, or absolute) if it resolves to an image file inside `folder`."""
    try:
        root = folder.resolve()
        candidate = Path(stored)
        resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
        if not resolved.is_relative_to(root) or resolved == root:
            return None
        if resolved.suffix.lower() not in types or not resolved.is_file():
            return None
    except (OSError, ValueError):  # a NUL byte, a loop of links, an unreadable folder
        return None
    return resolved


def snapshot_file(snapshots: Path, stored: str | None) -> Path | None:
    """The event's face snapshot, or None if it has none, it is gone or it points outside the folder."""
    return inside(snapshots, stored, SNAPSHOT_TYPES) if stored else None


def remove_snapshots(snapshots: Path, stored: Iterable[str]) -> int:
    """Delete the snapshots `stored` names that lie inside `snapshots`; how many were deleted.

    One that is gone already or points elsewhere is skipped; one that cannot be deleted is logged
    and skipped (the events it belonged to are gone either way).
    """
    removed = 0
    for path in filter(None, (snapshot_file(snapshots, name) for name in stored)):
        try:
            path.unlink()
        except OSError as exc:
            log.warning("snapshot %s not deleted: %s", path, exc.strerror or exc)
            continue
        removed += 1
    return removed
