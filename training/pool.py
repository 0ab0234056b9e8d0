"""The retraining pool: base datasets + reviewed incident crops, deduplicated; and the frozen evaluation set.

Everything here hands :func:`maskgate.training.train.train` ordinary :class:`DataSpec` sources, so the
training code needs no special case for incidents or exclusions:

- **incidents** staff confirmed or relabelled become a VOC source (``images/<sha256>.jpg`` +
  ``annotations/<sha256>.xml``): the gate's snapshot with the face's box inside it, so that
  :mod:`maskgate.training.cropset` re-crops it to the candidate's own crop spec with the shared
  crop function (a snapshot has margin 0.5; the classifier wants its own margin and size);
- a source that loses images (frozen evaluation images, duplicates) becomes a folder of
  symbolic links to the images it keeps, under the source's own name: its card entry, licence
  and manifest rows read exactly as for the original;
- the **frozen evaluation set** is the images of ``retrain.eval_data`` listed under
  ``retrain.eval_split`` in ``retrain.eval_manifest``, matched by sha256 (a file that changed is
  no longer the frozen image). It is excluded from training by content, wherever it appears.

Content hashes are :func:`maskgate.training.datasets.scan`'s: a file's sha256, and for VOC the
image and its annotation together.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from xml.sax.saxutils import escape

from maskgate.core import Box, Label
from maskgate.files import snapshot_file
from maskgate.gate.snapshots import SNAPSHOT_MARGIN
from maskgate.store import EventFilter, EventStore
from maskgate.training.cropset import read_rgb
from maskgate.training.datasets import (
    DataSpec,
    DataSpecError,
    Layout,
    SourceImage,
    file_sha256,
    is_non_commercial,
    licence_of,
    parse_voc,
    resolve_voc_image,
    scan,
)
from maskgate.training.split import read_manifest

log = logging.getLogger(__name__)

INCIDENT_SOURCE = "incidents"  # the source name of incident crops in cards and manifests
PAGE = 1000

Log = Callable[[str], None]


class PoolError(ValueError):
    """The configured pool or evaluation set cannot be used (missing, non-commercial, empty)."""


# -- incidents ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IncidentCrop:
    """One reviewed incident with a usable snapshot: what staff said the face really shows."""

    event_id: uuid.UUID
    label: Label
    snapshot: Path  # absolute, inside the snapshots folder
    sha256: str  # of the JPEG's bytes: duplicates are the same picture
    reviewed_at: datetime


@dataclass
class IncidentCounts:
    reviewed: int = 0
    used: int = 0
    false_positive: int = 0
    no_label: int = 0
    no_snapshot: int = 0  # none recorded, gone, outside the snapshots folder or unreadable
    duplicates: int = 0
    held_out: int = 0  # recent ones kept out of training to evaluate on

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


def reviewed_events(store: EventStore) -> Iterator:
    """Every reviewed event, newest first, page by page (keyset: the cost is the same at any depth)."""
    cursor = None
    while True:
        page = store.list_events(EventFilter(reviewed=True), limit=PAGE, cursor=cursor)
        yield from page.events
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def reviewed_incidents(store: EventStore, snapshots: Path) -> tuple[list[IncidentCrop], IncidentCounts]:
    """The confirmed or relabelled events with a snapshot, deduplicated by the snapshot's content.

    A false positive (not a face) or a review without a label teaches nothing. When two events
    have byte-identical snapshots the newest review wins: it is the latest word on that picture.
    """
    counts = IncidentCounts()
    by_hash: dict[str, IncidentCrop] = {}
    for event in reviewed_events(store):
        counts.reviewed += 1
        review = event.review
        if review is None or review.false_positive:
            counts.false_positive += 1
            continue
        if review.true_label is None:
            counts.no_label += 1
            continue
        path = snapshot_file(snapshots, event.snapshot_path)
        if path is None:
            counts.no_snapshot += 1
            continue
        crop = IncidentCrop(event.event_id, review.true_label, path, file_sha256(path), review.reviewed_at)
        known = by_hash.get(crop.sha256)
        if known is not None:
            counts.duplicates += 1
            if known.reviewed_at >= crop.reviewed_at:
                continue
        by_hash[crop.sha256] = crop
    crops = sorted(by_hash.values(), key=lambda c: c.sha256)
    counts.used = len(crops)
    return crops, counts


def hold_out(
    crops: Sequence[IncidentCrop], since: datetime, share: float
) -> tuple[list[IncidentCrop], list[IncidentCrop]]:
    """(to train on, to evaluate on): a `share` of the incidents reviewed since `since` is held out.

    Chosen by content hash, not at random, so an incident stays on its side night after night:
    the champion, trained on an earlier night, never saw the incidents the challenger is tested
    on either. Once its review is older than the window, an incident joins the training pool.
    """
    limit = share * 16**8
    held = [c for c in crops if c.reviewed_at >= since and int(c.sha256[:8], 16) < limit]
    held_hashes = {c.sha256 for c in held}
    return [c for c in crops if c.sha256 not in held_hashes], held


def snapshot_face_box(width: int, height: int) -> Box:
    """Where the face is inside a gate snapshot.

    `gate/snapshots.py` saves the square around the face's longer side widened by SNAPSHOT_MARGIN
    on each side, clipped to the frame, so unclipped the face is the middle 1 / (1 + 2 x margin)
    of it. A face at the frame's edge gave a clipped, non-square snapshot and which side was cut
    is not recorded: the face is then taken as centred, sized from the longer (uncut) side, which
    is off by at most the part that was cut.
    """
    side = max(width, height) / (1 + 2 * SNAPSHOT_MARGIN)
    cx, cy = width / 2, height / 2
    return Box(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def write_incident_source(crops: Iterable[IncidentCrop], folder: Path) -> tuple[DataSpec | None, int]:
    """The incidents as a VOC source in `folder` (replaced): the source (None if empty), unreadable count."""
    _fresh(folder)
    images, annotations = folder / "images", folder / "annotations"
    images.mkdir(parents=True)
    annotations.mkdir()
    written = unreadable = 0
    for crop in crops:
        pixels = read_rgb(crop.snapshot)
        if pixels is None:
            unreadable += 1
            continue
        height, width = pixels.shape[:2]
        name = f"{crop.sha256}.jpg"
        shutil.copyfile(crop.snapshot, images / name)
        box = snapshot_face_box(width, height)
        (annotations / f"{crop.sha256}.xml").write_text(_voc_xml(name, width, height, crop.label, box))
        written += 1
    if not written:
        return None, unreadable
    return DataSpec(path=folder.resolve(), layout=Layout.VOC, name=INCIDENT_SOURCE), unreadable


def _voc_xml(filename: str, width: int, height: int, label: Label, box: Box) -> str:
    return (
        "<annotation>\n"
        f"  <filename>{escape(filename)}</filename>\n"
        f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>\n"
        "  <object>\n"
        f"    <name>{label.value}</name>\n"
        f"    <bndbox><xmin>{box.x1:.1f}</xmin><ymin>{box.y1:.1f}</ymin>"
        f"<xmax>{box.x2:.1f}</xmax><ymax>{box.y2:.1f}</ymax></bndbox>\n"
        "  </object>\n"
        "</annotation>\n"
    )


# -- sources, frozen set, deduplication ---------------------------------------------------------------


def parse_specs(texts: Sequence[str], root: Path, what: str) -> list[DataSpec]:
    """`retrain.base_data` / `eval_data` as sources; non-commercial ones are refused (models ship)."""
    specs = []
    for text in texts:
        try:
            spec = DataSpec.parse(text, root)
        except DataSpecError as exc:
            raise PoolError(f"retrain.{what}: {exc}") from None
        if is_non_commercial(spec, licence_of(spec, root)):
            raise PoolError(f"retrain.{what}: {spec.name} is licensed for non-commercial use only")
        specs.append(spec)
    return specs


class Scans:
    """`scan` once per source and run: hashing every file is the cost, and several steps need it."""

    def __init__(self) -> None:
        self._done: dict[DataSpec, list[SourceImage]] = {}

    def __call__(self, spec: DataSpec) -> list[SourceImage]:
        if spec not in self._done:
            self._done[spec] = scan(spec)[0]
        return self._done[spec]


@dataclass(frozen=True)
class FrozenSet:
    specs: list[DataSpec]  # only the frozen images
    hashes: frozenset[str]
    images: int
    missing: int  # listed in the manifest but gone or changed

    @property
    def digest(self) -> str:
        """Which images these are, in 16 hex digits: runs with the same digest compare alike."""
        return hashlib.sha256("\n".join(sorted(self.hashes)).encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, object]:
        return {
            "sources": [s.name for s in self.specs],
            "images": self.images,
            "missing": self.missing,
            "digest": self.digest,
        }


def frozen_set(
    specs: Sequence[DataSpec], manifest: Path | None, split: str, folder: Path, scans: Scans
) -> FrozenSet:
    """The frozen evaluation images of `specs`: those `manifest` lists under `split` (all without one)."""
    wanted: dict[tuple[str, str], str] | None = None
    if manifest is not None:
        if not manifest.is_file():
            raise PoolError(f"retrain.eval_manifest: {manifest} does not exist")
        rows = read_manifest(manifest)
        wanted = {(r.source, r.path): r.sha256 for r in rows if r.split.value == split}
    kept_specs, hashes, missing = [], set(), 0
    for index, spec in enumerate(specs):
        images = scans(spec)
        if wanted is None:
            kept = images
        else:
            kept = [i for i in images if wanted.get((spec.name, i.path)) == i.sha256]
            missing += sum(1 for source, _ in wanted if source == spec.name) - len(kept)
        if kept:
            kept_specs.append(linked_source(spec, images, kept, folder / f"{index}"))
            hashes.update(i.sha256 for i in kept)
    if not hashes:
        raise PoolError(
            "the frozen evaluation set is empty: check retrain.eval_data, eval_manifest, eval_split"
        )
    return FrozenSet(kept_specs, frozenset(hashes), len(hashes), missing)


@dataclass
class BaseCounts:
    images: int = 0
    frozen_excluded: int = 0
    duplicates: int = 0

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class BasePool:
    specs: list[DataSpec]
    hashes: set[str] = field(default_factory=set)
    counts: BaseCounts = field(default_factory=BaseCounts)


def base_pool(specs: Sequence[DataSpec], exclude: frozenset[str], folder: Path, scans: Scans) -> BasePool:
    """The base sources without the frozen images and without images already in an earlier source."""
    pool = BasePool([])
    for index, spec in enumerate(specs):
        images = scans(spec)
        kept = []
        for image in images:
            if image.sha256 in exclude:
                pool.counts.frozen_excluded += 1
            elif image.sha256 in pool.hashes:
                pool.counts.duplicates += 1
            else:
                pool.hashes.add(image.sha256)
                kept.append(image)
        pool.counts.images += len(kept)
        if kept:
            pool.specs.append(linked_source(spec, images, kept, folder / f"{index}"))
    return pool


def linked_source(
    spec: DataSpec, images: Sequence[SourceImage], kept: Sequence[SourceImage], folder: Path
) -> DataSpec:
    """`spec` itself if it keeps every image, else a folder of links to the kept ones (same name, layout)."""
    if len(kept) == len(images):
        return spec
    _fresh(folder)
    annotations = _voc_annotations(spec.path) if spec.layout is Layout.VOC else {}
    for image in kept:
        _link(spec.path / image.path, folder / image.path)
        if image.path in annotations:
            xml = annotations[image.path]
            _link(xml, folder / "annotations" / xml.name)
    return DataSpec(path=folder.resolve(), layout=spec.layout, name=spec.name)


def _voc_annotations(root: Path) -> dict[str, Path]:
    """Image path (relative to `root`) -> its annotation file, resolved the way `scan` does."""
    image_dir = root / "images" if (root / "images").is_dir() else root
    found = {}
    for xml in sorted((root / "annotations").glob("*.xml")):
        try:
            filename = parse_voc(xml.read_bytes()).filename
        except (ET.ParseError, ValueError):  # scan counted it already
            continue
        image = resolve_voc_image(image_dir, filename, xml.stem)
        if image is not None:
            found[image.relative_to(root).as_posix()] = xml
    return found


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target.resolve(), link)


def _fresh(folder: Path) -> None:
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def drop_known(crops: Sequence[IncidentCrop], known: set[str]) -> tuple[list[IncidentCrop], int]:
    """Incidents whose picture is not already a base image (same bytes: same training example)."""
    kept = [c for c in crops if c.sha256 not in known]
    return kept, len(crops) - len(kept)
