"""The mask classifier refuses at load a model folder whose card does not describe its model."""

from __future__ import annotations

import json
import shutil

import pytest

from maskgate.core import LABELS
from maskgate.gate.classifier import MaskClassifier
from maskgate.modelcard import CARD_FILE, ModelFileError
from tests.conftest import DEFAULT_MODEL


def test_the_shipped_model_loads_with_one_probability_per_label():
    assert MaskClassifier(DEFAULT_MODEL).card.labels == LABELS


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["with_mask", "without_mask"], r"gives 3 probabilities per face, the card lists 2 labels"),
        (["with_mask", "mask", "without_mask"], r"3 labels \(with_mask, with_mask, without_mask\): not one"),
        (["with_mask", "beard", "without_mask"], r"invalid model card: unknown label 'beard'"),
    ],
    ids=["too-few", "twice", "unknown"],
)
def test_a_card_whose_labels_do_not_fit_the_model_is_refused_at_load(tmp_path, labels, message):
    folder = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, folder)
    card = json.loads((folder / CARD_FILE).read_text())
    card["labels"] = labels  # card.json is not in its own sha256 list: the folder still verifies
    (folder / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match=message) as refused:
        MaskClassifier(folder)
    assert str(folder) in str(refused.value)
