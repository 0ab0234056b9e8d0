"""Which MTCNN stage loses a face: recall after P-, R- and O-net, per class, on labelled VOC scenes.

Fine-tuning pays only at the stage that drops the faces, so this is measured before training
(issue #9). A face counts as kept by a stage when one of the stage's boxes overlaps it by IoU at
least `iou` (0.5 after R- and O-net; P-net's boxes are coarse, so it is also reported at 0.3:
R-net's regression can still fix a box that close).

    .venv/bin/python -m maskgate.training.detector_stages --split train [--model DIR] [--min-face-size 40]
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from maskgate.config import Config, DetectorConfig
from maskgate.training.detector_samples import Scene, iou_matrix, load_scenes

STAGES = ("pnet@0.3", "pnet", "rnet", "onet")
MIN_SIDE = 32  # the band the gate cares about


def stage_boxes(detector, image: np.ndarray) -> dict[str, np.ndarray]:
    """Each stage's output boxes (x1, y1, x2, y2) for one RGB image at the detector's working width."""
    from maskgate.gate.mtcnn_litert import normalise

    normalised = normalise(image)
    low, mid, high = detector.config.thresholds
    out = {}
    boxes = detector._proposals(normalised, low)
    out["pnet"] = boxes
    if len(boxes):
        boxes = detector._refine(normalised, boxes, mid)
    out["rnet"] = boxes
    if len(boxes):
        boxes = detector._output(normalised, boxes, high)
    out["onet"] = boxes
    return {name: b[:, :4] for name, b in out.items()}


def stage_recall(detector, scenes: Iterable[Scene], progress: bool = True) -> dict[str, dict[str, float]]:
    """Recall per stage and class (faces of at least MIN_SIDE px), plus each class's count."""
    found: Counter[tuple[str, str]] = Counter()
    total: Counter[str] = Counter()
    for scene in tqdm(list(scenes), desc="stages", disable=not progress, leave=False):
        keep = scene.sides >= MIN_SIDE
        if not keep.any():
            continue
        truth, labels = scene.boxes[keep], [scene.labels[i] for i in np.nonzero(keep)[0]]
        total.update(labels)
        for name, boxes in stage_boxes(detector, scene.image).items():
            best = iou_matrix(boxes, truth).max(axis=0) if len(boxes) else np.zeros(len(truth))
            for stage, threshold in ((name, 0.5), *([("pnet@0.3", 0.3)] if name == "pnet" else [])):
                found.update(
                    (stage, label) for label, ok in zip(labels, best >= threshold, strict=True) if ok
                )
    return {
        stage: {label: found[stage, label] / n for label, n in sorted(total.items())} for stage in STAGES
    } | {"faces": dict(total)}


def format_recall(recall: dict[str, dict[str, float]]) -> str:
    labels = sorted(recall["faces"])
    lines = [f"{'stage':10}" + "".join(f"{label:>15}" for label in labels)]
    lines.append(f"{'faces':10}" + "".join(f"{recall['faces'][label]:>15}" for label in labels))
    for stage in STAGES:
        lines.append(f"{stage:10}" + "".join(f"{recall[stage][label]:>15.3f}" for label in labels))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    from maskgate.gate.mtcnn_litert import LiteRtMtcnnDetector

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="scenes/fmd")
    parser.add_argument("--manifest", type=Path, default=Path("models/default/manifest.csv.gz"))
    parser.add_argument("--split", default="train", choices=("train", "val", "test"))
    parser.add_argument("--detector", type=Path, help="detector folder (default: the stock export)")
    parser.add_argument("--min-face-size", type=int, default=DetectorConfig.min_face_size)
    args = parser.parse_args(argv)
    config = replace(Config().detector, min_face_size=args.min_face_size)
    detector = LiteRtMtcnnDetector(config, args.detector) if args.detector else LiteRtMtcnnDetector(config)
    scenes = load_scenes(
        args.data, Config().paths.datasets, args.manifest, {args.split}, config.working_width
    )
    print(format_recall(stage_recall(detector, scenes)))


if __name__ == "__main__":
    main()
