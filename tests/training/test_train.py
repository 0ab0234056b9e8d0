"""A one-epoch training run on real faces produces a model folder the gate can load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from maskgate.core import LABELS, Classification
from maskgate.modelcard import load_card
from maskgate.training.export import TFLITE_TOLERANCE, keras_predict, tflite_predict
from maskgate.training.split import MANIFEST_FILE, read_manifest
from maskgate.training.train import class_weights

pytestmark = pytest.mark.slow


def test_class_weights_favour_the_rare_class():
    labels = np.array([0] * 80 + [1] * 16 + [2] * 4)
    balanced = class_weights(labels, 1.0)
    assert balanced[2] / balanced[0] == pytest.approx(20)
    assert balanced[labels].mean() == pytest.approx(1.0)
    assert class_weights(labels, 0.0).tolist() == [1.0, 1.0, 1.0]
    assert class_weights(labels, 0.5)[2] / class_weights(labels, 0.5)[0] == pytest.approx(20**0.5)


def test_one_epoch_run_writes_a_complete_verified_model_folder(tiny_model: Path):
    names = {p.name for p in tiny_model.iterdir()}
    assert {"model.keras", "model.tflite", "card.json", MANIFEST_FILE} <= names
    assert {"training_curves.png", "confusion_matrix.png"} <= names
    card = load_card(tiny_model)  # verifies every file's sha256
    assert set(card.files) == names - {"card.json"}
    assert card.labels == LABELS and card.arch == "compact" and card.crop.size == 32
    assert card.parameters > 0 and card.data_hash and card.training["epochs_run"] == 1
    assert card.training["seconds"] > 0 and card.training["seed"] == 7 and card.training["flip_average"]
    source = card.data[0]
    assert source["layout"] == "faces" and source["faces"]["improper_mask"] == 24
    assert card.training["detector_for_photos"] is None  # no photos: no detector cut these crops
    test = card.metrics["test"]
    assert set(test) == {"all", "<32", "32-96", ">=96", ">=32"}
    assert set(test["all"]["per_class"]) == {label.value for label in LABELS}
    assert card.metrics["tflite_keras_max_diff"] < TFLITE_TOLERANCE
    rows = read_manifest(tiny_model / MANIFEST_FILE)
    assert len(rows) == 72 and {r.split.value for r in rows} == {"train", "val", "test"}
    assert json.loads((tiny_model / "card.json").read_text())["format"] == 1


def test_the_gates_classifier_loads_it_and_tflite_agrees_with_keras(tiny_model: Path):
    from maskgate.gate.classifier import MaskClassifier
    from maskgate.training.layers import load_keras

    classifier = MaskClassifier(tiny_model)
    crops = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    results = classifier.classify(list(crops))
    assert len(results) == 5 and all(isinstance(r, Classification) for r in results)
    model = load_keras(tiny_model / "model.keras")
    keras_probs = keras_predict(model, crops)
    lite_probs = tflite_predict(tiny_model / "model.tflite", crops)
    gate_probs = np.array([[r.probabilities[label] for label in LABELS] for r in results])
    assert np.max(np.abs(keras_probs - lite_probs)) < TFLITE_TOLERANCE
    assert np.max(np.abs(keras_probs - gate_probs)) < TFLITE_TOLERANCE


def test_a_fresh_network_started_from_a_model_folder_predicts_as_it_does(tiny_model: Path):
    from maskgate.training.archs import ARCHS, with_flip_average
    from maskgate.training.layers import load_keras
    from maskgate.training.train import start_weights

    fresh = ARCHS["compact"].build(load_card(tiny_model).crop)
    crops = np.random.default_rng(2).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    saved = keras_predict(load_keras(tiny_model / "model.keras"), crops)
    assert np.max(np.abs(keras_predict(with_flip_average(fresh), crops) - saved)) > 1e-3  # random init
    start_weights(fresh, tiny_model)
    assert np.max(np.abs(keras_predict(with_flip_average(fresh), crops) - saved)) < 1e-5


def test_a_negative_count_of_synthetic_masks_is_refused_before_any_work(tmp_path):
    from maskgate.training.train import TrainConfig, TrainError, train

    with pytest.raises(TrainError, match=r"synthetic masks must be 0 or more, not -1"):
        train([], tmp_path / "model", TrainConfig(synthetic_masks=-1), None)
    assert not (tmp_path / "model").exists()


def test_an_out_name_that_would_give_a_version_gates_refuse_is_refused_before_any_work(
    tmp_path, monkeypatch, capsys
):
    from maskgate.cli import main
    from maskgate.const import MODEL_VERSION_PATTERN
    from maskgate.training import train as train_module
    from maskgate.training.train import TrainError, check_out_folder

    def trained(*_args, **_kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(train_module, "load_pool", trained)
    (tmp_path / "faces").mkdir()
    out = tmp_path / ("m" * 49)  # and 16 characters of time: 65
    assert main(["train", "--data", str(tmp_path / "faces"), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"--out {out}: the folder's name would give a model version 'mmm" in error
    assert "(65 characters)" in error and MODEL_VERSION_PATTERN.pattern in error and not out.exists()
    with pytest.raises(TrainError, match="'two words-"):
        check_out_folder(tmp_path / "two words")
    check_out_folder(tmp_path / ("m" * 48))  # 64: fine


def test_starting_from_another_architecture_or_an_altered_folder_is_refused(tiny_model: Path, tmp_path):
    import shutil

    from maskgate.crop import CropSpec
    from maskgate.training.train import TrainConfig, TrainError, train

    with pytest.raises(TrainError, match=r"cannot start from .*compact with crop .*size=32"):
        train([], tmp_path / "a", TrainConfig(init_from=tiny_model), None)  # 96 px crop wanted
    altered = tmp_path / "altered"
    shutil.copytree(tiny_model, altered)
    (altered / "model.keras").write_bytes(b"not a model")
    with pytest.raises(TrainError, match=r"cannot start from .*altered"):
        train([], tmp_path / "b", TrainConfig(crop=CropSpec(size=32), init_from=altered), None)


def test_starting_from_a_model_that_trained_on_this_runs_held_out_images_is_refused(
    tiny_model: Path, tmp_path
):
    from maskgate.crop import CropSpec
    from maskgate.training.datasets import DataSpec
    from maskgate.training.split import SplitConfig
    from maskgate.training.train import TrainConfig, TrainError, train

    from .conftest import make_faces_folder

    source = make_faces_folder(tmp_path / "faces", per_class=24)  # the tiny model's images
    other_split = TrainConfig(
        crop=CropSpec(size=32),
        split=SplitConfig(val=0.25, test=0.25, seed=8),
        init_from=tiny_model,
        progress=False,
    )
    with pytest.raises(
        TrainError, match=r"it was trained on \d+ of this run's \d+ validation and test images"
    ):
        train([DataSpec.parse(str(source))], tmp_path / "model", other_split, None)
