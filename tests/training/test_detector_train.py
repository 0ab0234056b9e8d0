"""`maskgate train-detector` end to end on a few scenes: a detector folder the gate can select."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maskgate.cli import main
from maskgate.config import DetectorConfig
from maskgate.gate.mtcnn_litert import LiteRtMtcnnDetector
from maskgate.modelcard import sha256_file
from maskgate.training.detector_samples import Kind, Samples
from maskgate.training.detector_train import sample_weights
from tests.training.conftest import DATASETS

needs_fmd = pytest.mark.skipif(
    not (DATASETS / "scenes" / "fmd").is_dir(), reason=f"shared datasets not found at {DATASETS}"
)


@pytest.mark.slow
@needs_fmd
def test_train_detector_writes_a_folder_with_card_plots_and_agreeing_nets(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MASKGATE_PATHS__DATASETS", str(DATASETS))
    out = tmp_path / "detector"
    args = ["train-detector", "--out", str(out), "--max-scenes", "6", "--epochs", "1", "--quiet"]
    assert main(args) == 0
    card = json.loads((out / "card.json").read_text())
    for name in ("pnet.tflite", "rnet.tflite", "onet.tflite", "rnet.joblib", "training_curves.png"):
        assert card["files"][name] == sha256_file(out / name)
    training = card["training"]
    assert training["data"]["licence"] == "CC0 1.0"
    assert "test images are never used" in training["data"]["split"]
    assert set(training["history"]) == {"rnet", "onet"}
    assert set(card["metrics"]["test"]) == {"stock", "tuned"}
    # A calibration fitted on the tuned nets' boxes, or (one epoch on six scenes may find no face
    # near a drawn one) the nets kept without one and the reason said.
    if "box_calibration" in card:
        assert card["box_calibration"]["fitted"]["train_pairs"] > 0
    else:
        assert "no box calibration for" in capsys.readouterr().out
    assert card["metrics"]["detector"]["box_calibration"] is True  # the gate's default
    faces = LiteRtMtcnnDetector(DetectorConfig(model=str(out))).detect(np.zeros((120, 160, 3), np.uint8))
    assert faces == []


def test_sample_weights_by_class_and_face_size():
    labels = np.array(["with_mask", "improper_mask", "without_mask", "", "without_mask"], object)
    samples = Samples(
        np.zeros((5, 24, 24, 3), np.float32),
        np.array([Kind.POSITIVE, Kind.PART, Kind.POSITIVE, Kind.NEGATIVE, Kind.POSITIVE]),
        np.zeros((5, 4), np.float32),
        labels,
        sides=np.array([120.0, 50.0, 40.0, 0.0, 200.0]),
    )
    assert sample_weights(samples, 2.0).tolist() == [2.0, 2.0, 1.0, 1.0, 1.0]
    weights = sample_weights(samples, 2.0, bare_weight=1.5, large_face_weight=3.0, large_face_px=96)
    assert weights.tolist() == [6.0, 2.0, 1.5, 1.0, 4.5]
    no_sides = Samples(samples.patches, samples.kinds, samples.offsets, labels)  # sides unknown
    assert sample_weights(no_sides, 2.0, large_face_weight=3.0).tolist() == [2.0, 2.0, 1.0, 1.0, 1.0]
