"""`maskgate train-detector` end to end on a few scenes: a detector folder the gate can select."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maskgate.cli import main
from maskgate.config import DetectorConfig
from maskgate.gate.mtcnn_litert import LiteRtMtcnnDetector
from maskgate.modelcard import sha256_file
from tests.training.conftest import DATASETS

needs_fmd = pytest.mark.skipif(
    not (DATASETS / "scenes" / "fmd").is_dir(), reason=f"shared datasets not found at {DATASETS}"
)


@pytest.mark.slow
@needs_fmd
def test_train_detector_writes_a_folder_with_card_plots_and_agreeing_nets(tmp_path, monkeypatch):
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
    faces = LiteRtMtcnnDetector(DetectorConfig(model=str(out))).detect(np.zeros((120, 160, 3), np.uint8))
    assert faces == []
