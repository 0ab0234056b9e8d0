"""A reviewed list of wrong source labels: the file format, its clear errors, and where it applies."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from maskgate.cli import main
from maskgate.core import LABELS, Box, Label
from maskgate.crop import CropSpec
from maskgate.training import cropset
from maskgate.training.datasets import DataSpec, scan
from maskgate.training.label_review import COLUMNS, LabelReview, LabelReviewError
from maskgate.training.split import SplitConfig
from maskgate.training.train import load_pool
from tests.training.conftest import DATASETS, make_faces_folder
from tests.training.test_datasets import voc_xml

ROOT = Path(__file__).parents[2]
HEADER = ",".join(COLUMNS)
SPEC = CropSpec(size=32)


def write(path: Path, *rows: str) -> Path:
    path.write_text("\n".join(["# a comment line", HEADER, *rows]) + "\n")
    return path


def grey_voc(root: Path) -> DataSpec:
    """Two scenes of plain grey pixels: a.jpg with two faces, b.jpg with one."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for name in ("a", "b"):
        cv2.imwrite(str(root / "images" / f"{name}.jpg"), np.full((120, 160, 3), 128, np.uint8))
    (root / "annotations" / "a.xml").write_text(
        voc_xml("a.jpg", [("with_mask", (10, 10, 50, 50)), ("without_mask", (80, 20, 120, 60))])
    )
    (root / "annotations" / "b.xml").write_text(voc_xml("b.jpg", [("with_mask", (30, 30, 70, 70))]))
    return DataSpec.parse(str(root))


def test_a_review_file_names_faces_by_image_and_drawn_box(tmp_path: Path):
    review = LabelReview.load(
        write(
            tmp_path / "review.csv",
            "folders/x,with_mask/1.jpg,,improper_mask,mask under the chin",
            "scenes/y,images/a.jpg,10 10 50 50,exclude,box beside the face",
        )
    )
    folder_face, scene_face = review.faces
    assert (folder_face.box, folder_face.label) == (None, Label.IMPROPER_MASK)
    assert (scene_face.box, scene_face.label) == (Box(10, 10, 50, 50), None)
    assert review.of_source("scenes/y") == (scene_face,)
    assert review.to_json() == {"file": "review.csv", "sha256": review.sha256, "faces": 2}
    assert review.cache_tag("folders/x") and review.cache_tag("folders/none") == ""


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["s,a.jpg,,hat,why"], r"review.csv:3: unknown label 'hat' \(choose from .*exclude\)"),
        (["s,a.jpg,1 2 3,with_mask,why"], r"review.csv:3: box '1 2 3' is not four numbers"),
        (["s,a.jpg,,with_mask,"], r"review.csv:3: say why \(a.jpg\)"),
        (["s,a.jpg,,with_mask"], r"review.csv:3: expected 5 fields"),
        (["s,,,with_mask,why"], r"review.csv:3: the source and the image are required"),
        (
            ["s,a.jpg,,with_mask,why", "", "s,a.jpg,,exclude,again"],
            r"review.csv:5: s a.jpg is reviewed twice",
        ),
    ],
)
def test_a_bad_review_line_is_named_with_its_line_number(tmp_path: Path, rows, message):
    with pytest.raises(LabelReviewError, match=message):
        LabelReview.load(write(tmp_path / "review.csv", *rows))


def test_a_spreadsheets_byte_order_mark_is_read_and_an_open_quote_spoils_only_its_line(tmp_path: Path):
    path = tmp_path / "review.csv"
    path.write_bytes(("\ufeff" + HEADER + "\ns,a.jpg,,with_mask,why\n").encode())
    assert len(LabelReview.load(path).faces) == 1
    path.write_text(f'{HEADER}\ns,a.jpg,,with_mask,"why\nit is so"\n')
    with pytest.raises(LabelReviewError, match=r"review.csv:3: expected 5 fields"):
        LabelReview.load(path)


def test_a_review_file_without_its_header_or_at_all_is_a_clear_error(tmp_path: Path):
    (tmp_path / "bad.csv").write_text("image,label\na.jpg,with_mask\n")
    with pytest.raises(
        LabelReviewError, match=r"bad.csv:1: the header must be source,image,box,label,reason"
    ):
        LabelReview.load(tmp_path / "bad.csv")
    with pytest.raises(LabelReviewError, match=r"missing.csv: cannot read the label review"):
        LabelReview.load(tmp_path / "missing.csv")


