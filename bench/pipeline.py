"""The gate pipeline against the stock way, side by side in one run, on 640x480 frames.

stock:    mtcnn's `detect_faces` (TensorFlow, its defaults) + Keras `model.predict` once per face
maskgate: MTCNN on LiteRT at the gate's settings + one batched LiteRT classifier call per frame

Frames hold one or four real faces (scikit-image's astronaut portrait, about 100 px, as a
person at a door). Prints frames/s for each and the ratio.

    .venv/bin/python bench/pipeline.py [--model models/default] [--seconds 10]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from skimage.data import astronaut

from maskgate.config import DetectorConfig
from maskgate.core import Box
from maskgate.crop import crop_face
from maskgate.gate.classifier import MaskClassifier
from maskgate.gate.mtcnn_litert import LiteRtMtcnnDetector


def scene(faces: int) -> np.ndarray:
    """A 640x480 frame with `faces` copies of a real head-and-shoulders portrait."""
    frame = np.full((480, 640, 3), 110, np.uint8)
    head = cv2.resize(astronaut()[10:330, 50:370], (220, 220), interpolation=cv2.INTER_AREA)
    spots = [(210, 130)] if faces == 1 else [(60, 20), (360, 20), (60, 250), (360, 250)][:faces]
    for x, y in spots:
        frame[y : y + 220, x : x + 220] = head
    return frame


def frames_per_second(
    step: Callable[[np.ndarray], int], frame: np.ndarray, seconds: float
) -> tuple[float, int]:
    found = step(frame)  # warm-up: graph tracing, interpreter allocation
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        found = step(frame)
        count += 1
    return count / (time.perf_counter() - start), found


def stock_pipeline(model_dir: Path) -> Callable[[np.ndarray], int]:
    import keras
    from mtcnn import MTCNN

    import maskgate.training.layers  # noqa: F401  (registers the model's custom layers with Keras)

    detector = MTCNN()
    model = keras.models.load_model(model_dir / "model.keras")
    spec = MaskClassifier(model_dir).crop

    def step(frame: np.ndarray) -> int:
        faces = detector.detect_faces(frame)
        for face in faces:
            x, y, w, h = face["box"]
            crop = crop_face(frame, Box(x, y, x + w, y + h), spec)
            model.predict(crop[np.newaxis].astype(np.float32), verbose=0)
        return len(faces)

    return step


def maskgate_pipeline(model_dir: Path) -> Callable[[np.ndarray], int]:
    detector = LiteRtMtcnnDetector(DetectorConfig())
    classifier = MaskClassifier(model_dir)

    def step(frame: np.ndarray) -> int:
        faces = detector.detect(frame)
        classifier.classify([crop_face(frame, face.box, classifier.crop) for face in faces])
        return len(faces)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--seconds", type=float, default=10.0, help="timing per pipeline and scene")
    args = parser.parse_args()

    pipelines = {"stock": stock_pipeline(args.model), "maskgate": maskgate_pipeline(args.model)}
    print(f"\n{'frame':12}{'pipeline':10}{'faces':>7}{'frames/s':>10}{'ms/frame':>10}")
    for faces in (1, 4):
        frame = scene(faces)
        rates = {}
        for name, step in pipelines.items():
            rate, found = frames_per_second(step, frame, args.seconds)
            rates[name] = rate
            print(f"{f'{faces} face(s)':12}{name:10}{found:>7}{rate:>10.1f}{1000 / rate:>10.1f}")
        print(f"{'':12}{'ratio':10}{'':>7}{rates['maskgate'] / rates['stock']:>9.1f}x")


if __name__ == "__main__":
    main()
