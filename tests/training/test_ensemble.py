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
from maskgate.training.train import TrainConfig, TrainError, train

from .conftest import make_faces_folder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def faces(tmp_path_factory, tiny_model) -> DataSpec:
    """The tiny model's own images (the same files, so the same manifest)."""
    return DataSpec.parse(str(make_faces_folder(tmp_path_factory.mktemp("ens") / "faces", per_class=24)))


def _tiny(faces: DataSpec, folder: Path, size: int, seed: int = 7, run_seed: int | None = None) -> Path:
    config = TrainConfig(
        crop=CropSpec(size=size),
        epochs=1,
        batch_size=16,
        split=SplitConfig(0.25, 0.25, seed),
        progress=False,
        run_seed=run_seed,
    )
    return train([faces], folder, config, None).folder


@pytest.fixture(scope="module")
def tiny40(faces, tmp_path_factory) -> Path:
    """A second member: same images and split as the tiny model, 40 px crops."""
    return _tiny(faces, tmp_path_factory.mktemp("m40") / "tiny40", 40)


@pytest.fixture(scope="module")
def tiny_b(faces, tmp_path_factory) -> Path:
    """A third member: the tiny model's split and size, another run seed (other weights)."""
    return _tiny(faces, tmp_path_factory.mktemp("b") / "tiny_b", 32, run_seed=9)


def _random_crops(seed: int, size: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (6, size, size, 3), dtype=np.uint8)


def test_another_run_seed_trains_other_weights_on_the_same_split(tiny_model: Path, tiny_b: Path):
    a, b = load_card(tiny_model), load_card(tiny_b)
    assert a.data_hash == b.data_hash and a.files["manifest.csv.gz"] == b.files["manifest.csv.gz"]
    assert (a.training["seed"], a.training["run_seed"]) == (7, 7)
    assert (b.training["seed"], b.training["run_seed"]) == (7, 9)
    crops = _random_crops(2, 32)
    diff = tflite_predict(tiny_model / "model.tflite", crops) - tflite_predict(tiny_b / "model.tflite", crops)
    assert np.max(np.abs(diff)) > 1e-3


def test_an_ensemble_is_a_verified_model_folder_that_averages_its_members(
    tiny_model, tiny_b, faces, tmp_path
):
    result = ensemble([tiny_model, tiny_b], tmp_path / "pair", None, [faces], progress=False)
    card = load_card(result.folder)  # every file verified
    a, b = load_card(tiny_model), load_card(tiny_b)
    assert card.arch == "ensemble" and card.crop == a.crop and card.parameters == a.parameters + b.parameters
    assert [m["version"] for m in card.training["members"]] == [a.version, b.version]
    assert card.data_hash == a.data_hash and card.metrics["tflite_keras_max_diff"] < TFLITE_TOLERANCE
    assert set(card.metrics) >= {"val", "test"} and card.metrics["test"][">=32"]["count"] > 0
    assert card.training["split"] == a.training["split"] and card.training["seed"] == 7
    assert card.training["detector_for_photos"] is None  # faces only: no detector cut these crops
    crops = _random_crops(3, 32)
    expected = (
        tflite_predict(tiny_model / "model.tflite", crops) + tflite_predict(tiny_b / "model.tflite", crops)
    ) / 2
    assert np.max(np.abs(tflite_predict(result.folder / "model.tflite", crops) - expected)) < 1e-5


def test_a_network_added_to_an_ensemble_weighs_as_much_as_each_of_its_members(
    tiny_model, tiny_b, tiny40, faces, tmp_path
):
    import tensorflow as tf

    pair = ensemble([tiny_model, tiny40], tmp_path / "pair", None, [faces], progress=False).folder
    grown = ensemble([pair, tiny_b], tmp_path / "grown", None, [faces], progress=False)
    cards = [load_card(folder) for folder in (tiny_model, tiny40, tiny_b)]
    members = grown.card.training["members"]
    assert [m["version"] for m in members] == [card.version for card in cards]
    assert [m["crop"]["size"] for m in members] == [32, 40, 32] and grown.card.crop.size == 40
    assert [m["run_seed"] for m in members] == [7, 7, 9] and {m["epochs_run"] for m in members} == {1}
    assert grown.card.parameters == sum(card.parameters for card in cards)
    crops = _random_crops(5, 40)
    small = tf.image.resize(crops.astype(np.float32), [32, 32], method="bilinear").numpy()
    a, b = (keras_predict(load_keras(folder / "model.keras"), small) for folder in (tiny_model, tiny_b))
    big = keras_predict(load_keras(tiny40 / "model.keras"), crops)
    got = tflite_predict(grown.folder / "model.tflite", crops)
    # One-epoch networks are nearly uniform, so the weights show only in small differences:
    # a third each, to float precision, and clearly not a half for the pair and a half for the third.
    assert np.max(np.abs(got - (a + big + b) / 3)) < 1e-5
    assert np.max(np.abs(got - ((a + big) / 4 + b / 2))) > 1e-4


