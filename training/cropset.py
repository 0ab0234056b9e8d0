"""Face crops of a data source as arrays, made once with the gate's crop function and cached.

Reading and detecting is the slow part of training on a CPU (the detector alone takes a good
fraction of a second per photo), so the crops of a source are stored in an ``.npz`` under the
cache folder, keyed by a hash of everything that decides them: the files' content, the
layout, the crop spec, the detector settings and :data:`CACHE_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from tqdm import tqdm

from maskgate.config import DetectorConfig
from maskgate.core import LABELS, Box, Face
from maskgate.crop import CropSpec, EmptyCropError, crop_face
from maskgate.training.datasets import DataSpec, Layout, SourceImage, SourceReport, scan
from maskgate.training.label_review import LabelReview

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the extraction itself changes
PHOTO_MIN_FACE = 20  # detector minimum face size for image-level photos (px at working width)

if TYPE_CHECKING:
    from maskgate.gate.detector import FaceDetector

Detect = Callable[[np.ndarray], list[Face]]
# Where the face of an image-level photo is: the largest detected face, or None.
Locate = Callable[[SourceImage, np.ndarray], Box | None]


@dataclass(frozen=True)
class CropSet:
    """Face crops and what is known about each: label, source, image, box side."""

    crops: np.ndarray  # uint8 (N, size, size, channels), from crop_face
    labels: np.ndarray  # int64 (N,), index into LABELS
    sides: np.ndarray  # float32 (N,), the face box's longer side in the original image (px)
    sources: np.ndarray  # str (N,), the source's name
    images: np.ndarray  # str (N,), the image's path inside its source: the split's group

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, mask: np.ndarray) -> CropSet:
        return CropSet(
            self.crops[mask], self.labels[mask], self.sides[mask], self.sources[mask], self.images[mask]
        )

    @classmethod
    def empty(cls, spec: CropSpec) -> CropSet:
        return cls(
            np.zeros((0, spec.size, spec.size, spec.channels), np.uint8),
            np.zeros(0, np.int64),
            np.zeros(0, np.float32),
            np.zeros(0, dtype="<U1"),
            np.zeros(0, dtype="<U1"),
        )

    @classmethod
    def concat(cls, sets: Sequence[CropSet]) -> CropSet:
        return cls(*(np.concatenate([getattr(s, f) for s in sets]) for f in cls.__dataclass_fields__))

    def counts(self) -> dict[str, int]:
        return {label.value: int((self.labels == i).sum()) for i, label in enumerate(LABELS)}


def read_rgb(path: Path) -> np.ndarray | None:
    """The image at `path` as RGB uint8, or None when it cannot be read or decoded."""
    try:
        data = np.fromfile(path, np.uint8)
    except OSError:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None or image.ndim != 3 or min(image.shape[:2]) < 2:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def largest_face(faces: Sequence[Face]) -> Face | None:
    """The face a photo is cropped around: the largest, measured by the box its crop is cut around."""
    return max(faces, key=lambda face: face.box_to_crop.area, default=None)


def centre_square(width: int, height: int) -> Box:
    side = min(width, height)
    x1, y1 = (width - side) // 2, (height - side) // 2
    return Box(x1, y1, x1 + side, y1 + side)


def largest_face_locator(detect: Detect) -> Locate:
    def locate(_item: SourceImage, image: np.ndarray) -> Box | None:
        face = largest_face(detect(image))
        return face.box_to_crop if face else None

    return locate


class DetectionMemo:
    """Remembers the located face of each photo by content hash, in a JSON file per detector setting.

    Detection is most of the extraction time, and the same photos are cropped again for other
    crop specs (the seed's 255 px grey, other sizes); the detector is only built on a miss.
    """

    def __init__(self, path: Path | None, factory: Callable[[], Detect]):
        self.path = path
        self._factory = factory
        self._locate: Locate | None = None
        self.boxes: dict[str, list[float] | None] = (
            json.loads(path.read_text()) if path is not None and path.is_file() else {}
        )

    def __call__(self, item: SourceImage, image: np.ndarray) -> Box | None:
        if item.sha256 not in self.boxes:
            if self._locate is None:
                self._locate = largest_face_locator(self._factory())
            box = self._locate(item, image)
            self.boxes[item.sha256] = None if box is None else [box.x1, box.y1, box.x2, box.y2]
        found = self.boxes[item.sha256]
        return None if found is None else Box(*found)

    def save(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.boxes, sort_keys=True))


def extract(
    spec: DataSpec,
    images: Sequence[SourceImage],
    report: SourceReport,
    crop: CropSpec,
    locate: Locate | None = None,
    progress: bool = True,
) -> CropSet:
    """Crop every labelled face of `images`; problems are counted in `report`, never raised."""
    if spec.layout is Layout.PHOTOS and locate is None:
        raise ValueError("image-level photos need a face detector")
    crops, labels, sides, names = [], [], [], []
    for item in tqdm(images, desc=f"crops {spec.name}", unit="img", disable=not progress, leave=False):
        image = read_rgb(spec.path / item.path)
        if image is None:
            report.unreadable.append(item.path)
            continue
        report.images += 1
        height, width = image.shape[:2]
        for face in item.faces:
            box, face_spec = _face_box(spec.layout, item, face.box, image, crop, locate)
            if box is None:
                report.no_face.append(item.path)
                continue
            try:
                crops.append(crop_face(image, box, face_spec))
            except EmptyCropError:
                report.empty_boxes += 1
                continue
            report.faces[face.label.value] += 1
            labels.append(LABELS.index(face.label))
            sides.append(box.clip(width, height).side)
            names.append(item.path)
    if not crops:
        return CropSet.empty(crop)
    return CropSet(
        np.stack(crops),
        np.asarray(labels, np.int64),
        np.asarray(sides, np.float32),
        np.asarray([spec.name] * len(crops)),
        np.asarray(names),
    )


def _face_box(
    layout: Layout,
    item: SourceImage,
    box: Box | None,
    image: np.ndarray,
    crop: CropSpec,
    locate: Locate | None,
) -> tuple[Box | None, CropSpec]:
    height, width = image.shape[:2]
    if layout is Layout.FACES:
        # The photo is already a face crop with its own margin: take its largest centred square
        # and add none. Padding a portrait to a square instead would add replicated-edge streaks
        # that a door camera's crops (a square window of a real scene) never have.
        return centre_square(width, height), replace(crop, margin=0.0)
    if layout is Layout.PHOTOS:
        assert locate is not None
        return locate(item, image), crop
    assert box is not None
    return box, crop  # VOC: crop_face clips and pads; an empty box raises EmptyCropError


def cache_key(
    spec: DataSpec, images: Sequence[SourceImage], crop: CropSpec, detector: str, review: str = ""
) -> str:
    digest = hashlib.sha256()
    header = {
        "version": CACHE_VERSION,
        "layout": spec.layout.value,
        "crop": crop.to_json(),
        "detector": detector if spec.layout is Layout.PHOTOS else "",
    }
    if review:  # only then: keys of unreviewed sources stay as they were
        header["review"] = review
    digest.update(json.dumps(header, sort_keys=True).encode())
    for item in images:
        digest.update(f"{item.path}\0{item.sha256}\n".encode())
    return digest.hexdigest()[:24]


def load_source(
    spec: DataSpec,
    crop: CropSpec,
    cache_dir: Path | None,
    make_detect: Callable[[], Detect] | None = None,
    detector_tag: str = "",
    progress: bool = True,
    review: LabelReview | None = None,
) -> tuple[CropSet, SourceReport, list[SourceImage]]:
    """The crops of one source, from the cache when its key matches, else extracted and cached.

    With a `review`, the crops carry its corrected labels and leave out the faces it excludes; the
    images returned are the source's as scanned, with its own labels: what the split is made of.
    """
    images, report = scan(spec)
    labelled, review_tag = images, ""
    if review is not None:
        labelled = review.apply_counted(spec.name, images, report)
        review_tag = review.cache_tag(spec.name)
    key = cache_key(spec, images, crop, detector_tag, review_tag)
    path = cache_dir / f"{spec.name.replace('/', '__')}-{spec.layout.value}-{key}.npz" if cache_dir else None
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as data:
            cached = CropSet(*(data[f] for f in CropSet.__dataclass_fields__))
            saved = json.loads(str(data["report"]))
        _restore_report(report, saved)
        log.info("%s: %d crops from cache %s", spec, len(cached), path.name)
        return cached, report, images
    memo = None
    if spec.layout is Layout.PHOTOS and make_detect is not None:
        tag = hashlib.sha256(detector_tag.encode()).hexdigest()[:12]
        memo_path = cache_dir / f"detections-{tag}.json" if cache_dir else None
        memo = DetectionMemo(memo_path, make_detect)
    crops = extract(spec, labelled, report, crop, memo, progress)
    if memo is not None:
        memo.save()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **{f: getattr(crops, f) for f in CropSet.__dataclass_fields__}, report=_saved(report))
        tmp.replace(path)
    return crops, report, images


def _saved(report: SourceReport) -> str:
    return json.dumps(
        {
            "images": report.images,
            "faces": dict(report.faces),
            "unreadable": report.unreadable,
            "no_face": report.no_face,
            "empty_boxes": report.empty_boxes,
        }
    )


def _restore_report(report: SourceReport, saved: dict) -> None:
    # Scanning fills in unknown labels, missing images and bad annotations; reading the rest.
    report.images = saved["images"]
    report.faces.update(saved["faces"])
    report.unreadable = list(saved["unreadable"])
    report.no_face = list(saved["no_face"])
    report.empty_boxes = saved["empty_boxes"]


def photo_detector_config(gate: DetectorConfig | None = None) -> DetectorConfig:
    """The gate's detector settings (`gate`, default: the defaults) with a smaller minimum face:
    whole-body photos have small faces. Its weights and box calibration stay the gate's, so that
    photo crops are made the way the gate makes its crops."""
    return replace(gate or DetectorConfig(), min_face_size=PHOTO_MIN_FACE)


def detector_factory(config: DetectorConfig) -> Callable[[], Detect]:
    """Builds the gate's own detector for `config.kind`, lazily: it loads only on a cache miss.

    Its boxes are calibrated as the gate calibrates them before cropping, so that photo crops
    look like the crops the gate classifies.
    """
    from maskgate.gate.detector import CalibratedDetector, box_calibration

    def make() -> Detect:
        return CalibratedDetector(make_detector(config), box_calibration(config)).detect

    return make


def make_detector(config: DetectorConfig) -> FaceDetector:
    """The detector the agent would build for `config` (the agent's builder decides which class)."""
    from maskgate.config import Config
    from maskgate.gate.build import make_detector as build

    return build(replace(Config(), detector=config))


def detector_id(config: DetectorConfig) -> str:
    """What the located faces depend on: the detector's settings, the sha256 of its weights (a
    folder trained again under the same name is another detector) and its box calibration."""
    from maskgate.gate.detector import box_calibration, detector_folder, read_detector_card, stock_nets_config

    weights = read_detector_card(detector_folder(config)).get("files", {})
    calibration = box_calibration(config).to_json()
    record = asdict(config) | {"weights": weights, "calibration": calibration}
    if config.with_stock and config.model:
        stock = stock_nets_config(config)
        record["stock_weights"] = read_detector_card(detector_folder(stock)).get("files", {})
        record["stock_calibration"] = box_calibration(stock).to_json()
    else:
        # Unpaired, the pairing settings change nothing: the records and crop caches of models
        # trained before they existed stay equal to today's.
        for key in ("with_stock", "stock_check", "stock_thresholds", "face_check", "face_check_floor"):
            del record[key]
    return json.dumps(record, sort_keys=True)


def photo_detector_record(gate: DetectorConfig | None = None) -> dict:
    """What cuts `photos` crops for the gate's detector settings `gate`, as a model card records it
    (``training.detector_for_photos``): settings, weights' sha256 and box calibration."""
    return json.loads(detector_id(photo_detector_config(gate)))
