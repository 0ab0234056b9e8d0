"""The shared domain types."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maskgate.core import (
    LABELS,
    Action,
    Box,
    Classification,
    Decision,
    DoorStatus,
    Event,
    Face,
    Label,
    UnknownLabelError,
)


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("with_mask", Label.WITH_MASK),
        ("Without_Mask", Label.WITHOUT_MASK),
        ("mask_weared_incorrect", Label.IMPROPER_MASK),
        ("with_incorrect_mask", Label.IMPROPER_MASK),
        ("incorrect_mask", Label.IMPROPER_MASK),
        ("WITH_IMPROPER_MASK", Label.IMPROPER_MASK),
        (" improper-mask ", Label.IMPROPER_MASK),
    ],
)
def test_label_aliases(name, label):
    assert Label.parse(name) is label


def test_unknown_label_names_itself():
    with pytest.raises(UnknownLabelError, match="'helmet'"):
        Label.parse("helmet")


def test_label_order_is_the_model_output_order():
    assert [label.value for label in LABELS] == ["with_mask", "without_mask", "improper_mask"]


def test_box_geometry():
    a = Box(0, 0, 10, 10)
    b = Box(5, 5, 15, 15)
    assert a.iou(b) == pytest.approx(25 / 175)
    assert a.iou(a) == 1.0
    assert a.iou(Box(20, 20, 30, 30)) == 0.0
    assert a.intersection(b) == 25.0
    # Over the smaller box: a box inside another overlaps it fully, whatever their IoU.
    assert a.overlap_of_smaller(Box(2, 2, 4, 4)) == 1.0 and a.iou(Box(2, 2, 4, 4)) == pytest.approx(0.04)
    assert a.overlap_of_smaller(Box(5, 0, 25, 10)) == pytest.approx(0.5)
    assert a.overlap_of_smaller(Box(3, 3, 3, 3)) == 0.0  # empty
    assert Box(-5, -5, 5, 50).clip(8, 8) == Box(0, 0, 5, 8)
    assert Box(10, 10, 5, 5).area == 0.0
    assert Box(0, 0, 4, 9).side == 9


def test_a_face_is_cropped_around_its_crop_box_when_it_has_one():
    located, cropped = Box(10, 10, 50, 50), Box(12, 8, 48, 46)
    assert Face(located, 0.9).box_to_crop == located
    assert Face(located, 0.9, crop_box=cropped).box_to_crop == cropped


def test_classification_from_numpy_vector():
    result = Classification.from_vector(np.array([0.1, 0.7, 0.2], dtype=np.float32))
    assert result.label is Label.WITHOUT_MASK
    assert result.confidence == pytest.approx(0.7)
    assert all(type(p) is float for p in result.probabilities.values())


def _decision(label: Label, action: Action) -> Decision:
    probabilities = Classification.from_vector(np.float32([0.8, 0.1, 0.1])).probabilities
    return Decision("gate-1", np.int64(7), action, label, np.float32(0.8), probabilities, "v1", 120.0)


def test_event_from_decision_is_json_safe():
    event = Event.from_decision(_decision(Label.WITH_MASK, Action.ALLOW))
    payload = json.loads(json.dumps(event.to_json()))
    assert payload["event_id"] == str(event.event_id)
    assert payload["track_id"] == 7 and payload["action"] == "allow"
    assert payload["probabilities"]["with_mask"] == pytest.approx(0.8)


def test_incidents():
    allowed = Event.from_decision(_decision(Label.WITH_MASK, Action.ALLOW))
    assert not allowed.is_incident
    assert Event.from_decision(_decision(Label.WITHOUT_MASK, Action.DENY)).is_incident
    assert not allowed.with_door(DoorStatus.OPENED, allowed.occurred_at).is_incident
    assert allowed.with_door(DoorStatus.EXPIRED, allowed.occurred_at).is_incident
    assert allowed.with_door(DoorStatus.NO_ACK, allowed.occurred_at).is_incident
