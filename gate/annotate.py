"""Annotated video of what the agent saw: boxes, track ids, labels, decisions."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from maskgate.core import Action, Classification, Decision, Track

log = logging.getLogger(__name__)

# RGB colours per action; grey while a track is still undecided.
COLOURS = {Action.ALLOW: (40, 200, 60), Action.DENY: (230, 40, 40), Action.WARN: (250, 170, 20)}
UNDECIDED = (200, 200, 200)


def draw(
    image: np.ndarray,
    seen: list[tuple[Track, Classification]],
    decided: dict[int, Decision],
) -> np.ndarray:
    """A copy of `image` with each track's box, id, current label and decision drawn on it."""
    out = image.copy()
    for track, classification in seen:
        decision = decided.get(track.track_id)
        colour = COLOURS[decision.action] if decision else UNDECIDED
        box = track.face.box
        top_left, bottom_right = (int(box.x1), int(box.y1)), (int(box.x2), int(box.y2))
        cv2.rectangle(out, top_left, bottom_right, colour, 2)
        text = f"#{track.track_id} {classification.label.value} {classification.confidence:.2f}"
        if decision:
            text += f" -> {decision.action.value.upper()}"
        cv2.putText(
            out, text, (int(box.x1), max(12, int(box.y1) - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1
        )
    return out


class VideoSink:
    """Writes RGB frames to an mp4 (opened on the first frame, whose size it takes)."""

    def __init__(self, path: Path, fps: float):
        self.path = path
        self.fps = fps
        self._writer: cv2.VideoWriter | None = None

    def write(self, image: np.ndarray) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            size = (image.shape[1], image.shape[0])
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, size)
            if not self._writer.isOpened():
                raise OSError(f"cannot write video {self.path}")
        self._writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
