"""`maskgate export-detector`: the mtcnn package's networks become the folder the gate runs on LiteRT."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from skimage.data import astronaut

from maskgate.cli import main
from maskgate.config import DetectorConfig
from maskgate.gate.detector import DEFAULT_DETECTOR_DIR
from maskgate.gate.mtcnn_litert import LiteRtMtcnnDetector
from maskgate.modelcard import sha256_file


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "detector"
    assert main(["export-detector", "--out", str(out)]) == 0
    return out


def door_frame() -> np.ndarray:
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[90:390, 170:470] = cv2.resize(astronaut(), (300, 300), interpolation=cv2.INTER_AREA)
    return frame


@pytest.mark.slow
def test_the_export_writes_three_networks_and_a_card_that_names_them(exported):
    card = json.loads((exported / "card.json").read_text())
    assert card["kind"] == "mtcnn-litert"
    assert "MIT" in card["licence"] and card["source"].startswith("mtcnn ")
    assert card["output_channels"] == {"pnet": [4, 2], "rnet": [4, 2], "onet": [4, 10, 2]}
    for name, digest in card["files"].items():
        assert sha256_file(exported / name) == digest


@pytest.mark.slow
def test_the_exported_detector_finds_what_the_shipped_one_finds(exported):
    config = DetectorConfig(min_face_size=20)
    frame = door_frame()
    shipped = LiteRtMtcnnDetector(config, DEFAULT_DETECTOR_DIR).detect(frame)
    fresh = LiteRtMtcnnDetector(config, exported).detect(frame)
    assert len(shipped) == len(fresh) == 1
    assert fresh[0].box.iou(shipped[0].box) > 0.999
    assert fresh[0].score == pytest.approx(shipped[0].score, abs=1e-4)
