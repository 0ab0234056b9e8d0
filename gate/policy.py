"""One decision per person: per-track evidence, debounced (DESIGN.md, "Labels and decisions").

For each confirmed track the policy keeps the last `window` classifications that count as
evidence (face large and sharp enough to trust, classifier confident enough, and more confident
still for a label that opens the door), weighted by face
size, since a larger face is a better look. Once there are `min_classifications` of them and one
label holds a `majority` of the weight, that label is the track's verdict and one Decision is
issued. The verdict may change later (the person pulls the mask up) but a new Decision is issued
only after the new verdict held, without a break, while `change_frames` classifications that are
evidence for it came in, so flapping probabilities never toggle the door, frames too unsure to count
never carry a change on their own, and a person who lingers never opens it twice.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from maskgate.config import PolicyConfig
from maskgate.core import LABELS, Action, Classification, Decision, Face, Label, Track


@dataclass
class _Evidence:
    label: Label
    weight: float
    classification: Classification


@dataclass
class _TrackHistory:
    evidence: deque[_Evidence]
    issued: Label | None = None  # the label of the last decision issued for this track
    candidate: Label | None = None  # a different verdict waiting to prove it is stable
    candidate_streak: int = 0


class DecisionPolicy:
    def __init__(self, config: PolicyConfig, gate_id: str):
        self.config = config
        self.gate_id = gate_id
        self.actions = {
            Label.WITH_MASK: Action(config.with_mask),
            Label.WITHOUT_MASK: Action(config.without_mask),
            Label.IMPROPER_MASK: Action(config.improper_mask),
        }
        self._tracks: dict[int, _TrackHistory] = {}

    def observe(
        self, track: Track, classification: Classification, timestamp: float, model_version: str
    ) -> Decision | None:
        """Add one frame's classification of `track`; return a Decision when one is due."""
        history = self._tracks.setdefault(track.track_id, _TrackHistory(deque(maxlen=self.config.window)))
        evidence = self.is_evidence(track.face, classification)
        if evidence:
            history.evidence.append(_Evidence(classification.label, track.face.box.side, classification))
        if track.hits < self.config.min_track_hits:
            return None  # evidence gathers while the tracker confirms the person; no decision yet
        verdict = self._verdict(history)
        if verdict is None:
            history.candidate, history.candidate_streak = None, 0  # the new verdict did not hold
            return None
        if history.issued is None:
            return self._issue(track, history, verdict, timestamp, model_version)
        if verdict == history.issued:
            history.candidate, history.candidate_streak = None, 0
            return None
        if verdict != history.candidate:
            history.candidate, history.candidate_streak = verdict, 0
        if not (evidence and classification.label == verdict):
            # Only a new look that says so counts: frames too unsure to be evidence leave the window,
            # and so the verdict, as it was, and must not carry a change through on their own.
            return None
        history.candidate_streak += 1
        if history.candidate_streak >= self.config.change_frames:
            return self._issue(track, history, verdict, timestamp, model_version)
        return None

    def forget(self, track_id: int) -> None:
        """The track ended: drop its evidence."""
        self._tracks.pop(track_id, None)

    def new_model(self) -> None:
        """The classifier was replaced: its votes no longer count. Each track's evidence (and any
        change waiting to prove itself) starts again, so a faulty model rolled back cannot open the
        door with the votes it already cast, and a decision is the work of the model it names. What
        was issued stays issued: a person already decided on is not decided on again for it."""
        for history in self._tracks.values():
            history.evidence.clear()
            history.candidate, history.candidate_streak = None, 0

    @property
    def tracks_held(self) -> int:
        """How many tracks the policy keeps evidence for (each until it is forgotten)."""
        return len(self._tracks)

    def opens(self, label: Label) -> bool:
        """Whether a decision for `label` opens the door."""
        return self.actions[label] is Action.ALLOW

    @property
    def opening(self) -> tuple[Label, ...]:
        """The labels whose decision opens the door, in model output order."""
        return tuple(label for label in LABELS if self.opens(label))

    def counts_to_open(self, face: Face, classification: Classification) -> bool:
        """Whether one frame's `classification` of `face` counts toward opening the door."""
        return self.opens(classification.label) and self.is_evidence(face, classification)

    def counts_to_open_alone(self, classification: Classification) -> bool:
        """Whether `classification` counts toward opening the door by the half of the rule that
        needs no face (its size and detector score): how `evaluate` judges face crops."""
        return self.opens(classification.label) and self.is_sure(classification)

    def is_evidence(self, face: Face, classification: Classification) -> bool:
        """Whether one frame's `classification` of `face` counts toward a decision."""
        return (
            face.box.side >= self.config.min_face_size
            and face.score >= self.config.min_detector_score
            and self.is_sure(classification)
        )

    def is_sure(self, classification: Classification) -> bool:
        """Whether `classification` is confident enough to be evidence."""
        # Opening the door for the wrong person is the worst error a gate can make, so a label
        # that opens it must be more certain than one that keeps it shut (fail closed).
        allows = self.opens(classification.label)
        floor = self.config.allow_confidence_floor if allows else self.config.confidence_floor
        return classification.confidence >= floor

    def _verdict(self, history: _TrackHistory) -> Label | None:
        if len(history.evidence) < self.config.min_classifications:
            return None
        weights: dict[Label, float] = {}
        for item in history.evidence:
            weights[item.label] = weights.get(item.label, 0.0) + item.weight
        label = max(weights, key=weights.__getitem__)
        return label if weights[label] >= self.config.majority * sum(weights.values()) else None

    def _issue(
        self, track: Track, history: _TrackHistory, label: Label, timestamp: float, model_version: str
    ) -> Decision:
        supporting = [item for item in history.evidence if item.label == label]
        total = sum(item.weight for item in supporting)
        # The decision's probabilities: the size-weighted mean over the evidence that supports it.
        probabilities = {
            name: sum(item.weight * item.classification.probabilities[name] for item in supporting) / total
            for name in supporting[0].classification.probabilities
        }
        history.issued, history.candidate, history.candidate_streak = label, None, 0
        return Decision(
            gate_id=self.gate_id,
            track_id=track.track_id,
            action=self.actions[label],
            label=label,
            confidence=probabilities[label],
            probabilities=probabilities,
            model_version=model_version,
            latency_ms=max(0.0, (timestamp - track.first_seen) * 1000),
        )