def test_applying_a_review_relabels_and_excludes_only_the_named_faces(tmp_path: Path, caplog):
    spec = grey_voc(tmp_path / "voc")
    images, _ = scan(spec)
    review = LabelReview.load(
        write(
            tmp_path / "review.csv",
            f"{spec.name},images/a.jpg,80 20 120 60,improper_mask,a mask on the chin",
            f"{spec.name},images/a.jpg,10 10 50 50,exclude,no face in the box",
            f"{spec.name},images/gone.jpg,1 1 9 9,with_mask,a scene since removed",
            "another/source,images/b.jpg,30 30 70 70,exclude,not this source",
        )
    )
    reviewed, counts = review.apply(spec.name, images)
    assert (counts.relabelled, counts.excluded, counts.unmatched) == (1, 1, 1)
    with caplog.at_level(logging.WARNING, logger="maskgate.training.label_review"):
        cropset.load_source(spec, SPEC, None, progress=False, review=review)
    assert f"review.csv: 1 reviewed faces of {spec.name} name no face of it" in caplog.text
    by_path = {image.path: image for image in reviewed}
    assert [(f.label, f.box) for f in by_path["images/a.jpg"].faces] == [
        (Label.IMPROPER_MASK, Box(80, 20, 120, 60))
    ]
    untouched = next(image for image in images if image.path == "images/b.jpg")
    assert by_path["images/b.jpg"] is untouched  # the other source's row does not apply here
    original = next(image for image in images if image.path == "images/a.jpg")
    assert original.faces[0].label is Label.WITH_MASK  # the scanned images themselves are not changed


def test_reviewed_crops_carry_the_corrected_labels_and_never_come_stale_from_the_cache(tmp_path: Path):
    spec = grey_voc(tmp_path / "voc")
    cache = tmp_path / "cache"
    review = LabelReview.load(
        write(tmp_path / "review.csv", f"{spec.name},images/b.jpg,30 30 70 70,without_mask,bare face")
    )
    plain, report, _ = cropset.load_source(spec, SPEC, cache, progress=False)
    reviewed, reviewed_report, scanned = cropset.load_source(spec, SPEC, cache, progress=False, review=review)
    again, _, _ = cropset.load_source(spec, SPEC, cache, progress=False)
    cached, cached_report, _ = cropset.load_source(spec, SPEC, cache, progress=False, review=review)
    assert (
        np.array_equal(cached.labels, reviewed.labels)
        and cached_report.to_json() == reviewed_report.to_json()
    )
    assert len(list(cache.glob("*.npz"))) == 2  # one set of crops per labelling
    with_mask, without = LABELS.index(Label.WITH_MASK), LABELS.index(Label.WITHOUT_MASK)
    assert sorted(plain.labels.tolist()) == sorted(again.labels.tolist()) == [with_mask, with_mask, without]
    assert sorted(reviewed.labels.tolist()) == [with_mask, without, without]
    assert (reviewed_report.relabelled, report.relabelled) == (1, 0)
    assert "1 relabelled by the label review" in reviewed_report.summary()
    # the images handed back for the split keep the source's own labels
    b = next(image for image in scanned if image.path == "images/b.jpg")
    assert b.faces[0].label is Label.WITH_MASK


def test_the_split_is_the_sources_own_whatever_the_review_says(tmp_path: Path):
    if not (DATASETS / "folders" / "chandrikadeb7").is_dir():
        pytest.skip(f"shared datasets not found at {DATASETS} (set MASKGATE_TEST_DATASETS)")
    source = make_faces_folder(tmp_path / "faces", per_class=8)
    spec = DataSpec.parse(str(source))
    moved = sorted(p.relative_to(source).as_posix() for p in (source / "with_mask").iterdir())[:3]
    review = LabelReview.load(
        write(tmp_path / "review.csv", *(f"{spec.name},{path},,without_mask,looked bare" for path in moved))
    )
    split = SplitConfig(val=0.25, test=0.25, seed=3)
    plain = load_pool([spec], SPEC, split, None, progress=False)
    reviewed = load_pool([spec], SPEC, split, None, progress=False, review=review)
    assert reviewed.rows == plain.rows  # manifest: same images, labels and sides
    assert np.array_equal(reviewed.splits, plain.splits)
    changed = plain.crops.labels != reviewed.crops.labels
    assert int(changed.sum()) == 3 and set(reviewed.crops.images[changed]) == set(moved)


