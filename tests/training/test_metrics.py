"""Metrics against values computed by hand (the arithmetic is in the comments)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from maskgate.config import PolicyConfig
from maskgate.core import Box, Classification, Label
from maskgate.gate.policy import DecisionPolicy
from maskgate.training.metrics import (
    Detection,
    GroundTruth,
    SceneResult,
    average_precision,
    band_mask,
    crop_metrics,
    crop_metrics_by_band,
    door_allows,
    door_allows_by_band,
    in_band,
    missed_faces,
    scene_door,
    scene_metrics,
    voc_ap,
)

W, WO, IM = Label.WITH_MASK, Label.WITHOUT_MASK, Label.IMPROPER_MASK


def test_crop_metrics_by_hand():
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    m = crop_metrics(y_true, y_pred)
    assert m.confusion.tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    assert m.accuracy == 5 / 8
    # with_mask: tp 2 of 3 predicted, 3 true; without: 1 of 2, 2; improper: 2 of 3, 3.
    assert m.per_class[W].precision == pytest.approx(2 / 3) and m.per_class[W].recall == pytest.approx(2 / 3)
    assert m.per_class[WO].f1 == pytest.approx(0.5)
    assert m.per_class[IM].support == 3
    assert m.macro_f1 == pytest.approx((2 / 3 + 0.5 + 2 / 3) / 3)


def test_crop_metrics_conventions_for_absent_classes():
    m = crop_metrics(np.array([0, 0, 1]), np.array([0, 1, 1]))
    assert m.per_class[IM].to_json() == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # improper occurs neither in truth nor predictions: macro-F1 over the other two (2/3 and 2/3).
    assert m.macro_f1 == pytest.approx(2 / 3)
    assert crop_metrics(np.array([], int), np.array([], int)).accuracy == 0.0


def test_door_allows_by_hand():
    probabilities = np.array(
        [
            [0.90, 0.10, 0.00],  # masked, called masked at 0.90: counts toward opening
            [0.80, 0.20, 0.00],  # masked, but under the floor of 0.85: kept out
            [0.10, 0.05, 0.85],  # masked, called improper: kept out
            [0.86, 0.14, 0.00],  # bare, called masked at 0.86: a false allow
            [0.84, 0.16, 0.00],  # bare, called masked under the floor: no harm
            [0.95, 0.00, 0.05],  # improper, called masked: a false allow
            [0.00, 0.10, 0.90],  # improper, called improper
        ]
    )
    y_true = np.array([0, 0, 0, 1, 1, 2, 2])

    def counts(policy: DecisionPolicy) -> np.ndarray:
        return np.array([policy.counts_to_open_alone(Classification.from_vector(p)) for p in probabilities])

    gate = DecisionPolicy(PolicyConfig(allow_confidence_floor=0.85), "gate-1")
    door = door_allows(y_true, counts(gate), [0])
    assert (door.shut_faces, door.false_allows, door.open_faces, door.kept_out) == (4, 2, 3, 2)
    assert door.to_json() == {
        "false_allows": 2, "false_allow_rate": 0.5, "kept_out": 2, "kept_out_rate": pytest.approx(2 / 3)
    }  # fmt: skip
    # A gate that lets improper masks in: only the two bare faces should keep it shut; face 2, called
    # improper at 0.85, now counts toward opening as it should.
    lenient_gate = DecisionPolicy(PolicyConfig(allow_confidence_floor=0.85, improper_mask="allow"), "gate-1")
    lenient = door_allows(y_true, counts(lenient_gate), [0, 2])
    assert (lenient.shut_faces, lenient.false_allows, lenient.open_faces, lenient.kept_out) == (2, 1, 5, 1)
    by_band = door_allows_by_band(y_true, counts(gate), np.array([20, 40, 40, 40, 100, 100, 100]), [0])
    assert by_band[">=32"].false_allows == 2
    assert (by_band["<32"].open_faces, by_band["<32"].kept_out) == (1, 0)
    assert door_allows(y_true[:0], counts(gate)[:0], [0]).to_json()["false_allow_rate"] == 0.0


def test_size_bands():
    sides = np.array([10, 31.9, 32, 95.9, 96, 250])
    assert band_mask(sides, "<32").tolist() == [True, True, False, False, False, False]
    assert band_mask(sides, "32-96").tolist() == [False, False, True, True, False, False]
    assert band_mask(sides, ">=96").tolist() == [False, False, False, False, True, True]
    assert band_mask(sides, ">=32").sum() == 4
    bands = crop_metrics_by_band(np.zeros(6, int), np.zeros(6, int), sides)
    assert [bands[b].count for b in ("all", "<32", "32-96", ">=96", ">=32")] == [6, 2, 2, 2, 4]


def test_voc_all_point_ap_by_hand():
    # TP FP TP FP TP with 3 positives: recall 1/3 1/3 2/3 2/3 1, precision 1 .5 2/3 .5 .6.
    # Envelope: 1, 2/3, .6 on the three recall steps -> AP = (1 + 2/3 + .6) / 3.
    recall = np.array([1, 1, 2, 2, 3]) / 3
    precision = np.array([1, 0.5, 2 / 3, 0.5, 0.6])
    assert voc_ap(recall, precision) == pytest.approx((1 + 2 / 3 + 0.6) / 3)
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(1.0)


def det(box: tuple[float, float, float, float], score: float, *probs: float) -> Detection:
    return Detection(Box(*box), score, probs)


def scenes() -> list[SceneResult]:
    """Image 1: A (with, 40 px) found twice, B (without, 20 px) missed, C (improper, 100 px) found,
    one detection on nothing (50 px). Image 2: D (without, 50 px) found but called with_mask."""
    one = SceneResult(
        (
            GroundTruth(Box(0, 0, 40, 40), W),
            GroundTruth(Box(100, 100, 120, 120), WO),
            GroundTruth(Box(200, 200, 300, 300), IM),
        ),
        (
            det((0, 0, 40, 40), 0.9, 0.8, 0.1, 0.1),
            det((2, 2, 40, 40), 0.8, 0.7, 0.2, 0.1),  # duplicate of A: false positive
            det((200, 200, 300, 300), 0.95, 0.1, 0.2, 0.7),
            det((400, 400, 450, 450), 0.5, 0.2, 0.7, 0.1),  # nothing there
        ),
    )
    two = SceneResult((GroundTruth(Box(0, 0, 50, 50), WO),), (det((0, 0, 50, 50), 0.9, 0.6, 0.3, 0.1),))
    return [one, two]


def test_scene_metrics_by_hand():
    m = scene_metrics(scenes())
    assert m.truth == {W: 1, WO: 2, IM: 1}
    assert m.detections == 5 and m.precision_all == pytest.approx(3 / 5)
    assert m.recall == {W: 1.0, WO: 0.5, IM: 1.0} and m.recall_all == pytest.approx(3 / 4)
    # Labelled with_mask: d1 (right), d2 (duplicate), d5 (wrong) -> 1/3; without: d4 (nothing) -> 0.
    assert m.precision == pytest.approx({W: 1 / 3, WO: 0.0, IM: 1.0})
    assert m.matched == 3 and m.face_accuracy == pytest.approx(2 / 3)
    assert m.confusion.tolist() == [[1, 0, 0], [1, 0, 0], [0, 0, 1]]
    # AP with_mask: d1 (.72) is the only TP and ranks first -> 1. AP without: d4 .35 FP, d5 .27 TP
    # (D), rest FP; 2 positives -> precision .5 at recall .5, never more -> .25. Improper: d3 first -> 1.
    assert m.ap50 == pytest.approx({W: 1.0, WO: 0.25, IM: 1.0})
    assert m.map50 == pytest.approx(0.75)


def test_scene_door_by_hand():
    """With_mask opens. Image 1: A (with) found by two detections, only the duplicate counts toward
    opening; B (without) missed; C (improper) found, not counting; a detection on nothing counts.
    Image 2: D (without) found and counting: a false allow."""
    one, two = scenes()
    counting = [
        replace(one.detections[0], counts_to_open=False),
        replace(one.detections[1], counts_to_open=True),  # the duplicate of A still lets A in
        one.detections[2],
        replace(one.detections[3], counts_to_open=True),  # on no face
    ]
    results = [
        replace(one, detections=tuple(counting)),
        replace(two, detections=(replace(two.detections[0], counts_to_open=True),)),
    ]
    door = scene_door(results, [W])
    assert (door.faces.shut_faces, door.faces.false_allows) == (3, 1)  # B, C, D; D let in
    assert (door.faces.open_faces, door.faces.kept_out) == (1, 0)  # A, let in by its duplicate
    assert door.no_face_allows == 1
    assert door.to_json()["no_face_allows"] == 1 and door.to_json()["false_allow_rate"] == pytest.approx(
        1 / 3
    )
    # Faces of 45 px and more: C (100) and D (50) keep the door shut, D is let in; the 50 px
    # detection on nothing counts; A (40) is out of the band.
    large = scene_door(results, [W], ">=45")
    assert (large.faces.shut_faces, large.faces.false_allows, large.faces.open_faces) == (2, 1, 0)
    assert large.no_face_allows == 1
    # A missed masked face is kept out; improper opening too makes C a face that should open.
    assert scene_door([replace(one, detections=())], [W]).faces.kept_out == 1
    lenient = scene_door(results, [W, IM])
    assert (lenient.faces.open_faces, lenient.faces.kept_out) == (2, 1)


def test_missed_faces_are_the_ones_recall_does_not_count():
    one, two = scenes()
    assert missed_faces(one) == [GroundTruth(Box(100, 100, 120, 120), WO)]  # B only; A's duplicate is no find
    assert missed_faces(two) == []  # found, though called the wrong label
    assert missed_faces(SceneResult(one.truth, ())) == list(one.truth)
    found = sum(len(r.truth) - len(missed_faces(r)) for r in scenes())
    assert found / sum(len(r.truth) for r in scenes()) == scene_metrics(scenes()).recall_all


def test_a_detection_takes_one_face_and_the_better_scored_one_takes_first():
    """Two faces side by side, one detection over both (IoU >= 0.5 with each, best with E) and one
    on E alone: the better-scored detection takes E whatever the listing order, and the wide one,
    whose best face is E, is a duplicate: VOC matching does not fall back to F."""
    e, f = GroundTruth(Box(0, 0, 40, 40), W), GroundTruth(Box(10, 0, 50, 40), WO)
    wide = det((4, 0, 44, 40), 0.6, 0.5, 0.4, 0.1)  # IoU 0.82 with E, 0.74 with F
    on_e = det((0, 0, 40, 40), 0.9, 0.8, 0.1, 0.1)
    for detections in ((wide, on_e), (on_e, wide)):
        result = SceneResult((e, f), detections)
        assert missed_faces(result) == [f]  # the wide one finds E taken: a duplicate, F stays missed
        assert scene_metrics([result]).recall_all == 0.5
    assert missed_faces(SceneResult((e, f), (wide,))) == [f]


def test_scene_metrics_in_size_bands_ignore_faces_outside_the_band():
    small = scene_metrics(scenes(), "<32")  # only B (20 px): every detection is about other faces
    assert small.truth == {W: 0, WO: 1, IM: 0} and small.detections == 0
    assert small.recall_all == 0.0 and small.map50 == 0.0
    assert average_precision(scenes(), WO, "<32") == (0.0, 1)
    mid = scene_metrics(scenes(), "32-96")  # A and D; d2 (duplicate of A) and d4 (50 px) are FPs
    assert mid.detections == 4 and mid.precision_all == pytest.approx(2 / 4)
    assert mid.recall == {W: 1.0, WO: 1.0, IM: 0.0}
    large = scene_metrics(scenes(), ">=96")
    assert large.detections == 1 and large.ap50[IM] == 1.0 and large.face_accuracy == 1.0
    assert set(large.to_json()) == {
        "ground_truth",
        "detections",
        "detection_recall",
        "detection_precision",
        "ap50",
        "map50",
        "matched_faces",
        "face_accuracy",
        "confusion",
    }


def test_size_bands_by_name_and_open_ended():
    assert in_band(31.9, "<32") and not in_band(32, "<32") and in_band(32, "32-96")
    assert in_band(96, ">=96") and in_band(32, ">=32") and not in_band(31.9, ">=32")
    assert in_band(60, ">=60") and not in_band(59.9, ">=60") and in_band(5, "all")
    for bad in ("big", ">=", ">=sixty"):
        with pytest.raises(ValueError, match="unknown size band"):
            in_band(40, bad)


def test_scene_metrics_in_an_open_ended_band_count_only_its_faces():
    # Faces of 40 and 80 px, both found: in ">=60" only the 80 px face and its detection count.
    small, large = Box(0, 0, 40, 40), Box(100, 0, 180, 80)
    result = SceneResult(
        (GroundTruth(small, W), GroundTruth(large, WO)),
        (Detection(small, 0.9, (1.0, 0.0, 0.0)), Detection(large, 0.8, (0.0, 1.0, 0.0))),
    )
    band = scene_metrics([result], ">=60")
    assert band.truth == {W: 0, WO: 1, IM: 0} and band.detections == 1 and band.recall[WO] == 1.0
