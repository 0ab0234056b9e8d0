"""Follows faces across frames: stable ids by IoU with optimal (Hungarian) assignment.

A track counts (is *confirmed*) once it was seen in `min_hits` frames, so a single false
detection never becomes a person (the policy decides only for confirmed tracks). A track
survives `max_age_s` without detections, so a person who turns away for a moment keeps their
id (and their evidence) when they turn back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from maskgate.core import Box, Face, Track


@dataclass(frozen=True)
class TrackerConfig:
    min_hits: int = 3
    max_age_s: float = 1.5  # how long a person may be unseen and keep their id
    min_iou: float = 0.2  # below this a detection is not the same person
    # A fast walker can outrun IoU between frames: also accept a face whose centre moved by
    # less than this many box sides, when the IoU says nothing.
    max_center_shift: float = 0.6


@dataclass
class _TrackState:
    track_id: int
    face: Face
    hits: int
    first_seen: float
    last_seen: float
    velocity: tuple[float, float] = (0.0, 0.0)  # centre motion, pixels per second

    def snapshot(self) -> Track:
        return Track(self.track_id, self.face, self.hits, self.first_seen, self.last_seen)

    def predicted(self, timestamp: float) -> Box:
        """Where the face should be now if it kept moving: keeps ids apart when people cross."""
        dt = timestamp - self.last_seen
        dx, dy = self.velocity[0] * dt, self.velocity[1] * dt
        box = self.face.box
        return Box(box.x1 + dx, box.y1 + dy, box.x2 + dx, box.y2 + dy)

    def moved_to(self, face: Face, timestamp: float) -> None:
        dt = timestamp - self.last_seen
        if dt > 0:
            (px, py), (cx, cy) = self.face.box.center, face.box.center
            measured = ((cx - px) / dt, (cy - py) / dt)
            # Smooth the velocity: detector boxes jitter by a few pixels from frame to frame.
            self.velocity = tuple(
                0.5 * old + 0.5 * new for old, new in zip(self.velocity, measured, strict=True)
            )
        self.face, self.hits, self.last_seen = face, self.hits + 1, timestamp


@dataclass
class TrackerUpdate:
    """One frame's outcome: the tracks seen in it (with the face each matched) and ended ids.

    `tracks` includes tracks not yet confirmed, so that evidence about a person can gather
    while the tracker is still making sure they are one; `confirmed` are those that count.
    """

    tracks: list[Track] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)
    # Unconfirmed tracks that went stale (a false detection, a passer-by): never a person, but
    # whoever kept something about them (the policy's evidence) must let it go too.
    dropped: list[int] = field(default_factory=list)
    min_hits: int = 1

    @property
    def gone(self) -> list[int]:
        """Every track that ended in this frame, confirmed or not."""
        return [*self.ended, *self.dropped]

    @property
    def confirmed(self) -> list[Track]:
        return [track for track in self.tracks if track.hits >= self.min_hits]


class Tracker:
    def __init__(self, config: TrackerConfig | None = None):
        self.config = config or TrackerConfig()
        self._tracks: list[_TrackState] = []
        self._next_id = 1

    def update(self, faces: list[Face], timestamp: float) -> TrackerUpdate:
        """End stale tracks, associate this frame's faces with the live ones, start new tracks."""
        update = TrackerUpdate(min_hits=self.config.min_hits)
        # Stale tracks end before matching: after a gap longer than max_age_s (a camera outage,
        # an empty doorway) the next face is someone new, never the last person continued.
        alive = []
        for track in self._tracks:
            if timestamp - track.last_seen > self.config.max_age_s:
                gone = update.ended if track.hits >= self.config.min_hits else update.dropped
                gone.append(track.track_id)
            else:
                alive.append(track)
        self._tracks = alive
        matches, unmatched_faces = self._associate(faces, timestamp)
        for track, face in matches:
            track.moved_to(face, timestamp)
        for face in unmatched_faces:
            self._tracks.append(_TrackState(self._next_id, face, 1, timestamp, timestamp))
            self._next_id += 1
        update.tracks = [track.snapshot() for track in self._tracks if track.last_seen == timestamp]
        return update

    @property
    def active(self) -> int:
        return len(self._tracks)

    def _associate(
        self, faces: list[Face], timestamp: float
    ) -> tuple[list[tuple[_TrackState, Face]], list[Face]]:
        if not self._tracks or not faces:
            return [], list(faces)
        cost = np.ones((len(self._tracks), len(faces)))
        for i, track in enumerate(self._tracks):
            expected = track.predicted(timestamp)
            for j, face in enumerate(faces):
                cost[i, j] = 1.0 - self._similarity(expected, face.box)
        rows, cols = linear_sum_assignment(cost)
        matches = [(self._tracks[i], faces[j]) for i, j in zip(rows, cols, strict=True) if cost[i, j] < 1.0]
        matched = {id(face) for _, face in matches}
        return matches, [face for face in faces if id(face) not in matched]

    def _similarity(self, expected: Box, current: Box) -> float:
        """IoU when it is informative; else a small score for a nearby centre; 0 for another person."""
        iou = expected.iou(current)
        if iou >= self.config.min_iou:
            return iou
        (px, py), (cx, cy) = expected.center, current.center
        side = max(expected.side, current.side, 1.0)
        shift = np.hypot(cx - px, cy - py) / side
        size_ratio = min(expected.side, current.side) / side
        if shift <= self.config.max_center_shift and size_ratio >= 0.5:
            return 0.5 * self.config.min_iou * (1 - shift / self.config.max_center_shift) + 1e-6
        return 0.0
