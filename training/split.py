"""A deterministic train / validation / test split by source image, and its manifest.

Crops of one photo (several faces of a VOC scene) are near-copies in lighting, camera and
people, so they must never sit on both sides: the unit of the split is the source image.
The split is stratified by (source, rarest label in the image) so that the scarce
``improper_mask`` faces land on every side in proportion. Within a stratum a hash of the seed, the
source and each image's path orders the images; the first shares go to test, then to val. So an
image's side depends on the seed, the val and test shares and the images of its stratum (their
paths), not on the order files were listed in; and an image's stratum depends on its labels and on
which label is rarest, counted over every source of the run. Adding or removing a source can
change that order of rarity: images holding several labels then change stratum, and they and
other images of their source (whose strata grew or shrank) can change side. A source whose images
each hold one label splits the same way whatever else is in the run.
"""

from __future__ import annotations

import csv
import enum
import gzip
import hashlib
import io
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from maskgate.core import LABELS, Label
from maskgate.training.datasets import SourceImage

MANIFEST_FILE = "manifest.csv.gz"


class Split(enum.StrEnum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


@dataclass(frozen=True)
class SplitConfig:
    val: float = 0.1
    test: float = 0.2
    seed: int = 1337

    def __post_init__(self) -> None:
        if not (0 <= self.val < 1 and 0 <= self.test < 1 and self.val + self.test < 1):
            raise ValueError(f"invalid split fractions val={self.val} test={self.test}")


@dataclass(frozen=True)
class ManifestRow:
    source: str
    path: str
    sha256: str
    labels: str  # the image's labelled faces, e.g. "with_mask:3 improper_mask:1"
    split: Split


def _order(seed: int, source: str, path: str) -> str:
    return hashlib.sha256(f"{seed}\0{source}\0{path}".encode()).hexdigest()


def _rarest(labels: Iterable[Label], frequency: Counter[Label]) -> str:
    present = set(labels)
    return min(present, key=lambda label: (frequency[label], LABELS.index(label))).value if present else "-"


def assign(sources: dict[str, Sequence[SourceImage]], config: SplitConfig) -> dict[tuple[str, str], Split]:
    """The split of every (source, image path)."""
    frequency: Counter[Label] = Counter(
        face.label for images in sources.values() for image in images for face in image.faces
    )
    strata: dict[tuple[str, str], list[str]] = defaultdict(list)
    for source, images in sources.items():
        for image in images:
            strata[(source, _rarest((f.label for f in image.faces), frequency))].append(image.path)
    result: dict[tuple[str, str], Split] = {}
    for (source, _), paths in sorted(strata.items()):
        ordered = sorted(paths, key=lambda path: _order(config.seed, source, path))
        n_test = round(len(ordered) * config.test)
        n_val = round(len(ordered) * config.val)
        for rank, path in enumerate(ordered):
            split = Split.TEST if rank < n_test else Split.VAL if rank < n_test + n_val else Split.TRAIN
            result[(source, path)] = split
    return result


def manifest_rows(
    sources: dict[str, Sequence[SourceImage]], splits: dict[tuple[str, str], Split]
) -> list[ManifestRow]:
    rows = []
    for source, images in sorted(sources.items()):
        for image in images:
            counts = Counter(face.label for face in image.faces)
            labels = " ".join(f"{label.value}:{counts[label]}" for label in LABELS if counts[label])
            rows.append(ManifestRow(source, image.path, image.sha256, labels, splits[(source, image.path)]))
    return rows


def data_hash(rows: Iterable[ManifestRow]) -> str:
    """One digest of the training data: every file, its content and its split."""
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: (r.source, r.path)):
        digest.update(f"{row.source}\0{row.path}\0{row.sha256}\0{row.split.value}\n".encode())
    return digest.hexdigest()


def write_manifest(path: Path, rows: Iterable[ManifestRow]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["source", "path", "sha256", "labels", "split"])
    for row in rows:
        writer.writerow([row.source, row.path, row.sha256, row.labels, row.split.value])
    # mtime=0: the same manifest gives the same bytes, so the card's sha256 is reproducible.
    path.write_bytes(gzip.compress(buffer.getvalue().encode(), mtime=0))


def read_manifest(path: Path) -> list[ManifestRow]:
    text = gzip.decompress(path.read_bytes()).decode()
    reader = csv.DictReader(io.StringIO(text))
    return [ManifestRow(r["source"], r["path"], r["sha256"], r["labels"], Split(r["split"])) for r in reader]


def split_images(manifest: Path, splits: Iterable[str]) -> set[tuple[str, str]]:
    """The (source, image path) pairs `manifest` puts in any of `splits` ("train", "val", "test")."""
    wanted = set(splits)
    return {(row.source, row.path) for row in read_manifest(manifest) if row.split.value in wanted}
