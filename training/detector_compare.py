"""Detectors side by side (issue #9): held-out scenes end to end, faces >= 60 px, and the shared clips.

For each detector folder (stock = the shipped export) it runs ``evaluate --mode scenes`` with the
shipped classifier on the held-out split, with the extra band of faces of at least 60 px (the
issue's figure), and on every clip in ``videos/`` counts the frames with a face and with a face
classified as masked, and runs the agent to list what it tells the door. Scene precision does not
show a false face that the classifier calls masked; the door's answers do, and so do photos of
unmasked people (``--unmasked``): how many offer the policy a face it would count toward opening.

    .venv/bin/python -m maskgate.training.detector_compare --detector stock= \\
        --detector masked=models/detector-masked --with-stock both=models/detector-masked [--json OUT]

``--with-stock NAME=FOLDER@0.3`` sets the stock check of that pair (a sweep names several);
``--thresholds NAME=0.3,0.7,0.8`` the stage thresholds of NAME's nets (of a pair: the folder's).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import cv2
from tqdm import tqdm

from maskgate.config import FRACTION, Config, DetectorConfig, config_from_mapping
from maskgate.core import Decision, Event, Label
from maskgate.crop import BoxCalibration
from maskgate.gate.detector import box_calibration
from maskgate.training import cropset, evaluate
from maskgate.training.datasets import DataSpec, is_image

LARGE = ">=60"  # the "faces of 60 px and more"
BANDS = ("all", "<32", "32-96", ">=96", ">=32")
MASKED = (Label.WITH_MASK, Label.IMPROPER_MASK)
# Photos of unmasked people. The classifier trained on most of them: what they test is the
# detector offering it false faces.
UNMASKED = ("folders/chandrikadeb7/without_mask", "folders/comp6721/without_mask")


def clip_frames(
    detector, calibration: BoxCalibration, classifier, videos: Path, progress: bool = True
) -> dict[str, dict[str, int]]:
    """Per clip: frames, frames with a face, frames with a face the classifier calls masked."""
    out = {}
    for path in sorted(videos.glob("*.mp4")):
        capture = cv2.VideoCapture(str(path))
        frames = with_face = masked = 0
        bar = tqdm(desc=path.name, disable=not progress, leave=False)
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            frames += 1
            bar.update()
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            faces = detector.detect(rgb)
            with_face += bool(faces)
            classified = evaluate.classify_faces(rgb, faces, classifier, calibration)
            masked += any(c.label in MASKED for _, c in classified)
        capture.release()
        bar.close()
        out[path.name] = {"frames": frames, "with_face": with_face, "masked_face": masked}
    return out


def unmasked_photos(
    detector, calibration: BoxCalibration, classifier, policy, folders: Sequence[Path], progress: bool = True
) -> dict[str, object]:
    """On photos of people without a mask: photos, unreadable files, photos with a face, and the
    photos with a face whose classification the gate's policy would count toward opening the door
    (listed as FOLDER'S PARENT/FOLDER/NAME).

    Five clips show a detector's door decisions for two unmasked people; thousands of unmasked
    photos show how often it offers the classifier a face to call masked. Boxes as the agent
    uses them: the detector's own for the policy, through `calibration` for the crop.
    """
    from maskgate.training.cropset import read_rgb

    paths = [path for folder in folders for path in sorted(folder.iterdir()) if is_image(path)]
    photos = unreadable = with_face = 0
    opening: list[str] = []
    for path in tqdm(paths, desc="unmasked photos", disable=not progress, leave=False):
        rgb = read_rgb(path)
        if rgb is None:
            unreadable += 1
            continue
        photos += 1
        faces = detector.detect(rgb)
        with_face += bool(faces)
        classified = evaluate.classify_faces(rgb, faces, classifier, calibration)
        if any(policy.counts_to_open(face, c) for face, c in classified):
            opening.append(f"{path.parent.parent.name}/{path.parent.name}/{path.name}")
    return {
        "photos": photos,
        "unreadable": unreadable,
        "with_face": with_face,
        "opening": len(opening),
        "opening_photos": opening,
    }


class _Decisions:
    """A decision sink that only keeps the decisions (no store, no broker)."""

    def __init__(self):
        self.decisions: list[Decision] = []

    def submit(self, decision: Decision, snapshot_path: str | None) -> Event:
        self.decisions.append(decision)
        return Event.from_decision(decision, snapshot_path)


def clip_decisions(config: Config, detector, model: Path, videos: Path) -> dict[str, list[str]]:
    """Per clip: what the agent tells the door ("allow with_mask 0.97", ...), in order."""
    from maskgate.gate.build import make_agent
    from maskgate.gate.sources import Capture, open_reader

    out = {}
    with tempfile.TemporaryDirectory() as snapshots:
        config = replace(config, paths=replace(config.paths, snapshots=Path(snapshots)))
        for path in sorted(videos.glob("*.mp4")):
            sink = _Decisions()
            capture = Capture(open_reader(str(path))).start()
            try:
                make_agent(config, sink, detector, model=model).run(capture)
            finally:
                capture.stop()
            out[path.name] = [f"{d.action.value} {d.label.value} {d.confidence:.2f}" for d in sink.decisions]
    return out


def compare(
    detectors: dict[str, DetectorConfig],
    model: Path,
    data: str,
    split: str,
    videos: Path | None,
    root: Path,
    progress: bool = True,
    unmasked: Sequence[Path] = (),
) -> dict[str, dict]:
    from maskgate.gate.classifier import MaskClassifier
    from maskgate.gate.policy import DecisionPolicy

    spec = DataSpec.parse(data, root)
    classifier = MaskClassifier(model)
    policy = DecisionPolicy(Config().policy, "compare")
    results = {}
    for name, config in detectors.items():
        detector = cropset.make_detector(config)
        report = evaluate.evaluate_scenes(
            model, [spec], split, config, progress, detector=detector, extra_bands=[LARGE]
        )
        results[name] = {key: report[key] for key in ("detector", "seconds", "bands")}
        calibration = box_calibration(config)  # how the gate crops this detector's boxes
        if videos is not None and videos.is_dir():
            results[name]["clips"] = clip_frames(detector, calibration, classifier, videos, progress)
            gate = replace(Config(), detector=config)
            results[name]["door"] = clip_decisions(gate, detector, model, videos)
        if unmasked:
            results[name]["unmasked"] = unmasked_photos(
                detector, calibration, classifier, policy, unmasked, progress
            )
    return results


def table(results: dict[str, dict]) -> str:
    """Markdown: per band and detector, recall with / without / improper, precision, mAP@0.5."""
    lines = [
        "| band | detector | recall with | recall without | recall improper | precision | mAP@0.5 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for band in BANDS:
        for name, result in results.items():
            m = result["bands"][band]
            r = m["detection_recall"]
            lines.append(
                f"| {band} | {name} | {r['with_mask']:.3f} | {r['without_mask']:.3f} | "
                f"{r['improper_mask']:.3f} | {m['detection_precision']['all']:.3f} | {m['map50']:.3f} |"
            )
    for name, result in results.items():
        m = result["bands"][LARGE]
        r, faces = m["detection_recall"], m["ground_truth"]
        lines.append(
            f"| {LARGE} | {name} | {r['with_mask']:.3f} (n={faces['with_mask']}) | "
            f"{r['without_mask']:.3f} (n={faces['without_mask']}) | "
            f"{r['improper_mask']:.3f} (n={faces['improper_mask']}) | "
            f"{m['detection_precision']['all']:.3f} | {m['map50']:.3f} |"
        )
    if all("clips" in result for result in results.values()):
        names = list(results)
        lines += ["", "| clip | frames | " + " | ".join(f"{n}: face / masked" for n in names) + " |"]
        lines.append("| --- | --- |" + " --- |" * len(names))
        for clip, counts in results[names[0]]["clips"].items():
            cells = " | ".join(
                f"{results[n]['clips'][clip]['with_face']} / {results[n]['clips'][clip]['masked_face']}"
                for n in names
            )
            lines.append(f"| {clip} | {counts['frames']} | {cells} |")
    if all("unmasked" in result for result in results.values()):
        names = list(results)
        header = " | ".join(f"{n}: with a face / opening" for n in names)
        lines += ["", f"| unmasked photos | {header} |"]
        lines.append("| --- |" + " --- |" * len(names))
        counts = [results[n]["unmasked"] for n in names]
        cells = " | ".join(f"{c['with_face']} / {c['opening']}" for c in counts)
        lines.append(f"| {counts[0]['photos']} | {cells} |")
    if all("door" in result for result in results.values()):
        names = list(results)
        lines += ["", "| clip | " + " | ".join(f"{n}: door" for n in names) + " |"]
        lines.append("| --- |" + " --- |" * len(names))
        for clip in results[names[0]]["door"]:
            cells = " | ".join(", ".join(results[n]["door"][clip]) or "none" for n in names)
            lines.append(f"| {clip} | {cells} |")
    return "\n".join(lines)


def folder_and_check(value: str) -> tuple[str, float | None]:
    """``FOLDER@CHECK`` as the folder and the stock check; a value without a number after its last
    ``@`` is all folder (a folder's name may hold an ``@``)."""
    folder, at, check = value.rpartition("@")
    try:
        return (folder, float(check)) if at else (value, None)
    except ValueError:
        return value, None


def parse_thresholds(value: str, source: str = "--thresholds") -> tuple[float, float, float]:
    """``P,R,O`` as `detector.thresholds`, held to the config's own rules; ConfigError (a
    ValueError) names `source` and says what is wrong."""
    return config_from_mapping({"detector": {"thresholds": value}}, source).detector.thresholds


def parse_face_check(value: str, source: str = "--face-check") -> float:
    """A threshold as `detector.face_check`, held to the config's own rules (ConfigError, a ValueError)."""
    return config_from_mapping({"detector": {"face_check": value}}, source).detector.face_check


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--detector", action="append", default=[], help="NAME=FOLDER, repeatable; empty FOLDER = stock"
    )
    parser.add_argument(
        "--calibrated",
        action="append",
        default=[],
        help="NAME=FOLDER, repeatable: a detector with its box calibration (--detector: as configured)",
    )
    parser.add_argument(
        "--with-stock",
        action="append",
        default=[],
        help="NAME=FOLDER[@CHECK], repeatable: the folder's nets beside the stock nets "
        "(detector.with_stock), CHECK the detector.stock_check to use (default: as configured; "
        "a sweep names several)",
    )
    parser.add_argument(
        "--thresholds",
        action="append",
        default=[],
        help="NAME=P,R,O, repeatable: the stage thresholds of detector NAME's nets (detector.thresholds; "
        "beside the stock nets, the folder's nets')",
    )
    parser.add_argument(
        "--face-check",
        action="append",
        default=[],
        help="NAME=T, repeatable: detector NAME's detector.face_check (0 = the stock check alone)",
    )
    parser.add_argument("--model", type=Path, default=Path("models/default"), help="classifier folder")
    parser.add_argument("--data", default="scenes/fmd")
    parser.add_argument("--split", default="test")
    parser.add_argument("--videos", default="videos", help="clip folder (under paths.datasets); '' = none")
    parser.add_argument(
        "--unmasked",
        nargs="*",
        default=list(UNMASKED),
        help="folders of photos of people without a mask (under paths.datasets), where a face the "
        "policy would count toward opening the door is a fault; none: skip (about a minute per "
        "detector for the default 2,146 photos)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    config = Config()
    calibrated, paired_as_configured = config.detector.box_calibration, config.detector.with_stock
    named = [
        (name, replace(config.detector, model=folder, box_calibration=calibrate, with_stock=paired))
        for items, calibrate, paired in (
            (args.detector, calibrated, paired_as_configured),
            (args.calibrated, True, paired_as_configured),
        )
        for name, folder in (item.partition("=")[::2] for item in items)
    ]
    for item in args.with_stock:
        name, value = item.partition("=")[::2]
        folder, check = folder_and_check(value)
        if check is not None and not FRACTION.holds(check):
            parser.error(f"--with-stock {item}: the stock check must be {FRACTION.says}")
        paired = replace(config.detector, model=folder, box_calibration=calibrated, with_stock=True)
        named.append((name, paired if check is None else replace(paired, stock_check=check)))
    if not named or len({name for name, _ in named}) < len(named):
        parser.error(
            "give each detector a different NAME (--detector, --calibrated or --with-stock NAME=FOLDER)"
        )
    detectors = dict(named)
    # NAME=VALUE settings of one detector, each held to the config's own rules for its key.
    for option, items, key, parse, paired_only in (
        ("--thresholds", args.thresholds, "thresholds", parse_thresholds, False),
        ("--face-check", args.face_check, "face_check", parse_face_check, True),
    ):
        for item in items:
            name, value = item.partition("=")[::2]
            if name not in detectors or (paired_only and not detectors[name].with_stock):
                beside = " beside the stock nets" if paired_only else ""
                parser.error(f"{option} {item}: no detector{beside} is named {name!r}")
            try:
                detectors[name] = replace(detectors[name], **{key: parse(value, f"{option} {item}")})
            except ValueError as exc:
                parser.error(str(exc))
    videos = config.paths.datasets / args.videos if args.videos else None
    unmasked = [config.paths.datasets / folder for folder in args.unmasked]
    for folder in unmasked:
        if not folder.is_dir():
            print(f"--unmasked: {folder} is not a folder; left out", file=sys.stderr)
    unmasked = [folder for folder in unmasked if folder.is_dir()]
    results = compare(
        detectors, args.model, args.data, args.split, videos, config.paths.datasets, unmasked=unmasked
    )
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