@pytest.mark.slow
def test_evaluate_measures_against_the_reviewed_labels(tiny_model: Path, tmp_path: Path, capsys):
    import json

    faces = tiny_model.parent / "faces"
    spec = DataSpec.parse(str(faces))
    images, _ = scan(spec)
    bare = next(image.path for image in images if image.path.startswith("without_mask/"))
    review = write(
        tmp_path / "review.csv",
        f"{spec.name},{bare},,with_mask,masked after all",
        "folders/elsewhere,with_mask/1.jpg,,without_mask,a source not evaluated here",
    )
    out = tmp_path / "report.json"
    argv = [
        "evaluate",
        "--model",
        str(tiny_model),
        "--data",
        str(faces),
        "--quiet",
        "--cache",
        str(tmp_path / "c"),
    ]
    assert main([*argv, "--json", str(out)]) == 0
    plain = json.loads(out.read_text())
    assert main([*argv, "--json", str(out), "--label-review", str(review)]) == 0
    assert "rows for sources not in --data, not applied: folders/elsewhere" in capsys.readouterr().err
    reviewed = json.loads(out.read_text())
    assert plain["label_review"] is None and reviewed["label_review"]["faces"] == 2
    support = [r["bands"]["all"]["per_class"]["with_mask"]["support"] for r in (plain, reviewed)]
    assert support[1] == support[0] + 1
    assert reviewed["data"][0]["relabelled"] == 1
    (tmp_path / "broken.csv").write_text(f"{HEADER}\n{spec.name},{bare},,hat,why\n")
    assert main([*argv, "--label-review", str(tmp_path / "broken.csv")]) == 2
    assert "broken.csv:2: unknown label 'hat'" in capsys.readouterr().err


@pytest.mark.slow
def test_scenes_are_measured_against_the_reviewed_annotations(tiny_model: Path, tmp_path: Path):
    from types import SimpleNamespace

    from maskgate.config import DetectorConfig
    from maskgate.training import evaluate

    spec = grey_voc(tmp_path / "voc")
    review = LabelReview.load(
        write(
            tmp_path / "review.csv",
            f"{spec.name},images/a.jpg,80 20 120 60,improper_mask,a mask on the chin",
            f"{spec.name},images/b.jpg,30 30 70 70,exclude,no face in the box",
        )
    )
    nothing = SimpleNamespace(detect=lambda _image: [])
    truth = {}
    for applied in (None, review):
        report = evaluate.evaluate_scenes(
            tiny_model, [spec], "all", DetectorConfig(), progress=False, detector=nothing, review=applied
        )
        truth[applied is not None] = report["bands"]["all"]["ground_truth"]
        assert report["label_review"] == (review.to_json() if applied else None)
    assert truth[False] == {"with_mask": 2, "without_mask": 1, "improper_mask": 0}
    assert truth[True] == {"with_mask": 1, "without_mask": 0, "improper_mask": 1}
    assert (report["data"][0]["relabelled"], report["data"][0]["excluded"]) == (1, 1)


def test_the_projects_review_names_faces_that_are_in_the_shared_datasets():
    """Every row of training/label_review.csv still names a face of its source, with the label it
    had when it was reviewed changed (a stale row would silently correct nothing)."""
    if not (DATASETS / "scenes" / "fmd").is_dir():
        pytest.skip(f"shared datasets not found at {DATASETS} (set MASKGATE_TEST_DATASETS)")
    review = LabelReview.load(ROOT / "training" / "label_review.csv")
    layouts = {"folders/comp6721": ":photos"}
    for source in sorted({face.source for face in review.faces}):
        spec = DataSpec.parse(source + layouts.get(source, ""), DATASETS)
        images, _ = scan(spec)
        _, counts = review.apply(source, images)
        named = review.of_source(source)
        assert counts.unmatched == 0, source
        assert counts.relabelled + counts.excluded == len(named), source
