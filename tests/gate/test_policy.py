"""The decision policy: noisy and flapping probabilities, real changes, lingering people."""

from __future__ import annotations

import random

import pytest

from maskgate.config import PolicyConfig
from maskgate.core import Action, Box, Classification, Face, Label, Track
from maskgate.gate.policy import DecisionPolicy

W, WO, IM = Label.WITH_MASK, Label.WITHOUT_MASK, Label.IMPROPER_MASK


def track(track_id: int = 1, side: float = 150, score: float = 0.99, first_seen: float = 0.0) -> Track:
    return Track(track_id, Face(Box(0, 0, side, side), score), hits=5, first_seen=first_seen, last_seen=0.0)


def probs(label: Label, confidence: float = 0.9) -> Classification:
    rest = (1 - confidence) / 2
    return Classification({name: (confidence if name == label else rest) for name in Label})


def feed(policy: DecisionPolicy, labels, track_obj: Track | None = None, fps: float = 10.0):
    decisions = []
    for n, item in enumerate(labels):
        classification = item if isinstance(item, Classification) else probs(item)
        decision = policy.observe(track_obj or track(), classification, n / fps, "v1")
        if decision:
            decisions.append(decision)
    return decisions


@pytest.fixture
def policy() -> DecisionPolicy:
    return DecisionPolicy(PolicyConfig(), gate_id="gate-1")


def test_one_decision_for_a_steady_person(policy):
    decisions = feed(policy, [W] * 60)
    assert [(d.label, d.action) for d in decisions] == [(W, Action.ALLOW)]
    assert decisions[0].latency_ms == pytest.approx(400.0)  # the 5th classification at 10 fps
    assert decisions[0].gate_id == "gate-1" and decisions[0].model_version == "v1"


def test_noisy_flapping_probabilities_give_one_decision():
    rng = random.Random(7)
    labels = [W if rng.random() < 0.85 else rng.choice([WO, IM]) for _ in range(200)]
    decisions = feed(DecisionPolicy(PolicyConfig(), "g"), labels)
    assert [d.label for d in decisions] == [W]


def test_alternating_labels_never_decide(policy):
    assert feed(policy, [W, WO] * 50) == []


def test_a_real_change_gives_exactly_one_more_decision(policy):
    decisions = feed(policy, [WO] * 30 + [W] * 60)  # the person pulls the mask up
    assert [(d.label, d.action) for d in decisions] == [(WO, Action.DENY), (W, Action.ALLOW)]


def test_a_brief_change_is_not_a_change(policy):
    decisions = feed(policy, [WO] * 30 + [W] * 8 + [WO] * 30)
    assert [d.label for d in decisions] == [WO]


def test_frames_too_unsure_to_count_never_carry_a_change_through(policy):
    # Denied; then the mask goes up for a while (the window's verdict turns), then only unsure looks:
    # they are not evidence, so they must not count toward re-deciding, however many come.
    unsure_bare = probs(WO, 0.55)
    decisions = feed(policy, [WO] * 15 + [W] * 11 + [unsure_bare] * 40)
    assert [d.label for d in decisions] == [WO]
    # ... while confident looks that agree with the new verdict do carry it through.
    assert [d.label for d in feed(DecisionPolicy(PolicyConfig(), "g"), [WO] * 15 + [W] * 15)] == [WO, W]


def test_lingering_never_repeats(policy):
    assert len(feed(policy, [W] * 1000)) == 1


def test_opening_the_door_needs_more_certainty_than_keeping_it_shut(policy):
    # A beard mistaken for a mask at 0.7 must not open the door; a 0.7 "no mask" may refuse.
    assert feed(policy, [probs(W, confidence=0.7)] * 60) == []
    assert [d.action for d in feed(policy, [probs(WO, confidence=0.7)] * 10, track(2))] == [Action.DENY]
    assert [d.action for d in feed(policy, [probs(W, confidence=0.9)] * 10, track(3))] == [Action.ALLOW]


def test_small_faces_low_scores_and_unsure_classifications_are_not_evidence(policy):
    assert feed(policy, [W] * 30, track(side=30)) == []
    assert feed(policy, [W] * 30, track(track_id=2, score=0.5)) == []
    assert feed(policy, [probs(W, confidence=0.4)] * 30, track(track_id=3)) == []


def test_one_frame_of_one_face_is_judged_as_evidence_alone(policy):
    # What tools ask of a single photo: would this face count toward a decision, and would it open?
    face = track().face
    assert policy.opens(W) and not policy.opens(WO) and not policy.opens(IM)
    assert policy.is_evidence(face, probs(W, confidence=0.9))
    assert not policy.is_evidence(face, probs(W, confidence=0.7))  # the door's floor is higher
    assert policy.is_evidence(face, probs(WO, confidence=0.7))
    assert not policy.is_evidence(track(side=30).face, probs(WO, confidence=0.99))
    assert not policy.is_evidence(track(score=0.5).face, probs(WO, confidence=0.99))
    # ... and toward opening the door: an opening label that is evidence.
    assert policy.opening == (W,)
    assert policy.counts_to_open(face, probs(W, confidence=0.9))
    assert not policy.counts_to_open(face, probs(W, confidence=0.7))
    assert not policy.counts_to_open(face, probs(WO, confidence=0.99))
    assert not policy.counts_to_open(track(side=30).face, probs(W, confidence=0.99))


def test_evidence_gathers_before_the_track_is_confirmed_but_no_decision_is_made(policy):
    for hits in (1, 2):
        unconfirmed = Track(1, Face(Box(0, 0, 150, 150), 0.99), hits, first_seen=0.0, last_seen=0.0)
        assert feed(policy, [W] * 10, unconfirmed) == []
    decisions = feed(policy, [W], track(1))  # confirmed now: the evidence already there counts
    assert [d.label for d in decisions] == [W]


def test_tracks_are_independent_and_forgotten(policy):
    feed(policy, [W] * 10, track(1))
    assert [d.label for d in feed(policy, [WO] * 10, track(2))] == [WO]
    policy.forget(1)
    assert [d.label for d in feed(policy, [W] * 10, track(1))] == [W]  # a new person with an old id


def test_larger_faces_weigh_more():
    policy = DecisionPolicy(PolicyConfig(min_classifications=4, majority=0.6, window=4), "g")
    small, large = track(side=70), track(side=250)
    decisions = []
    for observed, label in [(small, WO), (small, WO), (large, W), (large, W)]:
        decision = policy.observe(observed, probs(label), 0.0, "v1")
        decisions += [decision] if decision else []
    assert [d.label for d in decisions] == [W]  # 500 px of with_mask against 140 px without


def test_actions_come_from_the_config():
    policy = DecisionPolicy(PolicyConfig(improper_mask="deny"), "g")
    assert [d.action for d in feed(policy, [IM] * 10)] == [Action.DENY]


def test_decision_probabilities_are_plain_floats(policy):
    decision = feed(policy, [W] * 10)[0]
    assert set(decision.probabilities) == set(Label)
    assert decision.confidence == pytest.approx(0.9)
    assert all(type(p) is float for p in decision.probabilities.values())
