"""What the models page reads from model folders on disk: cards of any shape never break it."""

from __future__ import annotations

import pytest

from maskgate.core import LABELS
from maskgate.crop import CropSpec
from maskgate.dashboard.files import card_facts, flat_metrics
from maskgate.modelcard import ModelCard


def test_a_real_card_gives_its_architecture_crop_and_size():
    card = ModelCard(
        "v1", LABELS, CropSpec(size=96), "compact", "2026-11-29T12:00:00+00:00", parameters=177043
    )
    facts = dict(card_facts(card.to_json()))
    assert facts["architecture"] == "compact" and facts["crop"] == "96 px rgb, margin 0.2"
    assert facts["parameters"] == "177,043" and facts["labels"] == "with_mask, without_mask, improper_mask"
    assert facts["version"] == "v1"


@pytest.mark.parametrize(
    "card",
    [
        {},
        {"arch": 3, "crop": "big", "parameters": "many", "labels": "x", "data_hash": None},
        {"arch": "ensemble", "training": {"members": ["not a mapping", {"version": 7}]}},
        {"arch": "ensemble", "training": []},
        {"crop": {"size": 96}, "parameters": True},
    ],
)
def test_odd_cards_give_what_they_can_and_never_fail(card):
    facts = card_facts(card)
    assert all(isinstance(name, str) and isinstance(text, str) for name, text in facts)
    assert "crop" not in dict(facts) and "parameters" not in dict(facts)


def test_nested_metrics_flatten_to_dotted_names():
    rows = dict(flat_metrics({"macro_f1": 0.9, "recall": {"improper_mask": 0.8}, "bands": [1, 2]}))
    assert rows == {"macro_f1": 0.9, "recall.improper_mask": 0.8, "bands": "1, 2"}
