"""The split is by source image, deterministic, stratified, and recorded in a manifest."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

from maskgate.core import Box, Label
from maskgate.training.datasets import FaceSample, SourceImage
from maskgate.training.split import (
    Split,
    SplitConfig,
    assign,
    data_hash,
    manifest_rows,
    read_manifest,
    write_manifest,
)


def image(path: str, *labels: Label) -> SourceImage:
    faces = tuple(FaceSample(path, label, Box(0, 0, 10, 10)) for label in labels)
    return SourceImage(path, f"sha-{path}", faces)


def pool() -> dict[str, list[SourceImage]]:
    scenes = [image(f"s{i}.jpg", Label.WITH_MASK, Label.WITHOUT_MASK) for i in range(200)]
    scenes += [image(f"r{i}.jpg", Label.WITH_MASK, Label.IMPROPER_MASK) for i in range(40)]
    faces = [image(f"f{i}.jpg", Label.WITHOUT_MASK) for i in range(300)]
    return {"scenes": scenes, "faces": faces}


def test_split_is_deterministic_and_independent_of_listing_order():
    config = SplitConfig(val=0.1, test=0.2, seed=3)
    first = assign(pool(), config)
    shuffled = {name: list(reversed(images)) for name, images in reversed(pool().items())}
    assert assign(shuffled, config) == first
    assert assign(pool(), replace(config, seed=4)) != first


def test_every_image_is_on_one_side_in_the_requested_shares_per_stratum():
    splits = assign(pool(), SplitConfig(val=0.1, test=0.2))
    assert len(splits) == 540  # one entry per image: its faces cannot be on two sides
    rare = Counter(s for (src, path), s in splits.items() if path.startswith("r"))
    assert rare == {Split.TRAIN: 28, Split.TEST: 8, Split.VAL: 4}  # improper images in every split
    faces = Counter(s for (src, _), s in splits.items() if src == "faces")
    assert faces == {Split.TRAIN: 210, Split.TEST: 60, Split.VAL: 30}


def test_manifest_round_trips_and_its_hash_tracks_content(tmp_path: Path):
    images = pool()
    rows = manifest_rows(images, assign(images, SplitConfig()))
    path = tmp_path / "manifest.csv.gz"
    write_manifest(path, rows)
    assert read_manifest(path) == rows
    first_bytes = path.read_bytes()
    write_manifest(path, rows)
    assert path.read_bytes() == first_bytes  # reproducible bytes: reproducible card sha256
    assert rows[0].labels in {"with_mask:1 without_mask:1", "with_mask:1 improper_mask:1", "without_mask:1"}
    changed = [replace(rows[0], sha256="other"), *rows[1:]]
    assert data_hash(changed) != data_hash(rows)
    assert data_hash(list(reversed(rows))) == data_hash(rows)


def test_another_source_can_move_images_of_several_labels_and_leaves_single_label_sources_alone():
    """What the module docstring says the split depends on: which label is rarest is counted over
    every source of the run, so adding one can re-split a source whose images hold several labels
    (the shipped model's split was made this way and is kept), never one whose images hold one."""
    W, B = Label.WITH_MASK, Label.WITHOUT_MASK
    mixed = [image(f"s{i}.jpg", B) for i in range(10)] + [image(f"m{i}.jpg", W, B) for i in range(10)]
    mixed += [image(f"w{i}.jpg", W) for i in range(30)]  # alone: without_mask (20) is rarer than with (40)
    single = [image(f"f{i}.jpg", W) for i in range(20)] + [image(f"g{i}.jpg", B) for i in range(20)]
    bare = [image(f"b{i}.jpg", B) for i in range(100)]  # with it, with_mask is the rarer label
    config = SplitConfig(val=0.2, test=0.2, seed=3)
    alone = assign({"mixed": mixed, "single": single}, config)
    added = assign({"mixed": mixed, "single": single, "bare": bare}, config)
    moved = {key for key, side in alone.items() if added[key] is not side}
    assert {source for source, _ in moved} == {"mixed"}  # never the single-label source
    assert any(path.startswith("m") for _, path in moved)  # its images of two labels changed stratum
