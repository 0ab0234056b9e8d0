"""Synthetic masks drawn on real bare training faces (issue #3: more improperly masked examples)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from maskgate.config import DetectorConfig
from maskgate.core import LABELS, Label
from maskgate.crop import CropSpec
from maskgate.gate.mtcnn_litert import LiteRtMtcnnDetector
from maskgate.modelcard import load_card
from maskgate.training import cropset
from maskgate.training.cropset import CropSet
from maskgate.training.datasets import DataSpec
from maskgate.training.synthetic_crops import (
    MIN_SIDE,
    crop_landmarks,
    draw_on_crop,
    synthetic_masked_crops,
)
from tests.training.conftest import make_faces_folder

WITH, WITHOUT, IMPROPER = (LABELS.index(label) for label in Label)


@pytest.fixture(scope="module")
def detector() -> LiteRtMtcnnDetector:
    return LiteRtMtcnnDetector(DetectorConfig(min_face_size=20))


@pytest.fixture(scope="module")
def real_faces(tmp_path_factory: pytest.TempPathFactory) -> CropSet:
    """96 px crops of real photos: 12 per class (chandrikadeb7 faces, comp6721 improper photos);
    skipped, saying why, where the shared datasets are absent (make_faces_folder)."""
    base = tmp_path_factory.mktemp("synthetic")
    source = make_faces_folder(base / "faces", per_class=12)
    crops, _, _ = cropset.load_source(DataSpec.parse(str(source)), CropSpec(size=96), None, progress=False)
    return crops


def test_masks_are_drawn_on_bare_faces_only_and_labelled_by_placement(real_faces, detector):
    drawn, report = synthetic_masked_crops(real_faces, 10, detector.detect, np.random.default_rng(3))
    bare = (real_faces.labels == WITHOUT) & (real_faces.sides >= MIN_SIDE)
    assert report.candidates == int(bare.sum()) == 12
    assert 0 < len(drawn) <= 10 and sum(report.drawn.values()) == len(drawn)
    assert report.no_landmarks + report.off_crop + len(drawn) <= report.candidates
    # proper -> with_mask, below the nose / on the chin -> improper_mask; never bare
    assert int((drawn.labels == WITH).sum()) == report.drawn["proper"]
    assert int((drawn.labels == IMPROPER).sum()) == report.drawn["below_nose"] + report.drawn["chin"]
    # each new crop stays in its face's split group: same source, image and size as a bare original
    originals = {img: i for i, img in enumerate(real_faces.images) if bare[i]}
    for k, image in enumerate(drawn.images):
        i = originals[image]
        assert drawn.sources[k] == real_faces.sources[i] and drawn.sides[k] == real_faces.sides[i]
        changed = np.any(drawn.crops[k] != real_faces.crops[i], axis=2)
        ys, _ = np.nonzero(changed)
        assert changed.mean() > 0.08  # a mask, not a speck
        assert np.median(ys) > 0.5 * real_faces.crops.shape[1]  # on the lower face
    assert drawn.crops.dtype == np.uint8 and drawn.crops.shape[1:] == real_faces.crops.shape[1:]


def test_the_same_seed_draws_the_same_masks(real_faces, detector):
    first, _ = synthetic_masked_crops(real_faces, 4, detector.detect, np.random.default_rng(5))
    again, _ = synthetic_masked_crops(real_faces, 4, detector.detect, np.random.default_rng(5))
    assert np.array_equal(first.crops, again.crops) and np.array_equal(first.labels, again.labels)


def test_a_crop_without_a_face_gets_no_mask(detector):
    flat = np.full((96, 96, 3), 128, np.uint8)
    assert crop_landmarks(flat, detector.detect) is None
    faceless = CropSet(
        flat[None],
        np.asarray([WITHOUT]),
        np.asarray([120.0], np.float32),
        np.asarray(["s"]),
        np.asarray(["a.jpg"]),
    )
    drawn, report = synthetic_masked_crops(faceless, 5, detector.detect, np.random.default_rng(0))
    assert len(drawn) == 0 and report.no_landmarks == 1 and drawn.crops.shape[1:] == (96, 96, 3)


def test_grey_crops_stay_grey(real_faces, detector):
    bare = [real_faces.crops[i] for i in np.flatnonzero(real_faces.labels == WITHOUT)]
    greys = [crop.mean(axis=2, keepdims=True).astype(np.uint8) for crop in bare]
    found = [(grey, crop_landmarks(grey, detector.detect)) for grey in greys]
    found = [(grey, landmarks) for grey, landmarks in found if landmarks is not None]
    assert len(found) >= len(greys) // 2  # grey faces are found as well as colour ones
    grey, landmarks = found[0]
    drawn = draw_on_crop(grey, landmarks, "proper", (35, 35, 40))
    assert drawn.shape == grey.shape and np.any(drawn != grey)


@pytest.mark.slow
def test_training_starts_from_a_model_folder_and_records_the_synthetic_masks(tiny_model: Path, tmp_path):
    from maskgate.training.split import SplitConfig
    from maskgate.training.train import TrainConfig, train

    source = make_faces_folder(tmp_path / "faces", per_class=24)
    config = TrainConfig(
        crop=CropSpec(size=32),
        epochs=1,
        batch_size=16,
        split=SplitConfig(val=0.25, test=0.25, seed=7),
        progress=False,
        synthetic_masks=6,
        init_from=tiny_model,
    )
    result = train([DataSpec.parse(str(source))], tmp_path / "model", config, None)
    training = result.card.training
    assert training["started_from"] == load_card(tiny_model).version
    synthetic = training["synthetic_masks"]
    assert synthetic["candidates"] > 0
    assert (
        sum(synthetic["drawn"].values()) + synthetic["no_landmarks"] + synthetic["off_crop"]
        <= synthetic["candidates"]
    )
    used = sum(training["crops"]["train_used"].values())
    assert used == sum(training["crops"]["train"].values()) + sum(synthetic["drawn"].values())
