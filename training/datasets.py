"""Labelled faces from the three dataset layouts people actually have.

- ``faces``: one folder per class, each image already a face photo (the whole image is the face);
- ``voc``: PASCAL VOC scenes, ``images/`` + ``annotations/*.xml``, one face per ``<object>``;
- ``photos``: one folder per class of photos of whole people: the detector finds the face first
  (the largest one), and images where it finds none are counted and reported.

Every layout produces :class:`FaceSample` records (which image, which box, which label) and a
:class:`SourceReport` that counts what could not be used (unreadable images, unknown labels,
missing files, empty boxes, faces not found) instead of crashing on it. The crops themselves
come from :func:`maskgate.crop.crop_face` (see :mod:`maskgate.training.cropset`), the same
function the gate uses.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from maskgate.core import Box, Label, UnknownLabelError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DataSpecError(ValueError):
    """A ``--data`` argument that names no usable dataset."""


class Layout(enum.StrEnum):
    FACES = "faces"
    VOC = "voc"
    PHOTOS = "photos"


@dataclass(frozen=True)
class DataSpec:
    """One data source: where it is, how it is laid out, and the name it is reported under."""

    path: Path
    layout: Layout
    name: str  # relative to the datasets root when inside it, e.g. "folders/comp6721"

    @classmethod
    def parse(cls, text: str, root: Path | None = None) -> DataSpec:
        """``PATH[:LAYOUT]``; a relative PATH is tried as given, then under the datasets `root`.

        Without a layout, a folder with ``annotations/`` is VOC and any other folder is ``faces``;
        photos of whole people must say ``:photos`` (the folder alone cannot tell).
        """
        raw, _, layout_name = text.partition(":")
        if layout_name and layout_name not in Layout.__members__.values():
            choices = ", ".join(layout.value for layout in Layout)
            raise DataSpecError(f"{text!r}: unknown layout {layout_name!r} (choose from {choices})")
        path = Path(raw).expanduser()
        if not path.is_dir() and root is not None and not path.is_absolute() and (root / path).is_dir():
            path = root / path
        if not path.is_dir():
            where = f" (nor under the datasets folder {root})" if root is not None else ""
            raise DataSpecError(f"{raw!r}: no such folder{where}")
        path = path.resolve()
        layout = Layout(layout_name) if layout_name else _guess_layout(path)
        return cls(path=path, layout=layout, name=_source_name(path, root))

    def __str__(self) -> str:
        return f"{self.name}:{self.layout.value}"


def _guess_layout(path: Path) -> Layout:
    return Layout.VOC if (path / "annotations").is_dir() else Layout.FACES


def _source_name(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return path.name


@dataclass(frozen=True)
class FaceSample:
    """One labelled face: in image `image` (relative to the source folder), at `box` (None: find it)."""

    image: str
    label: Label
    box: Box | None


@dataclass(frozen=True)
class SourceImage:
    """One image file of a source, its content hash and the faces labelled in it."""

    path: str  # relative to the source folder, POSIX separators
    sha256: str
    faces: tuple[FaceSample, ...]


@dataclass
class SourceReport:
    """What a source held and what of it could not be used, for the log, the card and the tests."""

    source: str
    layout: str
    images: int = 0
    faces: Counter[str] = field(default_factory=Counter)  # usable faces per canonical label
    unreadable: list[str] = field(default_factory=list)  # files that are not decodable images
    unknown_labels: Counter[str] = field(default_factory=Counter)  # raw class name -> count
    missing_images: list[str] = field(default_factory=list)  # annotations whose image is not found
    bad_annotations: list[str] = field(default_factory=list)  # XML that cannot be parsed
    empty_boxes: int = 0  # boxes with no area inside the image
    no_face: list[str] = field(default_factory=list)  # photos where the detector found no face
    relabelled: int = 0  # faces whose label a label review corrected (label_review.py)
    excluded: int = 0  # faces a label review left out

    def to_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "layout": self.layout,
            "images": self.images,
            "faces": {label.value: self.faces.get(label.value, 0) for label in Label},
            "unreadable": len(self.unreadable),
            "unknown_labels": dict(self.unknown_labels),
            "missing_images": len(self.missing_images),
            "bad_annotations": len(self.bad_annotations),
            "empty_boxes": self.empty_boxes,
            "no_face": len(self.no_face),
            "relabelled": self.relabelled,
            "excluded": self.excluded,
        }

    def summary(self) -> str:
        faces = ", ".join(f"{label.value} {self.faces.get(label.value, 0)}" for label in Label)
        problems = [
            f"{len(self.unreadable)} unreadable" if self.unreadable else "",
            f"unknown labels {dict(self.unknown_labels)}" if self.unknown_labels else "",
            f"{len(self.missing_images)} annotations without image" if self.missing_images else "",
            f"{len(self.bad_annotations)} bad annotations" if self.bad_annotations else "",
            f"{self.empty_boxes} empty boxes" if self.empty_boxes else "",
            f"{len(self.no_face)} photos without a detected face" if self.no_face else "",
            f"{self.excluded} faces left out by the label review" if self.excluded else "",
        ]
        skipped = "; ".join(p for p in problems if p)
        reviewed = f"; {self.relabelled} relabelled by the label review" if self.relabelled else ""
        return f"{self.source} ({self.layout}): {self.images} images, {faces}{reviewed}" + (
            f"; skipped: {skipped}" if skipped else ""
        )


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    return sha256_bytes(path.read_bytes())


def is_image(path: Path) -> bool:
    """Whether `path` is an image file a dataset may hold (by extension; hidden files are not)."""
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def scan(spec: DataSpec) -> tuple[list[SourceImage], SourceReport]:
    """The images of `spec` with their labelled faces; what cannot be used is counted in the report."""
    report = SourceReport(source=spec.name, layout=spec.layout.value)
    if spec.layout is Layout.VOC:
        images = _scan_voc(spec.path, report)
    else:
        images = _scan_class_folders(spec.path, spec.layout, report)
    return images, report


def _scan_class_folders(root: Path, layout: Layout, report: SourceReport) -> list[SourceImage]:
    images = []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataSpecError(f"{root}: expected one sub-folder per class, found none")
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if is_image(p))
        try:
            label = Label.parse(folder.name)
        except UnknownLabelError:
            report.unknown_labels[folder.name] += len(files)
            continue
        for file in files:
            relative = file.relative_to(root).as_posix()
            try:
                digest = file_sha256(file)
            except OSError:  # no permission, an I/O error: one file is not a reason to stop
                report.unreadable.append(relative)
                continue
            # Faces: the whole photo is the face (box filled in when the image is read).
            # Photos: the detector finds the face; the box stays None until then.
            images.append(SourceImage(relative, digest, (FaceSample(relative, label, None),)))
    return images


def _scan_voc(root: Path, report: SourceReport) -> list[SourceImage]:
    annotations = root / "annotations"
    image_dir = root / "images" if (root / "images").is_dir() else root
    images = []
    for xml_path in sorted(annotations.glob("*.xml")):
        try:
            xml = xml_path.read_bytes()
            annotation = parse_voc(xml)
        except OSError as exc:
            report.bad_annotations.append(f"{xml_path.name}: cannot be read: {exc.strerror or exc}")
            continue
        except (ET.ParseError, ValueError) as exc:
            report.bad_annotations.append(f"{xml_path.name}: {exc}")
            continue
        file = resolve_voc_image(image_dir, annotation.filename, xml_path.stem)
        if file is None:
            report.missing_images.append(xml_path.name)
            continue
        relative = file.relative_to(root).as_posix()
        faces = []
        for name, box in annotation.objects:
            try:
                faces.append(FaceSample(relative, Label.parse(name), box))
            except UnknownLabelError:
                report.unknown_labels[name] += 1
        # The annotation is part of the data: a changed box must change the hash too.
        try:
            digest = sha256_bytes(file.read_bytes() + xml)
        except OSError:
            report.unreadable.append(relative)
            continue
        images.append(SourceImage(relative, digest, tuple(faces)))
    if not images and not report.missing_images and not report.bad_annotations:
        raise DataSpecError(f"{annotations}: no *.xml annotations")
    return images


@dataclass(frozen=True)
class VocAnnotation:
    filename: str
    objects: tuple[tuple[str, Box], ...]  # raw class name, box as written (not clipped)


def parse_voc(xml: bytes) -> VocAnnotation:
    """The file name and the named boxes of one PASCAL VOC annotation."""
    root = ET.fromstring(xml)
    objects = []
    for node in root.iter("object"):
        name = (node.findtext("name") or "").strip()
        bndbox = node.find("bndbox")
        if bndbox is None:
            raise ValueError(f"object {name!r} has no <bndbox>")
        texts = [bndbox.findtext(key) for key in ("xmin", "ymin", "xmax", "ymax")]
        if not all(text and text.strip() for text in texts):
            raise ValueError(f"object {name!r}: incomplete <bndbox>")
        try:
            coords = [float(text) for text in texts]  # type: ignore[arg-type]
        except ValueError as exc:
            raise ValueError(f"object {name!r}: {exc}") from None
        if not all(math.isfinite(c) for c in coords):  # "inf", "nan", "1e999": no box to cut
            raise ValueError(f"object {name!r}: non-finite coordinate in <bndbox> {texts}")
        objects.append((name, Box(*coords)))
    return VocAnnotation((root.findtext("filename") or "").strip(), tuple(objects))


def resolve_voc_image(image_dir: Path, filename: str, stem: str) -> Path | None:
    """The image an annotation describes.

    VOC files in the wild often carry a ``<filename>`` that does not match the file on disk
    (renamed sets, another extension, a path): try it as written and by its base name, then fall
    back to the annotation's own name with the common image extensions, in either case.
    """
    candidates = []
    if filename:
        candidates += [image_dir / filename, image_dir / Path(filename.replace("\\", "/")).name]
    bases = [stem] + ([Path(filename).stem] if filename else [])
    for base in bases:
        for ext in IMAGE_EXTENSIONS:
            candidates += [image_dir / f"{base}{ext}", image_dir / f"{base}{ext.upper()}"]
    for candidate in candidates:
        if is_image(candidate):
            return candidate
    return None


# -- licences ------------------------------------------------------------------------------------

_TABLE_ROW = re.compile(r"^\|\s*`([^`]+?)/?`\s*\|(.*)\|\s*$")


def licence_of(spec: DataSpec, root: Path | None) -> str:
    """The licence the datasets README states for `spec` (its last table column), else "unknown"."""
    readme = root / "README.md" if root is not None else None
    if readme is None or not readme.is_file():
        return "unknown"
    for line in readme.read_text(errors="replace").splitlines():
        match = _TABLE_ROW.match(line)
        if match and match.group(1).strip("/") == spec.name:
            return match.group(2).split("|")[-1].strip()
    return "unknown"


def is_non_commercial(spec: DataSpec, licence: str) -> bool:
    return spec.name.startswith("noncommercial/") or "non-commercial" in licence.lower() or "-NC" in licence
