"""The training subcommands: `train`, `ensemble`, `evaluate`, the detector's and `retrain`.

Registration imports nothing heavy (``maskgate --help`` stays fast); the handlers import
TensorFlow and the training modules when they run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from maskgate.argtypes import fraction, non_negative_float, non_negative_int, positive_float, positive_int
from maskgate.config import Config
from maskgate.const import EXIT_OK, EXIT_RUNTIME

if TYPE_CHECKING:
    from maskgate.crop import CropSpec
    from maskgate.training.datasets import DataSpec
    from maskgate.training.label_review import LabelReview
    from maskgate.training.split import SplitConfig

DEFAULT_CACHE = Path("var/cache/crops")
ARCH_CHOICES = ("compact", "seed")
DETECTOR_CHOICES = ("mtcnn", "mtcnn-litert")
DEFAULT_DETECTOR_OUT = Path("models/detector-mtcnn")
CACHE_HELP = f"crop cache folder (default {DEFAULT_CACHE})"


def register(commands: argparse._SubParsersAction) -> None:
    _register_train(commands)
    _register_ensemble(commands)
    _register_evaluate(commands)
    _register_export_detector(commands)
    _register_train_detector(commands)
    _register_train_face_check(commands)
    _register_calibrate_detector(commands)
    commands.add_parser(
        "retrain",
        help="run the retraining job once: pool, train, compare with the active model, promote",
        description="Run the retraining job once (docs/retraining.md), under the same lock as the "
        "dashboard's scheduler: the [retrain] config section says what to train on and how to compare.",
    ).set_defaults(handler=_retrain)


def _data_help() -> str:
    return (
        "data source as PATH[:LAYOUT], repeatable; LAYOUT is faces (one folder per class of face photos), "
        "voc (images/ + annotations/) or photos (one folder per class of photos of whole people: the "
        "detector finds the largest face). Default: voc if PATH has annotations/, else faces. A relative "
        "PATH is also looked up under paths.datasets (MASKGATE_PATHS__DATASETS)"
    )


def _register_train(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train",
        help="train a mask classifier into a model folder",
        description="Train a mask classifier into a model folder (model.keras, model.tflite, card, plots).",
    )
    p.add_argument("--data", metavar="SPEC", nargs="+", required=True, action="extend", help=_data_help())
    p.add_argument("--arch", choices=ARCH_CHOICES, default="compact", help="network (default: compact)")
    p.add_argument("--out", type=Path, required=True, help="model folder to write, e.g. models/NAME")
    p.add_argument(
        "--epochs", type=positive_int, default=40, help="maximum epochs (early stopping ends sooner)"
    )
    p.add_argument(
        "--patience", type=non_negative_int, default=10, help="epochs without a better validation loss"
    )
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--size", type=positive_int, help="crop side in pixels (default: the architecture's)")
    p.add_argument("--margin", type=fraction, help="crop margin per side, fraction of the box (default 0.2)")
    p.add_argument("--lr", type=positive_float, help="learning rate (default: the architecture's)")
    p.add_argument(
        "--class-weight-power", type=non_negative_float, default=0.5, help="0 none, 1 balanced (default 0.5)"
    )
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
    p.add_argument(
        "--val", type=fraction, default=0.1, help="validation share of the source images (above 0)"
    )
    p.add_argument("--test", type=fraction, default=0.2, help="held-out test share of the source images")
    p.add_argument(
        "--seed", type=non_negative_int, default=1337, help="split seed (and the run's, unless --run-seed)"
    )
    p.add_argument(
        "--run-seed",
        type=non_negative_int,
        help="seed of the initial weights, shuffling, augmentation and synthetic masks (default: --seed); "
        "ensemble members of one split differ by it",
    )
    p.add_argument("--max-train", type=positive_int, help="use at most this many training crops (slow archs)")
    p.add_argument(
        "--synthetic-masks",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="draw masks (proper, below the nose, on the chin; random colours) on up to N bare faces "
        "of the training split and add them to it (default 0)",
    )
    p.add_argument("--label-review", type=Path, metavar="CSV", help=REVIEW_HELP)
    p.add_argument(
        "--init",
        type=Path,
        metavar="DIR",
        help="start from the weights of this model folder (same --arch and crop) instead of random ones",
    )
    p.add_argument("--threads", type=positive_int, default=2, help="CPU threads for TensorFlow")
    p.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help=f"crop cache folder (default {DEFAULT_CACHE})"
    )
    p.add_argument(
        "--allow-non-commercial",
        action="store_true",
        help="accept sources licensed for non-commercial use only (never for the shipped default model)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_train)


def _register_evaluate(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "evaluate",
        help="evaluate a model on crops or on whole scenes",
        description="Evaluate a model folder (its model.tflite, as the gate runs it) on labelled data.",
    )
    p.add_argument("--model", type=Path, required=True, help="model folder")
    p.add_argument("--data", metavar="SPEC", nargs="+", required=True, action="extend", help=_data_help())
    p.add_argument(
        "--mode",
        choices=("crops", "scenes"),
        default="crops",
        help="crops: classify labelled faces; scenes: detector + classifier end to end on VOC scenes",
    )
    p.add_argument(
        "--split",
        choices=("all", "train", "val", "test"),
        default="all",
        help="only images of this split in the model's manifest (default: all images)",
    )
    p.add_argument("--json", type=Path, help="write the metrics here (schema: docs/training.md)")
    p.add_argument("--label-review", type=Path, metavar="CSV", help=REVIEW_HELP)
    p.add_argument(
        "--errors",
        type=Path,
        metavar="DIR",
        help="write faces to review here: crops: the misclassified ones, most confident first "
        "(errors.csv: rank, source, image, face side, label, prediction, probabilities; errors.png: "
        "the crops); scenes: the annotated faces no detection takes at IoU >= 0.5, largest first "
        "(missed.csv: rank, source, image, face side, label, box clipped to the image; missed.png)",
    )
    p.add_argument(
        "--min-face-size", type=positive_int, help="scenes: detector minimum face (default: config)"
    )
    p.add_argument(
        "--detector-model",
        type=Path,
        help="detector folder, e.g. from train-detector (default: config detector.model, empty = the "
        "stock weights); crops: the detector of `photos`",
    )
    p.add_argument(
        "--detector",
        choices=DETECTOR_CHOICES,
        help="detector implementation (default: config detector.kind); mtcnn is the TensorFlow "
        "reference, mtcnn-litert the gate's; crops: the detector of `photos`",
    )
    p.add_argument(
        "--no-box-calibration",
        action="store_true",
        help="use the detector's boxes as they are, for scenes and photos (default: config "
        "detector.box_calibration)",
    )
    p.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help=f"crop cache folder (default {DEFAULT_CACHE})"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_evaluate)


REVIEW_HELP = (
    "a CSV of source labels found wrong (source,image,box,label,reason; label or 'exclude'): applied to "
    "what is trained on or measured, after the split (docs/training.md; the project's: "
    "training/label_review.csv). Default: the sources' labels as they are"
)


def _label_review(args: argparse.Namespace, specs: Sequence[DataSpec] | None) -> LabelReview | None:
    """The `--label-review` file, checked; a note on stderr for rows of sources not in `specs`
    (None: the members' own sources), which change nothing here."""
    from maskgate.cli import UsageError
    from maskgate.training.label_review import LabelReview, LabelReviewError

    if args.label_review is None:
        return None
    try:
        review = LabelReview.load(args.label_review)
    except LabelReviewError as exc:
        raise UsageError(str(exc)) from None
    unused = sorted({face.source for face in review.faces} - {spec.name for spec in specs or ()})
    if specs is not None and unused:
        print(
            f"{args.label_review}: rows for sources not in --data, not applied: {', '.join(unused)}",
            file=sys.stderr,
        )
    return review


def _specs(args: argparse.Namespace, config: Config, allow_non_commercial: bool = True):
    from maskgate.cli import UsageError
    from maskgate.training.datasets import DataSpec, DataSpecError, is_non_commercial, licence_of

    root = config.paths.datasets
    try:
        specs = [DataSpec.parse(text, root) for text in args.data]
    except DataSpecError as exc:
        raise UsageError(str(exc)) from None
    if not allow_non_commercial:
        for spec in specs:
            if is_non_commercial(spec, licence_of(spec, root)):
                raise UsageError(_non_commercial_refusal(spec.name))
    return specs


def _non_commercial_refusal(name: str) -> str:
    return (
        f"{name} is licensed for non-commercial use only; pass --allow-non-commercial to train on it "
        "anyway (such a model must not ship)"
    )


MAX_SEED = 2**32 - 1  # NumPy's and Keras's seeds (keras.utils.set_random_seed) go no higher


def _check_seed(option: str, seed: int, count: int = 1) -> None:
    """Refuses a seed NumPy cannot take: `count` seeds from `seed` on are used (seed + i)."""
    from maskgate.cli import UsageError

    if seed + count - 1 > MAX_SEED:
        more = f" (and the {count - 1} after it)" if count > 1 else ""
        raise UsageError(f"{option} {seed}: a seed{more} must be at most {MAX_SEED}")


def _train_crop_and_split(args: argparse.Namespace) -> tuple[CropSpec, SplitConfig]:
    """The crop spec and split `train` asks for, checked before any work: a crop spec a card cannot
    hold would give a model folder that no one can load, written over the one at --out."""
    from dataclasses import replace

    from maskgate.cli import UsageError
    from maskgate.training.archs import ARCHS
    from maskgate.training.split import SplitConfig

    crop = ARCHS[args.arch].crop
    if args.size is not None:
        crop = replace(crop, size=args.size)
    if args.margin is not None:
        crop = replace(crop, margin=args.margin)
    if problem := crop.problem():  # --margin is a fraction already: the size is what can be wrong
        raise UsageError(f"--size {args.size}: {problem}")
    if args.val == 0:
        raise UsageError("--val 0: training needs validation images (they choose the epoch kept)")
    try:
        split = SplitConfig(val=args.val, test=args.test, seed=args.seed)
    except ValueError:
        raise UsageError(
            f"--val {args.val:g} --test {args.test:g}: the validation and test shares must leave training "
            "images (together below 1)"
        ) from None
    _check_seed("--seed", args.seed)
    if args.run_seed is not None:
        _check_seed("--run-seed", args.run_seed)
    return crop, split


def _train(args: argparse.Namespace, config: Config) -> int:
    from maskgate.cli import UsageError
    from maskgate.modelcard import ModelFileError
    from maskgate.training.augment import AugmentConfig
    from maskgate.training.train import TrainConfig, TrainError, summary, train

    crop, split = _train_crop_and_split(args)
    specs = _specs(args, config, args.allow_non_commercial)
    train_config = TrainConfig(
        arch=args.arch,
        crop=crop,
        epochs=args.epochs,
        batch_size=args.batch_size,
        patience=args.patience,
        learning_rate=args.lr,
        class_weight_power=args.class_weight_power,
        split=split,
        augment=None if args.no_augment else AugmentConfig(),
        max_train=args.max_train,
        threads=args.threads,
        progress=not args.quiet,
        detector=config.detector,
        synthetic_masks=args.synthetic_masks,
        label_review=_label_review(args, specs),
        init_from=args.init,
        run_seed=args.run_seed,
    )
    try:
        result = train(specs, args.out, train_config, args.cache, config.paths.datasets)
    except TrainError as exc:
        raise UsageError(str(exc)) from None
    except ModelFileError as exc:  # the configured detector (it crops `photos`) is unusable
        print(f"maskgate train: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    return _wrote(result, summary(result.card))


def _register_ensemble(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "ensemble",
        help="average trained classifiers into one model folder",
        description="Average the probabilities of model folders trained on the same split into one model "
        "folder (one model.tflite for the gate; held-out metrics on the members' val and test splits).",
    )
    p.add_argument(
        "--models",
        type=Path,
        nargs="+",
        required=True,
        metavar="DIR",
        help="member model folders of one split; an ensemble among them adds its own networks",
    )
    p.add_argument("--out", type=Path, required=True, help="model folder to write, e.g. models/NAME")
    p.add_argument(
        "--data",
        nargs="+",
        metavar="SPEC",
        help="where the members' held-out images are (default: the sources their cards name, under "
        "paths.datasets)",
    )
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=CACHE_HELP)
    p.add_argument("--label-review", type=Path, metavar="CSV", help=REVIEW_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_ensemble)


def _ensemble(args: argparse.Namespace, config: Config) -> int:
    from maskgate.cli import UsageError
    from maskgate.modelcard import ModelFileError
    from maskgate.training.datasets import DataSpecError
    from maskgate.training.ensemble import EnsembleError, ensemble, summary
    from maskgate.training.evaluate import EvaluationError
    from maskgate.training.train import TrainError

    try:
        specs = _specs(args, config) if args.data else None
        result = ensemble(
            args.models,
            args.out,
            args.cache,
            specs,
            config.paths.datasets,
            config.detector,
            not args.quiet,
            _label_review(args, specs),
            config.policy,
        )
    except (EnsembleError, DataSpecError, EvaluationError, TrainError) as exc:  # TrainError: --out refused
        raise UsageError(str(exc)) from None
    except ModelFileError as exc:  # the configured detector (it crops `photos`) is unusable
        print(f"maskgate ensemble: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    return _wrote(result, summary(result.card))


def _wrote(result, summary: str) -> int:
    """Say what a training or ensemble run wrote (`result` is a train.TrainResult)."""
    print(summary)
    print(f"wrote {result.folder} in {result.seconds:.0f} s (sha256 {result.card.sha256[:12]})")
    return EXIT_OK


def _retrain(args: argparse.Namespace, config: Config) -> int:
    from maskgate.training.retrain import command

    return command(args, config)


def _evaluate(args: argparse.Namespace, config: Config) -> int:
    from dataclasses import replace

    from maskgate.cli import UsageError
    from maskgate.config import rule_problems
    from maskgate.modelcard import ModelFileError
    from maskgate.training import evaluate

    specs = _specs(args, config)
    review = _label_review(args, specs)
    try:
        detector = config.detector
        if args.detector:
            detector = replace(detector, kind=args.detector)
        if args.detector_model:
            detector = replace(detector, model=str(args.detector_model))
        if args.no_box_calibration:
            detector = replace(detector, box_calibration=False)
        if args.mode == "crops":  # the detector crops `photos` (at its own minimum face)
            progress = not args.quiet
            report = evaluate.evaluate_crops(
                args.model,
                specs,
                args.split,
                args.cache,
                progress,
                detector,
                args.errors,
                config.policy,
                review,
            )
        else:
            if args.min_face_size:
                detector = replace(detector, min_face_size=args.min_face_size)
                problems = rule_problems(detector, "detector.")
                if problems:
                    raise UsageError(f"--min-face-size: {'; '.join(problems)}")
            report = evaluate.evaluate_scenes(
                args.model,
                specs,
                args.split,
                detector,
                not args.quiet,
                errors=args.errors,
                review=review,
                policy=config.policy,
            )
    except ModelFileError as exc:
        print(f"maskgate evaluate: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except evaluate.EvaluationError as exc:
        raise UsageError(str(exc)) from None
    print(evaluate.format_report(report))
    if args.errors:
        print(f"wrote the faces to review to {args.errors}")
    if args.json:
        evaluate.write_json(args.json, report)
        print(f"wrote {args.json}")
    return EXIT_OK


def _register_export_detector(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "export-detector",
        help="export MTCNN's networks (mtcnn package weights) to TFLite for the gate",
        description="Export the mtcnn package's P-, R- and O-nets to TFLite with a card (provenance, "
        "licence, sha256 of each file): the folder LiteRtMtcnnDetector runs without TensorFlow. The "
        "gate ships the result in maskgate/gate/assets/mtcnn-litert.",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_DETECTOR_OUT,
        help=f"detector folder to write (default {DEFAULT_DETECTOR_OUT})",
    )
    p.set_defaults(handler=_export_detector)


def _export_detector(args: argparse.Namespace, config: Config) -> int:
    from maskgate.training.detector_export import export_detector

    card = export_detector(args.out)
    for name, digest in card["files"].items():
        print(f"  {name}  sha256 {digest[:12]}  {(args.out / name).stat().st_size:,} bytes")
    print(f"wrote {args.out} ({card['source']})")
    return EXIT_OK


DEFAULT_TRAINED_DETECTOR_OUT = Path("models/detector-masked")
SHIPPED_FACE_CHECK_PHOTOS = ("folders/chandrikadeb7/with_mask",)  # MIT; never the unmasked photos


def _add_scene_split_arguments(p: argparse.ArgumentParser, manifest_use: str) -> None:
    """--data (VOC scenes) and --manifest (the split that keeps the held-out scenes out)."""
    p.add_argument("--data", default="scenes/fmd", help="VOC scenes (default scenes/fmd)")
    p.add_argument(
        "--manifest",
        type=Path,
        default=Path("models/default/manifest.csv.gz"),
        help=f"split manifest: {manifest_use}",
    )


def _register_train_detector(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train-detector",
        help="fine-tune MTCNN's R- and O-nets so that they find masked faces",
        description="Fine-tune the mtcnn package's R- and O-nets on VOC scenes (train split of the "
        "manifest; its test images are never used) plus synthetic masks, and write a detector folder: "
        "TFLite nets for the gate, Keras weights, card and plots (docs/detector.md). Select it with "
        "detector.model.",
    )
    _add_scene_split_arguments(p, "whose train/val images are used and whose test images are held out")
    p.add_argument("--out", type=Path, default=DEFAULT_TRAINED_DETECTOR_OUT, help="detector folder to write")
    p.add_argument("--epochs", type=positive_int, default=6, help="epochs per network")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--lr", type=positive_float, default=3e-4, help="learning rate (cosine decay)")
    p.add_argument(
        "--masked-weight", type=positive_float, default=2.0, help="weight of masked faces' samples"
    )
    p.add_argument("--bare-weight", type=positive_float, default=1.0, help="weight of bare faces' samples")
    p.add_argument(
        "--large-face-weight",
        type=positive_float,
        default=1.0,
        help="extra weight of the samples of faces of at least --large-face-px (original image px)",
    )
    p.add_argument(
        "--large-face-px", type=positive_float, default=96.0, help="side of a large face (default 96)"
    )
    p.add_argument("--no-synthetic", action="store_true", help="no synthetic masks on bare faces")
    p.add_argument(
        "--networks",
        nargs="+",
        choices=("pnet", "rnet", "onet"),
        default=["rnet", "onet"],
        help="nets to fine-tune (default: rnet onet)",
    )
    p.add_argument(
        "--part-is-face",
        nargs="*",
        choices=("rnet", "onet"),
        default=["rnet"],
        help="nets that learn to score part faces (IoU 0.4-0.65) as faces (default: rnet)",
    )
    p.add_argument(
        "--loose-part-iou", type=fraction, default=0.4, help="part-face IoU for --part-is-face nets"
    )
    p.add_argument(
        "--loose-negative-iou",
        type=fraction,
        default=0.3,
        help="negative IoU for --part-is-face nets (at most --loose-part-iou)",
    )
    p.add_argument(
        "--start", type=Path, help="detector folder to start from (default: the mtcnn package's weights)"
    )
    p.add_argument(
        "--max-scenes", type=positive_int, help="use at most this many training scenes (smoke runs)"
    )
    p.add_argument("--seed", type=non_negative_int, default=1337)
    p.add_argument("--threads", type=positive_int, default=2, help="CPU threads for TensorFlow")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_train_detector)


def _train_detector(args: argparse.Namespace, config: Config) -> int:
    from maskgate.cli import UsageError
    from maskgate.training.detector_samples import SampleConfig
    from maskgate.training.detector_train import DetectorTrainConfig, train_detector

    if args.loose_negative_iou > args.loose_part_iou:
        raise UsageError(
            f"--loose-negative-iou {args.loose_negative_iou} is above --loose-part-iou "
            f"{args.loose_part_iou}: a sample cannot be a negative and a part face at once"
        )
    _check_seed("--seed", args.seed)
    train_config = DetectorTrainConfig(
        data=args.data,
        manifest=str(args.manifest),
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        synthetic=not args.no_synthetic,
        masked_weight=args.masked_weight,
        bare_weight=args.bare_weight,
        large_face_weight=args.large_face_weight,
        large_face_px=args.large_face_px,
        part_is_face=tuple(args.part_is_face),
        loose_part_iou=args.loose_part_iou,
        loose_negative_iou=args.loose_negative_iou,
        networks=tuple(args.networks),
        start=str(args.start or ""),
        samples=SampleConfig(seed=args.seed),
        max_scenes=args.max_scenes,
        threads=args.threads,
        seed=args.seed,
        progress=not args.quiet,
    )
    result = train_detector(args.out, train_config, config.paths.datasets)
    for name in result.card["files"]:
        print(f"  {name}  {(args.out / name).stat().st_size:,} bytes")
    print(f"wrote {result.folder} in {result.seconds:.0f} s")
    return EXIT_OK


def _register_train_face_check(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train-face-check",
        help="train a detector folder's face-check net: the second opinion on the faces it adds "
        "beside the stock nets",
        description="Train the face-check net of a tuned detector folder on the train split of VOC "
        "scenes (its val images pick the epoch; its test images are never used): drawn faces against "
        "the folder's own false faces. Adds check.tflite to the folder (or a copy, --out) and a "
        "face_check entry to its card; used beside the stock nets (detector.face_check, docs/detector.md).",
    )
    _add_scene_split_arguments(p, "whose train/val images are used and whose test images are held out")
    p.add_argument(
        "--detector-model",
        type=Path,
        default=DEFAULT_TRAINED_DETECTOR_OUT,
        help=f"the tuned detector folder (default {DEFAULT_TRAINED_DETECTOR_OUT})",
    )
    p.add_argument("--out", type=Path, help="folder to write (default: the detector folder itself)")
    p.add_argument("--epochs", type=positive_int, default=8)
    p.add_argument(
        "--members", type=positive_int, default=3, help="nets from successive seeds, averaged (default 3)"
    )
    p.add_argument(
        "--photos",
        nargs="*",
        default=list(SHIPPED_FACE_CHECK_PHOTOS),
        help="folders of photos of masked people (under paths.datasets) whose largest face is a face too "
        f"(default: {' '.join(SHIPPED_FACE_CHECK_PHOTOS)}, as for the shipped net; --photos alone: none)",
    )
    p.add_argument(
        "--max-scenes",
        type=non_negative_int,
        default=0,
        help="use at most this many scenes per split (smoke runs; default 0: all)",
    )
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--threads", type=positive_int, default=2, help="CPU threads for TensorFlow")
    p.add_argument(
        "--allow-non-commercial",
        action="store_true",
        help="accept scenes or photos licensed for non-commercial use only, into an --out of its own "
        "(never the shipped detector)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_train_face_check)


def _train_face_check(args: argparse.Namespace, config: Config) -> int:
    from maskgate.cli import UsageError
    from maskgate.modelcard import ModelFileError
    from maskgate.training.datasets import DataSpecError
    from maskgate.training.face_check import FaceCheckConfig, FaceCheckError, summary, train_face_check

    if not args.manifest.is_file():
        raise UsageError(f"--manifest {args.manifest} does not exist")
    _check_seed("--seed", args.seed, args.members)  # one per member: seed, seed + 1, ...
    root = config.paths.datasets
    for folder in args.photos:
        if not (root / folder).is_dir():
            raise UsageError(f"--photos {folder}: no such folder under {root}")
    _check_face_check_licences(args, root)
    if not (args.detector_model / "card.json").is_file():
        raise UsageError(f"--detector-model {args.detector_model} is not a detector folder (no card.json)")
    check_config = FaceCheckConfig(
        detector=str(args.detector_model),
        data=args.data,
        manifest=str(args.manifest),
        epochs=args.epochs,
        members=args.members,
        photos=tuple(args.photos),
        max_scenes=args.max_scenes,
        seed=args.seed,
        threads=args.threads,
        progress=not args.quiet,
    )
    try:
        result = train_face_check(args.out or args.detector_model, check_config, config.paths.datasets)
    except DataSpecError as exc:
        raise UsageError(str(exc)) from None
    except (ModelFileError, FaceCheckError) as exc:
        print(f"maskgate train-face-check: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    print(summary(result.entry))
    print(f"wrote {result.folder} in {result.seconds:.0f} s")
    return EXIT_OK


def _check_face_check_licences(args: argparse.Namespace, root: Path) -> None:
    """Scenes or photos licensed for non-commercial use only are refused, as `train` refuses them,
    unless --allow-non-commercial; even then not into the detector folder itself (the default, and
    the shipped folder's case): such a net goes to an --out of its own."""
    from maskgate.cli import UsageError
    from maskgate.training.datasets import DataSpec, DataSpecError, is_non_commercial
    from maskgate.training.face_check import folder_licence

    named = [("--data", args.data), *(("--photos", folder) for folder in args.photos)]
    try:
        non_commercial = [
            f"{option} {name}"
            for option, name in named
            if is_non_commercial(DataSpec.parse(name, root), folder_licence(name, root))
        ]
    except DataSpecError as exc:
        raise UsageError(str(exc)) from None
    if non_commercial and not args.allow_non_commercial:
        raise UsageError(_non_commercial_refusal(non_commercial[0]))
    if non_commercial and (args.out is None or args.out.resolve() == args.detector_model.resolve()):
        raise UsageError(
            f"{non_commercial[0]} is licensed for non-commercial use only: give --out a folder of its "
            f"own, not the detector folder {args.detector_model} (a shipped detector must not carry "
            "such a net)"
        )


def _register_calibrate_detector(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "calibrate-detector",
        help="learn how the detector's boxes map to hand-drawn face boxes (the classifier's crops)",
        description="Run the detector (config, or --detector-model) on the train split of VOC scenes, "
        "fit the box calibration (centre shift, width and height scale) that maps its boxes to the "
        "hand-drawn ones, and report its effect on the validation split. --write stores it in the "
        "detector folder's card.json, where the gate, evaluate and training apply it "
        "(detector.box_calibration). The manifest's test images are never read.",
    )
    _add_scene_split_arguments(p, "fit on its train images, measure on its val images")
    p.add_argument(
        "--detector-model", type=Path, help="detector folder (default: config detector.model, empty = stock)"
    )
    p.add_argument(
        "--min-iou",
        type=fraction,
        default=0.3,
        help="a detection this close to a drawn box is its face (above 0; default 0.3)",
    )
    p.add_argument("--write", action="store_true", help="store the calibration in the detector folder's card")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_calibrate_detector)


def _calibrate_detector(args: argparse.Namespace, config: Config) -> int:
    from dataclasses import replace

    from maskgate.cli import UsageError
    from maskgate.gate.detector import detector_folder
    from maskgate.modelcard import ModelFileError
    from maskgate.training.datasets import DataSpec, DataSpecError
    from maskgate.training.detector_calibrate import (
        CalibrationError,
        calibrate,
        format_effect,
        write_calibration,
    )

    if args.min_iou == 0:
        raise UsageError("--min-iou 0: every detection would pair with any drawn box; give a share above 0")
    detector = config.detector
    if args.detector_model:
        detector = replace(detector, model=str(args.detector_model))
    if not args.manifest.is_file():
        raise UsageError(f"--manifest {args.manifest} does not exist")
    try:
        spec = DataSpec.parse(args.data, config.paths.datasets)
        calibration, fitted = calibrate(detector, spec, args.manifest, args.min_iou, not args.quiet)
    except (DataSpecError, CalibrationError) as exc:
        raise UsageError(str(exc)) from None
    except ModelFileError as exc:
        print(f"maskgate calibrate-detector: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    print(format_effect(calibration, fitted))
    if args.write:
        folder = detector_folder(detector)
        try:
            write_calibration(folder, calibration, fitted)
        except CalibrationError as exc:
            print(f"maskgate calibrate-detector: {exc}", file=sys.stderr)
            return EXIT_RUNTIME
        print(f"wrote the calibration into {folder / 'card.json'}")
    return EXIT_OK