def test_a_network_is_never_averaged_in_twice(tiny_model, tiny_b, faces, tmp_path):
    pair = ensemble([tiny_model, tiny_b], tmp_path / "pair", None, [faces], progress=False).folder
    with pytest.raises(EnsembleError, match="averaged in twice"):
        ensemble([pair, tiny_b], tmp_path / "again", None, [faces], progress=False)
    with pytest.raises(EnsembleError, match="averaged in twice"):
        ensemble([tiny_model, tiny_model], tmp_path / "twice", None, [faces], progress=False)
    renamed = tmp_path / "renamed"  # the same network under another version is still the same network
    shutil.copytree(tiny_b, renamed)
    card = json.loads((renamed / "card.json").read_text())
    card["version"] = "something-else"
    (renamed / "card.json").write_text(json.dumps(card))
    with pytest.raises(EnsembleError, match=r"something-else would be averaged in twice \(the network of"):
        ensemble([pair, renamed], tmp_path / "renamed-again", None, [faces], progress=False)


def test_members_of_other_sizes_see_the_crop_resized_and_are_averaged(tiny_model, tiny40, faces, tmp_path):
    import tensorflow as tf

    result = ensemble([tiny_model, tiny40], tmp_path / "mixed", None, [faces], progress=False)
    assert result.card.crop.size == 40  # the largest member's crop
    crops = _random_crops(4, 40)
    small = tf.image.resize(crops.astype(np.float32), [32, 32], method="bilinear").numpy()
    expected = (
        keras_predict(load_keras(tiny_model / "model.keras"), small)
        + keras_predict(load_keras(tiny40 / "model.keras"), crops)
    ) / 2
    got = tflite_predict(result.folder / "model.tflite", crops)
    assert np.max(np.abs(got - expected)) < TFLITE_TOLERANCE
    reloaded = load_keras(result.folder / "model.keras")  # so that an ensemble can be exported again
    assert np.max(np.abs(keras_predict(reloaded, crops) - got)) < TFLITE_TOLERANCE
    from maskgate.gate.classifier import MaskClassifier

    assert MaskClassifier(result.folder).crop.size == 40  # the gate runs it as any model


def test_members_that_cannot_be_averaged_honestly_are_refused(tiny_model, faces, tmp_path):
    with pytest.raises(EnsembleError, match="at least two"):
        check_members([tiny_model])

    def edited(name: str, change) -> Path:
        folder = tmp_path / name
        shutil.copytree(tiny_model, folder)
        card = json.loads((folder / "card.json").read_text())
        change(card)
        (folder / "card.json").write_text(json.dumps(card))
        return folder

    relabelled = edited("relabelled", lambda card: card["labels"].reverse())
    with pytest.raises(EnsembleError, match="has the labels"):
        check_members([tiny_model, relabelled])
    photos = edited("photos", lambda card: card["training"].update(detector_for_photos={"calibration": {}}))
    with pytest.raises(EnsembleError, match="other detectors"):
        check_members([tiny_model, photos])
    no_keras = tmp_path / "no-keras"
    shutil.copytree(tiny_model, no_keras)
    card = json.loads((no_keras / "card.json").read_text())
    del card["files"]["model.keras"]
    (no_keras / "model.keras").unlink()
    (no_keras / "card.json").write_text(json.dumps(card))
    with pytest.raises(EnsembleError, match=r"needs its model\.keras"):
        check_members([tiny_model, no_keras])
    other_split = _tiny(faces, tmp_path / "seed8", 32, seed=8)
    with pytest.raises(EnsembleError, match="another split"):
        check_members([tiny_model, other_split])
    grey = edited("grey", lambda card: card["crop"].update(color="grey"))
    with pytest.raises(EnsembleError, match="crops with"):
        check_members([tiny_model, grey])
    altered = tmp_path / "altered"
    shutil.copytree(tiny_model, altered)
    (altered / "model.tflite").write_bytes(b"not a model")
    with pytest.raises(EnsembleError, match="sha256"):
        check_members([tiny_model, altered])


def test_an_ensemble_is_never_written_over_one_of_its_members(tiny_model, faces, tmp_path):
    member = tmp_path / "member"
    shutil.copytree(tiny_model, member)
    before = sorted(p.name for p in member.iterdir())
    with pytest.raises(EnsembleError, match="is one of the members"):
        ensemble([tiny_model, member], member, None, [faces], progress=False)
    assert sorted(p.name for p in member.iterdir()) == before and load_card(member)  # untouched
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(TrainError, match="not a model folder"):
        ensemble([tiny_model, member], tmp_path / "notes", None, [faces], progress=False)


def test_an_out_name_gates_would_refuse_is_a_usage_error(tiny_model, tmp_path, capsys):
    from maskgate.cli import main
    from maskgate.const import EXIT_USAGE

    out = tmp_path / ("x" * 60)  # the version (the name and 16 more characters) would exceed 64
    assert main(["ensemble", "--models", str(tiny_model), str(tiny_model), "--out", str(out)]) == EXIT_USAGE
    assert "would give a model version" in capsys.readouterr().err and not out.exists()
