"""Face snapshots of incidents (deny, warn), for the people who review them."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from maskgate.core import Box, Decision
from maskgate.crop import EmptyCropError, square_box

log = logging.getLogger(__name__)

SNAPSHOT_MARGIN = 0.5  # more context than the classifier's crop: a reviewer wants the whole head


class SnapshotWriter:
    """Writes JPEGs under `root/<gate>/<YYYY-MM-DD>/<decision uuid>.jpg`; paths are relative to `root`."""

    def __init__(self, root: Path, quality: int = 90):
        self.root = root
        self.quality = quality

    def save(self, image: np.ndarray, box: Box, decision: Decision) -> str | None:
        """The snapshot's relative path, or None if it could not be written (logged; never fatal)."""
        relative = (
            Path(decision.gate_id) / decision.decided_at.strftime("%Y-%m-%d") / f"{decision.decision_id}.jpg"
        )
        try:
            crop = _context_crop(image, box)
            ok, encoded = cv2.imencode(
                ".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self.quality]
            )
            if not ok:
                raise OSError("JPEG encoding failed")
            target = self.root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(encoded.tobytes())
        except (OSError, EmptyCropError, cv2.error) as exc:
            # A full disk must not stop the gate: the event is still recorded, without a picture.
            log.error("cannot save snapshot for decision %s: %s", decision.decision_id, exc)
            return None
        return str(relative)


def _context_crop(image: np.ndarray, box: Box) -> np.ndarray:
    height, width = image.shape[:2]
    area = square_box(box, SNAPSHOT_MARGIN).clip(width, height)
    if area.area < 1:
        raise EmptyCropError(f"box {box} is outside the image")
    return image[int(area.y1) : int(np.ceil(area.y2)), int(area.x1) : int(np.ceil(area.x2))]
