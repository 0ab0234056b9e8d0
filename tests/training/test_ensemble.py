"""Averaging trained classifiers into one model folder (issue #3): what the gate runs is still one
verified TFLite file, equal to the mean of its members."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from maskgate.crop import CropSpec
from maskgate.modelcard import load_card
from maskgate.training.datasets import DataSpec
from maskgate.training.ensemble import EnsembleError, check_members, ensemble
from maskgate.training.export import TFLITE_TOLERANCE, keras_predict, tflite_predict
from maskgate.training.layers import load_keras
from maskgate.training.split import SplitConfig
from maskgate.training.train import TrainConfig, train

from .conftest import make_faces_folder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def faces(tmp_path_factory, tiny_model) -> DataSpec:
    """The tiny model's own images (the same files, so the same manifest)."""
    return DataSpec.parse(str(make_faces_folder(tmp_path_factory.mktemp("ens") / "faces", per_class=24)))


def _tiny(faces: DataSpec, folder: Path, size: int, seed: int = 7) -> Path:
    config = TrainConfig(
        crop=CropSpec(size=size), epochs=1, batch_size=16, split=SplitConfig(0.25, 0.25, seed), progress=False
    )
    return train([faces], folder, config, None).folder


@pytest.fixture(scope="module")
def tiny40(faces, tmp_path_factory) -> Path:
    """A second member: same images and split as the tiny model, 40 px crops."""
    return _tiny(faces, tmp_path_factory.mktemp("m40") / "tiny40", 40)


def test_an_ensemble_of_one_model_twice_is_that_model(tiny_model: Path, faces, tmp_path):
    result = ensemble([tiny_model, tiny_model], tmp_path / "twice", None, [faces], progress=False)
    card = load_card(result.folder)  # every file verified
    single = load_card(tiny_model)
    assert card.arch == "ensemble" and card.crop == single.crop and card.parameters == 2 * single.parameters
    assert [m["version"] for m in card.training["members"]] == [single.version] * 2
    assert card.data_hash == single.data_hash and card.metrics["tflite_keras_max_diff"] < TFLITE_TOLERANCE
    assert card.metrics["test"][">=32"] == single.metrics["test"][">=32"]  # same predictions, same metrics
    crops = np.random.default_rng(3).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    expected = tflite_predict(tiny_model / "model.tflite", crops)
    assert np.max(np.abs(tflite_predict(result.folder / "model.tflite", crops) - expected)) < 1e-5


def test_members_of_other_sizes_see_the_crop_resized_and_are_averaged(tiny_model, tiny40, faces, tmp_path):
    import tensorflow as tf

    result = ensemble([tiny_model, tiny40], tmp_path / "mixed", None, [faces], progress=False)
    assert result.card.crop.size == 40  # the largest member's crop
    crops = np.random.default_rng(4).integers(0, 256, (6, 40, 40, 3), dtype=np.uint8)
    small = tf.image.resize(crops.astype(np.float32), [32, 32], method="bilinear").numpy()
    expected = (
        keras_predict(load_keras(tiny_model / "model.keras"), small)
        + keras_predict(load_keras(tiny40 / "model.keras"), crops)
    ) / 2
    got = tflite_predict(result.folder / "model.tflite", crops)
    assert np.max(np.abs(got - expected)) < TFLITE_TOLERANCE
    from maskgate.gate.classifier import MaskClassifier

    assert MaskClassifier(result.folder).crop.size == 40  # the gate runs it as any model


def test_members_that_cannot_be_averaged_honestly_are_refused(tiny_model, faces, tmp_path):
    with pytest.raises(EnsembleError, match="at least two"):
        check_members([tiny_model])
    other_split = _tiny(faces, tmp_path / "seed8", 32, seed=8)
    with pytest.raises(EnsembleError, match="another split"):
        check_members([tiny_model, other_split])
    grey = tmp_path / "grey"
    shutil.copytree(tiny_model, grey)
    card = json.loads((grey / "card.json").read_text())
    card["crop"]["color"] = "grey"
    (grey / "card.json").write_text(json.dumps(card))
    with pytest.raises(EnsembleError, match="crops with"):
        check_members([tiny_model, grey])
    altered = tmp_path / "altered"
    shutil.copytree(tiny_model, altered)
    (altered / "model.tflite").write_bytes(b"not a model")
    with pytest.raises(EnsembleError, match="sha256"):
        check_members([tiny_model, altered])
