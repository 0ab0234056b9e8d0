"""What tuning MTCNN alone buys on held-out scenes: stage thresholds and minimum face size.

Runs `maskgate evaluate --mode scenes` (the gate's LiteRT detector and the shipped classifier)
on the test split of scenes/fmd once per setting, changing one knob at a time from the gate's
defaults, and prints detection recall per ground-truth class, precision and mAP@0.5 for faces of
at least 32 px and for all faces, side by side.

    .venv/bin/python bench/detector_sweep.py [--model models/default] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

from maskgate.config import Config, DetectorConfig
from maskgate.training import evaluate
from maskgate.training.datasets import DataSpec

BANDS = (">=32", "all")


def settings(base: DetectorConfig) -> list[tuple[str, DetectorConfig]]:
    p, r, o = base.thresholds
    runs = [("defaults", base)]
    runs += [(f"min face {size}", replace(base, min_face_size=size)) for size in (12, 20, 30)]
    runs += [(f"P-net {value}", replace(base, thresholds=(value, r, o))) for value in (0.4, 0.5)]
    runs += [(f"R-net {value}", replace(base, thresholds=(p, value, o))) for value in (0.5, 0.6)]
    runs += [(f"O-net {value}", replace(base, thresholds=(p, r, value))) for value in (0.6, 0.7)]
    runs.append(("all stages 0.5/0.5/0.6", replace(base, thresholds=(0.5, 0.5, 0.6))))
    runs.append(("min 20 + 0.5/0.5/0.6", replace(base, min_face_size=20, thresholds=(0.5, 0.5, 0.6))))
    return runs


def row(name: str, report: dict) -> str:
    cells = [f"{name:24}"]
    for band in BANDS:
        m = report["bands"][band]
        recall = m["detection_recall"]
        cells.append(
            f"{recall['with_mask']:6.3f}{recall['without_mask']:6.3f}{recall['improper_mask']:6.3f}"
            f"{m['detection_precision']['all']:7.3f}{m['map50']:7.3f} |"
        )
    return " ".join(cells) + f" {report['seconds']:5.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--data", default="scenes/fmd", help="VOC scenes (a path, or under paths.datasets)")
    parser.add_argument("--split", default="test", help="split of the model's manifest")
    parser.add_argument("--json", type=Path, help="write every report here")
    args = parser.parse_args()
    config = Config()
    spec = DataSpec.parse(args.data, config.paths.datasets)
    header = " ".join(f"{band + ': with  w/o  impr  prec   mAP50':>40} |" for band in BANDS)
    print(f"{'setting':24} {header}")
    reports = {}
    for name, detector in settings(config.detector):
        report = evaluate.evaluate_scenes(args.model, [spec], args.split, detector, progress=False)
        reports[name] = {"detector": asdict(detector), "bands": report["bands"]}
        print(row(name, report), flush=True)
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2) + "\n")


if __name__ == "__main__":
    main()
