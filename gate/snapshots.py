"""Face snapshots of incidents (deny, warn), for the people who review them."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import cv2
import numpy as np

from maskgate.core import Box, Decision
from maskgate.crop import EmptyCropError, square_box

log = logging.getLogger(__name__)

SNAPSHOT_MARGIN = 0.5  # more context than the classifier's crop: a reviewer wants the whole head
PARTIAL_SUFFIX = ".part"  # written first, renamed when whole: a reviewer never gets half a JPEG


class SnapshotWriter:
    """Writes JPEGs under `root/<gate>/<YYYY-MM-DD>/<decision uuid>.jpg`; paths are relative to `root`.

    A failure (a full disk, a read-only mount) never stops the gate: the event is recorded without
    a picture. It is logged once, not once per incident, so that a full disk does not also flood
    the log; :attr:`failures` counts them, and the first snapshot saved again is logged too.
    """

    def __init__(self, root: Path, quality: int = 90):
        self.root = root
        self.quality = quality
        self.failures = 0  # snapshots not saved since this writer started
        self._failing: str | None = None  # the error being suppressed, while failures go on

    def save(self, image: np.ndarray, box: Box, decision: Decision) -> str | None:
        """The snapshot's relative path, or None if it could not be written (logged; never fatal)."""
        relative = (
            Path(decision.gate_id) / decision.decided_at.strftime("%Y-%m-%d") / f"{decision.decision_id}.jpg"
        )
        target = self.root / relative
        partial = target.with_name(target.name + PARTIAL_SUFFIX)
        try:
            crop = _context_crop(image, box)
            ok, encoded = cv2.imencode(
                ".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self.quality]
            )
            if not ok:
                raise OSError("JPEG encoding failed")
            target.parent.mkdir(parents=True, exist_ok=True)
            partial.write_bytes(encoded.tobytes())
            partial.replace(target)
        except (OSError, EmptyCropError, cv2.error) as exc:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)  # what a full disk left of it
            self._failed(decision, exc)
            return None
        if self._failing is not None:
            log.warning("snapshots are saved again, after %d failed (%s)", self.failures, self._failing)
            self._failing = None
        return str(relative)

    def _failed(self, decision: Decision, exc: Exception) -> None:
        self.failures += 1
        if not isinstance(exc, OSError):  # this face only (nothing to crop): not a lasting condition
            log.error("cannot save snapshot for decision %s: %s", decision.decision_id, exc)
            return
        kind = f"{type(exc).__name__} errno {exc.errno}" if exc.errno else type(exc).__name__
        if kind == self._failing:
            log.debug("cannot save snapshot for decision %s: %s", decision.decision_id, exc)
            return
        self._failing = kind
        log.error(
            "cannot save snapshot for decision %s: %s; events are recorded without snapshots, "
            "and further failures like this are not logged until one is saved again",
            decision.decision_id,
            exc,
        )


def _context_crop(image: np.ndarray, box: Box) -> np.ndarray:
    height, width = image.shape[:2]
    area = square_box(box, SNAPSHOT_MARGIN).clip(width, height)
    if area.area < 1:
        raise EmptyCropError(f"box {box} is outside the image")
    return image[int(area.y1) : int(np.ceil(area.y2)), int(area.x1) : int(np.ceil(area.x2))]
