"""The three dataset layouts on real samples, and the VOC quirks on XML the tests write."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from maskgate.core import LABELS, Box, Face, Label
from maskgate.crop import CropSpec, crop_face
from maskgate.training import cropset
from maskgate.training.datasets import (
    DataSpec,
    DataSpecError,
    Layout,
    is_non_commercial,
    licence_of,
    parse_voc,
    resolve_voc_image,
    scan,
)
from tests.training.conftest import make_faces_folder, sample_files

SPEC = CropSpec(size=32)


# -- data specs ------------------------------------------------------------------------------------


def test_spec_guesses_layout_and_finds_relative_paths_under_the_datasets_root(datasets: Path):
    voc = DataSpec.parse("scenes/fmd", datasets)
    assert (voc.layout, voc.name) == (Layout.VOC, "scenes/fmd")
    faces = DataSpec.parse("folders/chandrikadeb7", datasets)
    assert faces.layout is Layout.FACES
    photos = DataSpec.parse("folders/comp6721:photos", datasets)
    assert (photos.layout, str(photos)) == (Layout.PHOTOS, "folders/comp6721:photos")


def test_spec_errors_name_the_problem(tmp_path: Path):
    with pytest.raises(DataSpecError, match="no such folder"):
        DataSpec.parse("nowhere", tmp_path)
    with pytest.raises(DataSpecError, match="unknown layout 'coco'"):
        DataSpec.parse(f"{tmp_path}:coco")


def test_licences_come_from_the_datasets_readme(datasets: Path):
    fmd = DataSpec.parse("scenes/fmd", datasets)
    assert licence_of(fmd, datasets) == "CC0 1.0"
    nc = DataSpec.parse("noncommercial/maskedfacenet", datasets)
    assert is_non_commercial(nc, licence_of(nc, datasets))
    assert not is_non_commercial(fmd, licence_of(fmd, datasets))


# -- folder per class of face photos ---------------------------------------------------------------


def test_faces_layout_crops_whole_photos_and_counts_bad_input(datasets: Path, tmp_path: Path):
    root = make_faces_folder(tmp_path / "faces", per_class=3)
    (root / "with_mask" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (root / "sunglasses").mkdir()
    shutil.copy(
        sample_files(datasets / "folders/chandrikadeb7/without_mask", 1)[0], root / "sunglasses/a.jpg"
    )
    spec = DataSpec.parse(str(root))
    images, report = scan(spec)
    crops = cropset.extract(spec, images, report, SPEC, progress=False)
    assert crops.counts() == {"with_mask": 3, "without_mask": 3, "improper_mask": 3}
    assert crops.crops.shape == (9, 32, 32, 3) and crops.crops.dtype == np.uint8
    assert report.unreadable == ["with_mask/broken.jpg"]
    assert report.unknown_labels == {"sunglasses": 1}
    assert "1 unreadable" in report.summary() and "sunglasses" in report.summary()
    # The photo is the face: its largest centred square, no margin, by the shared crop function.
    for index in range(len(crops)):
        photo = cv2.cvtColor(cv2.imread(str(root / crops.images[index])), cv2.COLOR_BGR2RGB)
        h, w = photo.shape[:2]
        side = min(h, w)
        box = Box((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
        assert np.array_equal(crops.crops[index], crop_face(photo, box, CropSpec(size=32, margin=0.0)))
        assert crops.sides[index] == side


# -- image-level photos: the detector finds the face ----------------------------------------------


class FakeDetector:
    """Returns prepared faces per call, so the largest-face rule and misses can be checked."""

    def __init__(self, answers: list[list[Face]]):
        self.answers = list(answers)

    def __call__(self, image: np.ndarray) -> list[Face]:
        return self.answers.pop(0)


def test_photos_layout_takes_the_largest_face_and_counts_photos_without_one(datasets: Path, tmp_path: Path):
    root = tmp_path / "photos"
    (root / "with_mask").mkdir(parents=True)
    for file in sample_files(datasets / "folders/comp6721/with_mask", 2):
        shutil.copy(file, root / "with_mask" / file.name)
    spec = DataSpec.parse(f"{root}:photos")
    images, report = scan(spec)
    small, large = Face(Box(0, 0, 20, 20), 0.99), Face(Box(10, 10, 70, 80), 0.95)
    locate = cropset.largest_face_locator(FakeDetector([[small, large], []]))
    crops = cropset.extract(spec, images, report, SPEC, locate, progress=False)
    assert len(crops) == 1 and crops.sides[0] == 70
    image = cv2.cvtColor(cv2.imread(str(root / images[0].path)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(crops.crops[0], crop_face(image, large.box, SPEC))
    assert report.no_face == [images[1].path]
    assert "1 photos without a detected face" in report.summary()


def test_photos_are_cut_around_the_face_box_to_crop():
    """A face a detector locates by one box and crops around another (the tuned nets beside the
    stock nets) is cut as the gate cuts it, and the largest is judged by that box too."""
    image = np.zeros((120, 160, 3), np.uint8)
    wide = Face(Box(0, 0, 100, 100), 0.99, crop_box=Box(10, 10, 40, 40))  # located large, crops small
    other = Face(Box(50, 50, 100, 100), 0.95)
    locate = cropset.largest_face_locator(FakeDetector([[wide, other]]))
    assert locate(None, image) == other.box
    locate = cropset.largest_face_locator(FakeDetector([[wide]]))
    assert locate(None, image) == wide.crop_box


def test_photos_layout_needs_a_detector(datasets: Path, tmp_path: Path):
    spec = DataSpec(tmp_path, Layout.PHOTOS, "x")
    with pytest.raises(ValueError, match="detector"):
        cropset.extract(spec, [], scan_report(spec), SPEC)


def scan_report(spec: DataSpec):
    from maskgate.training.datasets import SourceReport

    return SourceReport(spec.name, spec.layout.value)


@pytest.mark.slow
def test_photos_are_cropped_around_the_gates_calibrated_boxes(datasets: Path, tmp_path: Path):
    """With the gate's box calibration on, a photo's crop is made around the calibrated box of
    its largest face, and the detection memo and crop cache keep the two settings apart."""
    from maskgate.config import DetectorConfig
    from maskgate.crop import crop_face
    from maskgate.gate.detector import DEFAULT_DETECTOR_DIR, box_calibration
    from maskgate.gate.mtcnn_litert import LiteRtMtcnnDetector

    root = tmp_path / "photos"
    (root / "without_mask").mkdir(parents=True)
    (photo,) = sample_files(datasets / "folders/comp6721/without_mask", 1)
    shutil.copy(photo, root / "without_mask" / photo.name)
    spec = DataSpec.parse(f"{root}:photos")
    gate = DetectorConfig(box_calibration=True, min_face_size=40)
    config = cropset.photo_detector_config(gate)
    assert config.box_calibration and config.min_face_size == cropset.PHOTO_MIN_FACE
    raw_config = cropset.photo_detector_config(DetectorConfig(box_calibration=False))
    assert cropset.detector_id(config) != cropset.detector_id(raw_config)
    # Other weights under the same folder name are another detector.
    folder = tmp_path / "det"
    shutil.copytree(DEFAULT_DETECTOR_DIR, folder)
    retrained = replace(raw_config, model=str(folder))
    before = cropset.detector_id(retrained)
    card = json.loads((folder / "card.json").read_text())
    card["files"]["onet.tflite"] = "0" * 64
    (folder / "card.json").write_text(json.dumps(card))
    assert cropset.detector_id(retrained) != before
    # Beside the stock nets, the stock weights are part of what finds the faces too.
    paired = replace(retrained, with_stock=True)
    paired_record = json.loads(cropset.detector_id(paired))
    assert paired_record["stock_weights"] == json.loads(before)["weights"]
    assert paired_record["stock_calibration"] == box_calibration(replace(paired, model="")).to_json()
    stricter_stock = replace(paired, stock_thresholds=(0.5, 0.7, 0.8))
    assert cropset.detector_id(stricter_stock) != cropset.detector_id(paired)
    # Unpaired, the pairing settings are left out: cards and caches made before they existed match.
    assert not {"with_stock", "stock_check", "stock_thresholds"} & set(json.loads(before))
    assert cropset.detector_id(replace(retrained, stock_check=0.9)) == cropset.detector_id(retrained)
    assert cropset.detector_id(replace(retrained, stock_thresholds=(0.5, 0.7, 0.8))) == cropset.detector_id(
        retrained
    )
    crops, _, _ = cropset.load_source(
        spec, SPEC, tmp_path / "cache", cropset.detector_factory(config), cropset.detector_id(config), False
    )
    image = cropset.read_rgb(root / "without_mask" / photo.name)
    face = cropset.largest_face(LiteRtMtcnnDetector(config).detect(image))
    assert np.array_equal(crops.crops[0], crop_face(image, face.box, SPEC, box_calibration(config)))
    raw, _, _ = cropset.load_source(
        spec,
        SPEC,
        tmp_path / "cache",
        cropset.detector_factory(raw_config),
        cropset.detector_id(raw_config),
        False,
    )
    assert np.array_equal(raw.crops[0], crop_face(image, face.box, SPEC))


@pytest.mark.slow
def test_photos_layout_with_the_gates_mtcnn_on_real_photos(datasets: Path, tmp_path: Path):
    root = tmp_path / "photos"
    (root / "without_mask").mkdir(parents=True)
    for file in sample_files(datasets / "folders/comp6721/without_mask", 3):
        shutil.copy(file, root / "without_mask" / file.name)
    spec = DataSpec.parse(f"{root}:photos")
    crops, report, _ = cropset.load_source(
        spec, SPEC, None, cropset.detector_factory(cropset.photo_detector_config()), progress=False
    )
    assert len(crops) + len(report.no_face) == 3
    assert len(crops) >= 2  # plain faces in portraits: MTCNN finds them
    assert set(crops.labels.tolist()) == {LABELS.index(Label.WITHOUT_MASK)}


# -- PASCAL VOC and its quirks -----------------------------------------------------------------------


def voc_xml(filename: str, objects: list[tuple[str, tuple[float, float, float, float]]]) -> str:
    body = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b in objects
    )
    return f"<annotation><folder>images</folder><filename>{filename}</filename>{body}</annotation>"


@pytest.fixture
def voc_source(datasets: Path, tmp_path: Path) -> Path:
    """Two real fmd scenes under new names, with annotations written here to exercise the quirks."""
    root = tmp_path / "voc"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    fmd = datasets / "scenes/fmd/images"
    shutil.copy(fmd / "maksssksksss0.jpg", root / "images/scene_a.jpg")
    shutil.copy(fmd / "maksssksksss1.jpg", root / "images/scene_b.JPEG")
    # <filename> names a file that does not exist: fall back to the annotation's own name.
    (root / "annotations/scene_a.xml").write_text(
        voc_xml(
            "IMG_0001.png",
            [
                ("with_mask", (185, 100, 226, 144)),
                ("Mask_Weared_Incorrect", (-10, -5, 30, 40)),  # alias, any case; leaves the image
                ("WITH_IMPROPER_MASK", (490, 300, 600, 420)),  # leaves on the right and bottom
                ("hat", (10, 10, 50, 50)),  # unknown label
                ("without_mask", (900, 900, 950, 950)),  # entirely outside the 512x366 image
            ],
        )
    )
    (root / "annotations/scene_b.xml").write_text(
        voc_xml("scene_b.jpg", [("without_mask", (10, 10, 60, 70))])
    )
    (root / "annotations/orphan.xml").write_text(voc_xml("orphan.jpg", [("with_mask", (1, 1, 9, 9))]))
    (root / "annotations/broken.xml").write_text("<annotation><object>")
    return root


def test_voc_quirks_are_tolerated_and_counted(voc_source: Path):
    spec = DataSpec.parse(str(voc_source))
    assert spec.layout is Layout.VOC
    images, report = scan(spec)
    assert sorted(i.path for i in images) == ["images/scene_a.jpg", "images/scene_b.JPEG"]
    assert report.missing_images == ["orphan.xml"]
    assert len(report.bad_annotations) == 1 and "broken.xml" in report.bad_annotations[0]
    assert report.unknown_labels == {"hat": 1}
    crops = cropset.extract(spec, images, report, SPEC, progress=False)
    assert report.empty_boxes == 1  # the box outside the image
    assert crops.counts() == {"with_mask": 1, "without_mask": 1, "improper_mask": 2}
    # Sizes are measured on the clipped box: (-10,-5,30,40) -> 30x40, (490,300,600,420) -> 22x66
    # in the 512x366 image; the others are 41x44 and 50x60.
    assert sorted(crops.sides.tolist()) == [40.0, 44.0, 60.0, 66.0]
    # A face at the border is padded by the shared crop function, not shifted.
    image = cv2.cvtColor(cv2.imread(str(voc_source / "images/scene_a.jpg")), cv2.COLOR_BGR2RGB)
    index = next(i for i, s in enumerate(crops.sides) if s == 40.0)
    assert np.array_equal(crops.crops[index], crop_face(image, Box(-10, -5, 30, 40), SPEC))


def test_voc_parse_and_filename_fallback(tmp_path: Path):
    annotation = parse_voc(voc_xml("a/b\\c.jpg", [("with_mask", (1, 2, 3, 4))]).encode())
    assert annotation.objects == (("with_mask", Box(1, 2, 3, 4)),)
    (tmp_path / "c.jpg").write_bytes(b"x")
    (tmp_path / "stem.png").write_bytes(b"x")
    assert resolve_voc_image(tmp_path, "a/b\\c.jpg", "zzz") == tmp_path / "c.jpg"
    assert resolve_voc_image(tmp_path, "other.jpg", "stem") == tmp_path / "stem.png"
    assert resolve_voc_image(tmp_path, "other.jpg", "none") is None
    with pytest.raises(ValueError, match="incomplete"):
        parse_voc(b"<annotation><object><name>x</name><bndbox><xmin>1</xmin></bndbox></object></annotation>")


def test_crops_are_cached_by_content(voc_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    spec = DataSpec.parse(str(voc_source))
    cache = tmp_path / "cache"
    first, report, _ = cropset.load_source(spec, SPEC, cache, progress=False)
    assert len(list(cache.glob("*.npz"))) == 1

    def no_extraction(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(cropset, "extract", no_extraction)
    again, report_again, _ = cropset.load_source(spec, SPEC, cache, progress=False)
    assert np.array_equal(first.crops, again.crops) and report_again.to_json() == report.to_json()
    monkeypatch.undo()
    # Another box in an annotation is other data: a new key, a new extraction.
    xml = voc_source / "annotations/scene_b.xml"
    xml.write_text(voc_xml("scene_b.jpg", [("without_mask", (10, 10, 60, 80))]))
    cropset.load_source(spec, SPEC, cache, progress=False)
    assert len(list(cache.glob("*.npz"))) == 2


def test_detections_are_remembered_per_photo_and_the_detector_built_only_on_a_miss(
    datasets: Path, tmp_path: Path
):
    root = tmp_path / "photos"
    (root / "with_mask").mkdir(parents=True)
    for file in sample_files(datasets / "folders/comp6721/with_mask", 2):
        shutil.copy(file, root / "with_mask" / file.name)
    spec = DataSpec.parse(f"{root}:photos")
    images, _ = scan(spec)
    built = []

    def factory():
        built.append(1)
        return FakeDetector([[Face(Box(5, 5, 45, 50), 0.9)], []])

    memo = cropset.DetectionMemo(tmp_path / "memo.json", factory)
    first = cropset.extract(spec, images, scan_report(spec), SPEC, memo, progress=False)
    memo.save()
    again = cropset.DetectionMemo(tmp_path / "memo.json", lambda: pytest.fail("detector built again"))
    report = scan_report(spec)
    second = cropset.extract(spec, images, report, SPEC, again, progress=False)
    assert built == [1] and len(first) == len(second) == 1 and len(report.no_face) == 1
    assert np.array_equal(first.crops, second.crops)


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e999", "Infinity"])
def test_a_voc_box_that_is_not_finite_is_a_bad_annotation_and_the_rest_is_used(voc_source: Path, value: str):
    """`<xmax>inf</xmax>` used to reach the crop function and crash `evaluate`; it is reported
    among the bad annotations like any other XML that cannot be used."""
    (voc_source / "annotations/scene_b.xml").write_text(
        voc_xml("scene_b.jpg", [("without_mask", (10, 10, 60, 70))]).replace(
            "<xmax>60</xmax>", f"<xmax>{value}</xmax>"
        )
    )
    with pytest.raises(ValueError, match="non-finite coordinate"):
        parse_voc((voc_source / "annotations/scene_b.xml").read_bytes())
    spec = DataSpec.parse(str(voc_source))
    images, report = scan(spec)
    assert [i.path for i in images] == ["images/scene_a.jpg"]
    bad = sorted(report.bad_annotations)
    assert len(bad) == 2 and bad[1].startswith("scene_b.xml: object 'without_mask': non-finite coordinate")
    assert "2 bad annotations" in report.summary()
    crops = cropset.extract(spec, images, report, SPEC, progress=False)
    assert len(crops) == 3  # scene_a's faces inside the image, as before


def test_a_voc_box_of_a_billion_pixels_is_cropped_inside_the_image(voc_source: Path):
    """Finite but absurd: the crop function cuts its part inside the image, not a padded square of
    1e9 px a side (cv2 "Insufficient memory")."""
    (voc_source / "annotations/scene_b.xml").write_text(
        voc_xml("scene_b.jpg", [("without_mask", (10, 10, 1e9, 1e9))])
    )
    spec = DataSpec.parse(str(voc_source))
    images, report = scan(spec)
    (scene_b,) = [image for image in images if image.path == "images/scene_b.JPEG"]
    crops = cropset.extract(spec, [scene_b], report, SPEC, progress=False)
    image = cropset.read_rgb(voc_source / scene_b.path)
    height, width = image.shape[:2]
    assert len(crops) == 1 and crops.sides[0] == max(width - 10, height - 10)
    assert np.array_equal(crops.crops[0], crop_face(image, Box(10, 10, width, height), SPEC))


# -- files that cannot be read ---------------------------------------------------------------------


def make_unreadable(path: Path) -> None:
    """Make the file at `path` (named like an image or an annotation) fail to read: no permission,
    or where permissions do not bind (root) a link to /proc/self/mem, whose first page read fails
    with an I/O error. Either way an OSError, as a real unreadable file gives."""
    path.chmod(0)
    try:
        path.read_bytes()
    except PermissionError:
        return
    path.unlink()
    path.symlink_to("/proc/self/mem")
    try:
        path.read_bytes()
    except OSError:
        return
    pytest.skip("cannot make an unreadable file here")


def test_an_image_that_cannot_be_read_is_counted_not_a_crash(datasets: Path, tmp_path: Path):
    root = make_faces_folder(tmp_path / "faces", per_class=2)
    victim = sorted((root / "without_mask").iterdir())[0]
    make_unreadable(victim)
    spec = DataSpec.parse(str(root))
    images, report = scan(spec)
    assert report.unreadable == [f"without_mask/{victim.name}"]
    assert len(images) == 5 and f"without_mask/{victim.name}" not in {i.path for i in images}
    crops = cropset.extract(spec, images, report, SPEC, progress=False)
    assert crops.counts() == {"with_mask": 2, "without_mask": 1, "improper_mask": 2}
    assert report.images == 5 and "1 unreadable" in report.summary()
    assert cropset.read_rgb(victim) is None


def test_a_voc_image_or_annotation_that_cannot_be_read_is_counted_not_a_crash(voc_source: Path):
    make_unreadable(voc_source / "images/scene_b.JPEG")
    spec = DataSpec.parse(str(voc_source))
    images, report = scan(spec)
    assert [i.path for i in images] == ["images/scene_a.jpg"]
    assert report.unreadable == ["images/scene_b.JPEG"]
    make_unreadable(voc_source / "annotations/scene_a.xml")
    images, report = scan(spec)
    assert images == [] and report.unreadable == ["images/scene_b.JPEG"]
    assert any(bad.startswith("scene_a.xml: cannot be read") for bad in report.bad_annotations)
