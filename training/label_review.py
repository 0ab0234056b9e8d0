"""Source labels a person looked at and found wrong, applied to what is trained on and measured.

Public face-mask datasets carry a little label noise: a mask under the chin labelled as worn, a
box drawn beside the face it names. `maskgate evaluate --errors` puts the faces a model gets wrong
in front of a reviewer; what the reviewer finds wrong in the *data* goes into a CSV (one row per
face: the source, the image, for a VOC scene the box as drawn, the label it should have or
``exclude`` when no label fits the crop, and why). `maskgate train` and `maskgate evaluate` apply
it with ``--label-review FILE``; without it the sources' labels are used as they are.

It is applied after the split, which stays the sources' own (an image never changes side because
a label was corrected), and it is part of the crop cache key. A row that matches no face of its
source (the dataset changed) is logged, never an error: the other corrections still hold.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from maskgate.core import Box, Label, UnknownLabelError
from maskgate.training.datasets import SourceImage, SourceReport

log = logging.getLogger(__name__)

EXCLUDE = "exclude"
COLUMNS = ("source", "image", "box", "label", "reason")

# (image path inside the source, the drawn box's corners or None for the image's one face)
FaceKey = tuple[str, tuple[float, float, float, float] | None]


class LabelReviewError(ValueError):
    """The review file cannot be used as written; the message names the file and the line."""


@dataclass(frozen=True)
class ReviewedFace:
    source: str  # the source's name, as cards and manifests give it ("folders/comp6721")
    image: str  # path inside the source, POSIX separators
    box: Box | None  # as drawn in a VOC annotation; None for a layout with one face per image
    label: Label | None  # the label it should have; None: leave the face out
    reason: str

    @property
    def key(self) -> FaceKey:
        return self.image, _corners(self.box)


@dataclass(frozen=True)
class ReviewCounts:
    relabelled: int
    excluded: int
    unmatched: int  # rows of this source that name no face of it


@dataclass(frozen=True)
class LabelReview:
    """A loaded review file: its name, content hash and reviewed faces."""

    name: str
    sha256: str
    faces: tuple[ReviewedFace, ...]

    @classmethod
    def load(cls, path: Path) -> LabelReview:
        """Read and check a review file; every problem names the line it is on."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise LabelReviewError(f"{path}: cannot read the label review: {exc.strerror or exc}") from None
        text = data.decode("utf-8-sig", errors="replace")  # a spreadsheet may save a BOM
        # One row per line, each parsed alone: a quote left open spoils its own line, not the rest.
        rows = [
            (number, next(csv.reader([line])))
            for number, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.startswith("#")
        ]
        if not rows:
            raise LabelReviewError(f"{path}: no header line ({','.join(COLUMNS)})")
        (number, header), *rows = rows
        if tuple(header) != COLUMNS:
            raise LabelReviewError(
                f"{path}:{number}: the header must be {','.join(COLUMNS)}, not {','.join(header)}"
            )
        faces, seen = [], set()
        for number, row in rows:
            face = _parse_row(row, f"{path}:{number}")
            if (face.source, face.key) in seen:
                raise LabelReviewError(f"{path}:{number}: {face.source} {face.image} is reviewed twice")
            seen.add((face.source, face.key))
            faces.append(face)
        return cls(path.name, hashlib.sha256(data).hexdigest(), tuple(faces))

    def of_source(self, source: str) -> tuple[ReviewedFace, ...]:
        return tuple(face for face in self.faces if face.source == source)

    def cache_tag(self, source: str) -> str:
        """What of the review changes `source`'s crops ("" when nothing): for the crop cache key."""
        rows = sorted(f"{f.key}\0{f.label.value if f.label else EXCLUDE}" for f in self.of_source(source))
        return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16] if rows else ""

    def apply(self, source: str, images: Sequence[SourceImage]) -> tuple[list[SourceImage], ReviewCounts]:
        """`images` of `source` with the reviewed faces relabelled or left out; `unmatched` counts
        the rows of `source` that name no face of `images`."""
        reviewed = {face.key: face for face in self.of_source(source)}
        used: set[FaceKey] = set()
        out = []
        relabelled = excluded = 0
        for image in images:
            faces = []
            for sample in image.faces:
                key = (image.path, _corners(sample.box))
                face = reviewed.get(key)
                if face is None:
                    faces.append(sample)
                    continue
                used.add(key)
                if face.label is None:
                    excluded += 1
                    continue
                if face.label is not sample.label:
                    relabelled += 1
                faces.append(replace(sample, label=face.label))
            out.append(image if tuple(faces) == image.faces else replace(image, faces=tuple(faces)))
        return out, ReviewCounts(relabelled, excluded, len(reviewed) - len(used))

    def apply_counted(
        self, source: str, images: Sequence[SourceImage], report: SourceReport, all_images: bool = True
    ) -> list[SourceImage]:
        """:meth:`apply`, its counts in `report`; with `all_images` (the whole source, not a
        split of it), the rows that name no face of it are logged: the dataset changed."""
        reviewed, counts = self.apply(source, images)
        report.relabelled, report.excluded = counts.relabelled, counts.excluded
        if all_images and counts.unmatched:
            log.warning("%s: %d reviewed faces of %s name no face of it", self.name, counts.unmatched, source)
        return reviewed

    def to_json(self) -> dict[str, object]:
        return {"file": self.name, "sha256": self.sha256, "faces": len(self.faces)}


def _corners(box: Box | None) -> tuple[float, float, float, float] | None:
    return None if box is None else (box.x1, box.y1, box.x2, box.y2)


def _parse_row(row: list[str], where: str) -> ReviewedFace:
    if len(row) != len(COLUMNS):
        raise LabelReviewError(
            f"{where}: expected {len(COLUMNS)} fields ({','.join(COLUMNS)}), found {len(row)}"
        )
    source, image, box_text, label_text, reason = (field.strip() for field in row)
    if not source or not image:
        raise LabelReviewError(f"{where}: the source and the image are required")
    if not reason:
        raise LabelReviewError(f"{where}: say why ({image}): a correction without a reason cannot be checked")
    box = None
    if box_text:
        try:
            x1, y1, x2, y2 = (float(v) for v in box_text.split())
        except ValueError:
            raise LabelReviewError(f"{where}: box {box_text!r} is not four numbers 'x1 y1 x2 y2'") from None
        box = Box(x1, y1, x2, y2)
    label = None
    if label_text != EXCLUDE:
        try:
            label = Label.parse(label_text)
        except UnknownLabelError:
            choices = ", ".join([*(label.value for label in Label), EXCLUDE])
            raise LabelReviewError(f"{where}: unknown label {label_text!r} (choose from {choices})") from None
    return ReviewedFace(source, image, box, label, reason)
