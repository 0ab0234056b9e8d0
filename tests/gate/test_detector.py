"""Face detectors on real images: the mtcnn pyramid trap is fixed, and the LiteRT MTCNN finds the
same faces as the reference."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.data import astronaut

from maskgate.config import DetectorConfig
from maskgate.core import Box, Face
from maskgate.crop import BoxCalibration
from maskgate.gate.detector import (
    DEFAULT_DETECTOR_DIR,
    CalibratedDetector,
    InvalidFrameError,
    MtcnnDetector,
    StockFirstDetector,
    box_calibration,
    scale_pyramid,
)
from maskgate.gate.mtcnn_litert import LiteRtMtcnnDetector, nms
from maskgate.modelcard import ModelFileError

ROOT = Path(__file__).parents[2]
DATASETS = Path(os.environ.get("MASKGATE_TEST_DATASETS", ROOT.parent / "shared" / "datasets"))


@pytest.fixture(scope="module")
def door_frame() -> np.ndarray:
    """A 640x480 frame with one real face about 65 px wide, as a camera at a door sees it."""
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[90:390, 170:470] = cv2.resize(astronaut(), (300, 300), interpolation=cv2.INTER_AREA)
    return frame


@pytest.fixture(scope="module")
def reference() -> MtcnnDetector:
    return MtcnnDetector(DetectorConfig(min_face_size=20))


@pytest.fixture(scope="module")
def litert() -> LiteRtMtcnnDetector:
    return LiteRtMtcnnDetector(DetectorConfig(min_face_size=20))


def test_the_stock_pyramid_trap_exists(door_frame):
    """Documents the bug being fixed: stock mtcnn finds nothing with min_face_size 40 (older Keras
    lets the package swallow the failed convolution and return no faces; Keras 3.15 raises)."""
    from mtcnn import MTCNN
    from mtcnn.stages import stage_pnet
    from mtcnn.utils.images import build_scale_pyramid

    fixed, stage_pnet.build_scale_pyramid = stage_pnet.build_scale_pyramid, build_scale_pyramid
    try:
        try:
            found = MTCNN().detect_faces(door_frame, min_face_size=40)
        except ValueError as exc:
            assert "Conv2D" in str(exc)  # the pyramid level below PNet's window
            found = []
        assert found == []
    finally:
        stage_pnet.build_scale_pyramid = fixed


@pytest.mark.parametrize("detector_class", [MtcnnDetector, LiteRtMtcnnDetector])
@pytest.mark.parametrize("min_face_size", [40, 60, 80])
def test_faces_are_found_with_large_minimum_sizes(door_frame, detector_class, min_face_size):
    faces = detector_class(DetectorConfig(min_face_size=min_face_size)).detect(door_frame)
    assert len(faces) == 1
    face = faces[0]
    assert 170 < face.box.x1 < face.box.x2 < 470 and face.score > 0.95
    assert set(face.landmarks) == {"left_eye", "right_eye", "nose", "mouth_left", "mouth_right"}
    assert face.box.x1 < face.landmarks["nose"][0] < face.box.x2


def test_pyramid_levels_never_shrink_below_pnet_window():
    for min_face_size in (12, 20, 40, 80, 200):
        scales = scale_pyramid(640, 480, min_face_size, 0.709)
        assert scales and min(scales) * 480 >= 12
        assert scales[0] == pytest.approx(12 / min_face_size)


def test_working_width_maps_boxes_back_to_the_frame(door_frame):
    big = cv2.resize(door_frame, (1280, 960))
    faces = LiteRtMtcnnDetector(DetectorConfig(min_face_size=40, working_width=640)).detect(big)
    assert len(faces) == 1 and 340 < faces[0].box.x1 < 940


GARBAGE = [np.zeros((480, 640), np.uint8), np.zeros((480, 640, 3), np.float64), np.zeros((4, 4, 3), np.uint8)]


@pytest.mark.parametrize("detector_class", [MtcnnDetector, LiteRtMtcnnDetector])
@pytest.mark.parametrize("image", [*GARBAGE, None], ids=["grey", "float", "tiny", "none"])
def test_garbage_is_refused_clearly(detector_class, image):
    with pytest.raises(InvalidFrameError):
        detector_class(DetectorConfig()).detect(image)


def test_blank_frames_have_no_faces(litert):
    assert litert.detect(np.zeros((480, 640, 3), np.uint8)) == []


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10, 0.9], [1, 1, 11, 11, 0.8], [50, 50, 60, 60, 0.7]], np.float32)
    assert nms(boxes, 0.5).tolist() == [0, 2]
    assert nms(boxes, 0.9).tolist() == [0, 1, 2]


def test_an_altered_detector_file_is_refused(tmp_path):
    import shutil

    shutil.copytree(DEFAULT_DETECTOR_DIR, tmp_path / "det")
    (tmp_path / "det" / "onet.tflite").write_bytes(b"junk")
    with pytest.raises(ModelFileError, match=r"onet\.tflite"):
        LiteRtMtcnnDetector(folder=tmp_path / "det")


def real_images(count: int) -> list[Path]:
    scenes = sorted((DATASETS / "scenes" / "fmd" / "images").glob("*.jpg"))
    faces = sorted((DATASETS / "folders" / "chandrikadeb7" / "with_mask").glob("*"))
    if not scenes or not faces:
        pytest.skip(f"shared datasets not found at {DATASETS}")
    return scenes[: count // 2] + faces[: count // 2]


@pytest.mark.slow
@pytest.mark.integration
def test_litert_finds_the_same_faces_as_the_reference(reference, litert):
    mismatched = []
    for path in real_images(40):
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        expected, found = reference.detect(image), litert.detect(image)
        if len(expected) != len(found):
            mismatched.append(path.name)
            continue
        for face in expected:
            assert max(face.box.iou(other.box) for other in found) >= 0.95, path.name
    assert len(mismatched) <= 1, mismatched  # one borderline score near a stage threshold at most


# -- a fine-tuned detector folder (issue #9): selected by detector.model, same faces on both paths --

SHIPPED_MASKED = ROOT / "models" / "detector-masked"


@pytest.fixture(scope="module")
def tuned_folder(tmp_path_factory) -> Path:
    """A folder as train-detector writes it: the shipped one, else stock weights nudged and exported."""
    if (SHIPPED_MASKED / "card.json").is_file():
        return SHIPPED_MASKED
    import joblib

    from maskgate.training.detector_export import export_detector
    from maskgate.training.detector_train import _stage_model

    out = tmp_path_factory.mktemp("tuned")
    rng = np.random.default_rng(0)
    for name in ("pnet", "rnet", "onet"):
        weights = _stage_model(name).get_weights()
        if name != "pnet":  # not the stock nets any more, but still a face detector
            weights = [w + rng.normal(0, 0.002, w.shape).astype(w.dtype) for w in weights]
        joblib.dump(weights, out / f"{name}.joblib")
    export_detector(out, weights={n: out / f"{n}.joblib" for n in ("pnet", "rnet", "onet")})
    return out


@pytest.mark.slow
def test_a_tuned_detector_is_selected_by_config_and_agrees_between_keras_and_tflite(tuned_folder, door_frame):

    from maskgate.config import Config
    from maskgate.gate.build import make_detector

    config = replace(Config(), detector=DetectorConfig(min_face_size=20, model=str(tuned_folder)))
    litert = make_detector(config)
    assert isinstance(litert, LiteRtMtcnnDetector) and litert.folder == tuned_folder
    keras = make_detector(replace(config, detector=replace(config.detector, kind="mtcnn")))
    frames = [door_frame, np.ascontiguousarray(door_frame[:, ::-1])]
    for frame in frames:
        expected, found = keras.detect(frame), litert.detect(frame)
        assert len(expected) == len(found) == 1
        assert found[0].box.iou(expected[0].box) >= 0.99
        assert found[0].score == pytest.approx(expected[0].score, abs=1e-3)
        assert set(found[0].landmarks) == set(LANDMARK_KEYS)


class FixedFaces:
    """A detector that finds the same faces in every image."""

    def __init__(self, *faces: Face):
        self.faces = faces

    def detect(self, image: np.ndarray) -> list[Face]:
        return list(self.faces)


def test_with_stock_keeps_the_stock_faces_and_adds_only_the_faces_stock_misses():
    tuned_calibration = BoxCalibration(dx=0.02)
    stock_calibration = BoxCalibration(dx=0.05, dy=0.156, width_scale=1.07, height_scale=0.952)
    stock_face = Face(Box(100, 100, 200, 200), 0.95, {"nose": (150.0, 150.0)})
    same_face = Face(Box(105, 110, 205, 215), 0.999, {})  # the tuned nets' box of it, scored higher
    masked = Face(Box(300, 100, 380, 180), 0.98, {})  # a face the stock nets miss
    masked_again = Face(Box(310, 110, 370, 170), 0.99, {})  # a second, smaller box of that face
    paired = StockFirstDetector(
        FixedFaces(same_face, masked, masked_again),
        FixedFaces(stock_face),
        tuned_calibration,
        stock_calibration,
    )
    found = paired.detect(np.zeros((480, 640, 3), np.uint8))
    assert [face.score for face in found] == [0.999, 0.99]  # a face both find: the surer score
    # Located where the tuned nets box it (they fit masked faces better) ...
    assert found[0].box == same_face.box
    # ... but the gate, calibrating as the tuned folder says, must crop the stock face where the
    # stock calibration puts it, since the shipped classifier learned from those crops.
    gate_box = tuned_calibration.apply(found[0].box_to_crop)
    stock_box = stock_calibration.apply(stock_face.box)
    assert gate_box.center == pytest.approx(stock_box.center)
    assert (gate_box.width, gate_box.height) == pytest.approx((stock_box.width, stock_box.height))
    assert found[0].landmarks == stock_face.landmarks
    assert found[1] == masked_again  # of two boxes of one face, the better scored
    only_tuned = StockFirstDetector(FixedFaces(masked), FixedFaces(), tuned_calibration, stock_calibration)
    assert only_tuned.detect(np.zeros((480, 640, 3), np.uint8)) == [masked]
    only_stock = StockFirstDetector(
        FixedFaces(), FixedFaces(stock_face), tuned_calibration, stock_calibration
    )
    (alone,) = only_stock.detect(np.zeros((480, 640, 3), np.uint8))
    assert alone.crop_box is None and alone.box_to_crop == alone.box == found[0].box_to_crop


def test_with_stock_a_face_both_find_is_located_by_the_tuned_box_that_fits_it_best():
    stock_face = Face(Box(100, 100, 200, 200), 0.95, {})
    inner = Face(Box(120, 120, 170, 170), 0.999, {})  # inside the stock box, but a poor fit
    fitting = Face(Box(102, 105, 204, 206), 0.97, {})
    paired = StockFirstDetector(
        FixedFaces(inner, fitting), FixedFaces(stock_face), BoxCalibration(), BoxCalibration()
    )
    (found,) = paired.detect(np.zeros((480, 640, 3), np.uint8))
    assert (found.box, found.crop_box, found.score) == (fitting.box, stock_face.box, fitting.score)
    surer_stock = StockFirstDetector(
        FixedFaces(replace(fitting, score=0.9)), FixedFaces(stock_face), BoxCalibration(), BoxCalibration()
    )
    (found,) = surer_stock.detect(np.zeros((480, 640, 3), np.uint8))
    assert found.score == stock_face.score == 0.95
    raw = StockFirstDetector(
        FixedFaces(fitting),
        FixedFaces(stock_face),
        BoxCalibration(dx=0.02),
        BoxCalibration(dy=0.156),
        calibrated=False,
    )
    (found,) = raw.detect(np.zeros((480, 640, 3), np.uint8))
    assert (found.box, found.box_to_crop) == (fitting.box, stock_face.box)  # the stock box raw


def test_with_stock_a_tuned_box_that_does_not_fit_a_stock_face_does_not_move_it():
    blank = np.zeros((480, 640, 3), np.uint8)
    identity = BoxCalibration()
    stock_face = Face(Box(100, 100, 200, 200), 0.95, {})
    part = Face(Box(130, 130, 160, 160), 0.99, {})  # inside the face (a part of it): IoU 0.09
    (found,) = StockFirstDetector(FixedFaces(part), FixedFaces(stock_face), identity, identity).detect(blank)
    assert found == stock_face and found.crop_box is None
    # A larger box around the whole face (IoU 0.48), as the tuned nets box masked faces, does.
    larger = Face(Box(95, 90, 235, 240), 0.99, {})
    loose = StockFirstDetector(FixedFaces(larger), FixedFaces(stock_face), identity, identity)
    (found,) = loose.detect(blank)
    assert (found.box, found.crop_box) == (larger.box, stock_face.box)
    # One box of theirs over a face and the child's face held close to it locates at most one:
    # the face it fits (IoU 0.67), not the small one inside it as well (IoU 0.09).
    adult, child = Face(Box(100, 100, 220, 220), 0.95, {}), Face(Box(150, 150, 195, 195), 0.93, {})
    both = Face(Box(100, 100, 247, 247), 0.99, {})
    paired = StockFirstDetector(FixedFaces(both), FixedFaces(adult, child), identity, identity)
    assert paired.detect(blank) == [replace(adult, box=both.box, crop_box=adult.box, score=both.score), child]


class FixedScores:
    """A second opinion that scores each box by its left edge (x1 < 250: a face); keeps the boxes."""

    def __init__(self):
        self.boxes: list[Box] = []

    def face_scores(self, image: np.ndarray, boxes) -> np.ndarray:
        self.boxes += boxes
        return np.array([0.9 if box.x1 < 250 else 0.1 for box in boxes])


def test_with_stock_a_face_only_the_tuned_nets_find_must_pass_the_stock_check():
    tuned_calibration = BoxCalibration(dx=0.02)
    stock_calibration = BoxCalibration(dx=0.05, dy=0.156, width_scale=1.07, height_scale=0.952)
    masked = Face(Box(200, 100, 280, 180), 0.98, {})
    trees = Face(Box(300, 100, 380, 180), 0.99, {})  # the tuned nets are sure; the stock ONet is not
    tuned, scores = FixedFaces(masked, trees), FixedScores()
    checked = StockFirstDetector(tuned, FixedFaces(), tuned_calibration, stock_calibration, scores, 0.3)
    assert checked.detect(np.zeros((480, 640, 3), np.uint8)) == [masked]
    # The stock ONet is asked about each box in the stock convention: the box the stock
    # calibration maps to where the tuned calibration maps the tuned box.
    assert len(scores.boxes) == 2
    for asked, face in zip(scores.boxes, (masked, trees), strict=True):
        there = stock_calibration.apply(asked)
        assert there.center == pytest.approx(tuned_calibration.apply(face.box).center)
    stock_faces, added, added_scores = checked.stock_and_added(np.zeros((480, 640, 3), np.uint8))
    assert (stock_faces, added, list(added_scores)) == ([], [masked, trees], [0.9, 0.1])
    unchecked = StockFirstDetector(tuned, FixedFaces(), tuned_calibration, stock_calibration, scores, 0.0)
    assert unchecked.detect(np.zeros((480, 640, 3), np.uint8)) == [trees, masked]
    asked = len(scores.boxes)
    _, added, not_scored = unchecked.stock_and_added(np.zeros((480, 640, 3), np.uint8))
    assert added == [masked, trees] and np.isnan(not_scored).all() and len(not_scored) == 2
    assert len(scores.boxes) == asked  # without a check the stock ONet is not run


class ScoresByLeftEdge:
    """A second opinion with a fixed score per box, looked up by its left edge to the nearest 100
    px (the calibrations move a box by a few pixels); keeps the boxes it is asked about."""

    def __init__(self, scores: dict[int, float]):
        self.scores, self.boxes = scores, []

    def face_scores(self, image: np.ndarray, boxes) -> np.ndarray:
        self.boxes += boxes
        return np.array([self.scores[round(box.x1, -2)] for box in boxes])


def test_with_stock_a_face_the_stock_onet_doubts_passes_only_where_the_face_check_vouches_for_it():
    tuned_calibration = BoxCalibration(dx=0.1)
    stock_calibration = BoxCalibration(dx=0.05, dy=0.156, width_scale=1.07, height_scale=0.952)
    sure = Face(Box(0, 100, 60, 160), 0.98, {})
    doubted_face = Face(Box(100, 100, 160, 160), 0.98, {})
    doubted_wall = Face(Box(200, 100, 260, 160), 0.99, {})
    disbelieved = Face(Box(300, 100, 360, 160), 0.99, {})  # the face check alone is not enough
    stock_onet = ScoresByLeftEdge({0: 0.9, 100: 0.1, 200: 0.2, 300: 0.01})
    face_check = ScoresByLeftEdge({100: 0.95, 200: 0.5})
    tuned = FixedFaces(sure, doubted_face, doubted_wall, disbelieved)
    pair = (tuned, FixedFaces(), tuned_calibration, stock_calibration, stock_onet, 0.3)
    paired = StockFirstDetector(*pair, face_check=face_check, face_check_threshold=0.9, face_check_floor=0.05)
    image = np.zeros((480, 640, 3), np.uint8)
    assert sorted(face.box.x1 for face in paired.detect(image)) == [0, 100]
    # Only the faces between the floor and the stock check are put to the face check, in the drawn
    # boxes' convention (where the classifier's crops are cut).
    assert face_check.boxes == [tuned_calibration.apply(face.box) for face in (doubted_face, doubted_wall)]
    assert [face.box.x1 for face in StockFirstDetector(*pair).detect(image)] == [0]
    off = StockFirstDetector(*pair, face_check=face_check, face_check_threshold=0.0, face_check_floor=0.05)
    assert [face.box.x1 for face in off.detect(image)] == [0]  # 0: the net is not asked


def test_the_face_check_is_asked_from_its_floor_up_to_the_stock_check():
    faces = [Face(Box(x, 100, x + 60, 160), 0.99, {}) for x in (0, 100, 200)]
    calibration = BoxCalibration()
    face_check = ScoresByLeftEdge({0: 0.95, 100: 0.95, 200: 0.95})
    scores = np.array([0.05, 0.3, 0.0499])  # at the floor: asked; at the check: passes; under: out
    paired = StockFirstDetector(
        FixedFaces(*faces), FixedFaces(), calibration, calibration, face_check=face_check, stock_check=0.3
    )
    passed = paired.passes_check(np.zeros((240, 320, 3), np.uint8), faces, scores)
    assert list(passed) == [True, True, False]
    assert face_check.boxes == [faces[0].box]


def test_with_stock_a_gate_that_crops_raw_boxes_gets_the_stock_boxes_raw():
    stock_face = Face(Box(100, 100, 200, 200), 0.95, {})
    raw = StockFirstDetector(
        FixedFaces(),
        FixedFaces(stock_face),
        BoxCalibration(dx=0.02),
        BoxCalibration(dy=0.156),
        calibrated=False,
    )
    assert raw.detect(np.zeros((480, 640, 3), np.uint8)) == [stock_face]


@pytest.mark.slow
def test_the_stock_onet_scores_a_face_high_and_a_wall_low_at_any_frame_width(door_frame):
    stock = LiteRtMtcnnDetector(DetectorConfig(min_face_size=20))
    wide = cv2.resize(door_frame, (1280, 960))  # worked at 640 px: boxes must be scaled down
    for frame in (door_frame, wide):
        faces = stock.detect(frame)
        assert len(faces) == 1
        wall = Box(0, 0, frame.shape[1] / 5, frame.shape[0] / 5)
        face_score, wall_score = stock.face_scores(frame, [faces[0].box, wall])
        assert face_score > 0.9 and wall_score < 0.1
        assert stock.face_scores(frame, []).shape == (0,)


@pytest.fixture(scope="module")
def shipped_pair() -> tuple[DetectorConfig, StockFirstDetector]:
    """The shipped tuned nets beside the stock nets, as a gate with `detector.with_stock` builds them."""

    from maskgate.config import Config
    from maskgate.gate.build import make_detector

    config = DetectorConfig(model=str(ROOT / "models" / "detector-masked"), with_stock=True)
    return config, make_detector(replace(Config(), detector=config))


# fmd scenes of the validation split (never trained on; the split stock_check was chosen on) whose
# masked faces of 60 px and more the stock nets miss.
MISSED_BY_STOCK = ["maksssksksss25", "maksssksksss275", "maksssksksss309"]


@pytest.mark.slow
def test_the_masked_detector_beside_the_stock_nets_finds_masked_faces_stock_misses(shipped_pair):
    from maskgate.training.cropset import read_rgb
    from maskgate.training.datasets import parse_voc

    scenes = DATASETS / "scenes" / "fmd"
    if not scenes.is_dir():
        pytest.skip(f"shared dataset {scenes} is not present")
    paired_config, paired = shipped_pair
    stock = LiteRtMtcnnDetector()
    for name in MISSED_BY_STOCK:
        image = read_rgb(scenes / "images" / f"{name}.jpg")
        annotation = parse_voc((scenes / "annotations" / f"{name}.xml").read_bytes())
        faces = [box for label, box in annotation.objects if box.side >= 60 and label != "without_mask"]
        assert faces, name

        def found(detector, config, box, image=image):
            boxes = [box_calibration(config).apply(face.box) for face in detector.detect(image)]
            return any(box.iou(other) >= 0.5 for other in boxes)

        assert not any(found(stock, DetectorConfig(), box) for box in faces), name
        assert all(found(paired, paired_config, box) for box in faces), name


@pytest.mark.slow
def test_the_pair_locates_a_masked_face_by_the_tuned_box_where_the_stock_box_misses_it(shipped_pair):
    """fmd `maksssksksss282` (validation split): both sets of nets find the 82 px masked face, but
    only the tuned nets' box lies on it at IoU >= 0.5; the crop stays the stock box's."""
    from maskgate.training.cropset import read_rgb
    from maskgate.training.datasets import parse_voc

    scenes = DATASETS / "scenes" / "fmd"
    if not scenes.is_dir():
        pytest.skip(f"shared dataset {scenes} is not present")
    config, paired = shipped_pair
    annotation = parse_voc((scenes / "annotations" / "maksssksksss282.xml").read_bytes())
    drawn = max((box for label, box in annotation.objects if label == "with_mask"), key=lambda box: box.side)
    calibration = box_calibration(config)
    (face,) = [
        face
        for face in paired.detect(read_rgb(scenes / "images" / "maksssksksss282.jpg"))
        if calibration.apply(face.box).iou(drawn) >= 0.5
    ]
    assert face.crop_box is not None and calibration.apply(face.crop_box).iou(drawn) < 0.5


@pytest.mark.slow
def test_the_face_check_keeps_a_masked_face_the_stock_onet_doubts(shipped_pair):
    """fmd `maksssksksss670` (validation split): only the tuned nets find the masked face under a
    helmet (drawn 39 px), and the stock ONet scores their box 0.21, under the stock check; the
    shipped face-check net vouches for it, so the pair keeps it. Without it the face is turned away."""
    from maskgate.config import Config
    from maskgate.gate.build import make_detector
    from maskgate.gate.face_check import FaceCheckNet
    from maskgate.training.cropset import read_rgb
    from maskgate.training.datasets import parse_voc

    scenes = DATASETS / "scenes" / "fmd"
    if not scenes.is_dir():
        pytest.skip(f"shared dataset {scenes} is not present")
    config, paired = shipped_pair
    assert isinstance(paired.face_check, FaceCheckNet)
    image = read_rgb(scenes / "images" / "maksssksksss670.jpg")
    annotation = parse_voc((scenes / "annotations" / "maksssksksss670.xml").read_bytes())
    drawn = [box for label, box in annotation.objects if label == "with_mask"]
    calibration = box_calibration(config)

    def found(detector) -> list[Box]:
        boxes = [calibration.apply(face.box) for face in detector.detect(image)]
        return [box for box in drawn if any(box.iou(other) >= 0.5 for other in boxes)]

    without = make_detector(replace(Config(), detector=replace(config, face_check=0)))
    (kept,) = [box for box in found(paired) if box not in found(without)]
    assert 35 <= kept.side <= 45


@pytest.mark.slow
def test_the_tuned_nets_at_a_lower_pnet_threshold_find_a_masked_face_they_miss_at_the_reference_one(
    shipped_pair,
):
    """fmd `maksssksksss89` (validation split): the 29 px masked face is found beside the stock nets
    when the tuned P-net proposes at 0.3 (the mask-aware setting, docs/detector.md), not at 0.6."""
    from maskgate.config import Config
    from maskgate.gate.build import make_detector
    from maskgate.training.cropset import read_rgb
    from maskgate.training.datasets import parse_voc

    scenes = DATASETS / "scenes" / "fmd"
    if not scenes.is_dir():
        pytest.skip(f"shared dataset {scenes} is not present")
    reference_config, reference = shipped_pair
    lower_config = replace(reference_config, thresholds=(0.3, 0.7, 0.8))
    lower = make_detector(replace(Config(), detector=lower_config))
    image = read_rgb(scenes / "images" / "maksssksksss89.jpg")
    annotation = parse_voc((scenes / "annotations" / "maksssksksss89.xml").read_bytes())
    (drawn,) = [box for label, box in annotation.objects if label == "with_mask" and round(box.side) == 29]
    calibration = box_calibration(reference_config)

    def found(detector) -> bool:
        return any(calibration.apply(face.box).iou(drawn) >= 0.5 for face in detector.detect(image))

    assert found(lower) and not found(reference)


@pytest.mark.slow
def test_the_false_faces_the_masked_detector_finds_behind_an_unmasked_man_fail_the_stock_check(
    shipped_pair,
):
    # In gituatu_nomask the tuned nets alone box the trees behind the bearded man as a face, and
    # the classifier calls it masked: the door opened. Those faces score at most 0.011 with the
    # stock ONet; the default check must turn them away with room to spare.
    clip = DATASETS / "videos" / "gituatu_nomask.mp4"
    if not clip.is_file():
        pytest.skip(f"shared clip {clip} is not present")
    paired_config, paired = shipped_pair
    capture = cv2.VideoCapture(str(clip))
    scores = []
    for index in range(1, 97):  # the trees are boxed in frames 33 to 96
        ok, bgr = capture.read()
        assert ok, index
        if index >= 33:
            _, _, added_scores = paired.stock_and_added(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            scores += list(added_scores)
    capture.release()
    assert len(scores) >= 20  # the false faces are there to check
    assert max(scores) < paired_config.stock_check / 2, scores


# Unmasked photos on which the tuned nets alone find a false face of at least 60 px that the
# shipped classifier calls masked, with the stock ONet's score for it (docs/detector.md).
FALSE_MASKED_FACES = [
    ("chandrikadeb7/without_mask/54.jpg", 0.139),
    ("comp6721/without_mask/nomask_images_23.jpg", 0.005),
]


@pytest.mark.slow
@pytest.mark.parametrize(("photo", "measured"), FALSE_MASKED_FACES)
def test_the_default_stock_check_turns_away_false_faces_the_classifier_calls_masked(
    photo, measured, shipped_pair
):
    # A check at 0.05 finds more masked faces (docs/detector.md) but lets the first of these
    # through: beside an unmasked person it would be a second, "masked" track at the door.
    from maskgate.training.cropset import read_rgb

    path = DATASETS / "folders" / photo
    if not path.is_file():
        pytest.skip(f"shared photo {path} is not present")
    paired_config, paired = shipped_pair
    image = read_rgb(path)
    stock_faces, added, scores = paired.stock_and_added(image)
    assert len(added) == 1, added  # the false face, and nothing else the tuned nets add
    [false_face], [score] = added, scores
    assert false_face.box.side >= 60 and score == pytest.approx(measured, abs=0.02)
    assert score < paired_config.stock_check
    assert paired.detect(image) == stock_faces


@pytest.mark.slow
def test_a_check_low_enough_for_more_masked_faces_counts_a_wall_toward_opening_the_door(shipped_pair, caplog):
    """fmd `maksssksksss751` (validation split): beside the stock nets, the tuned nets box a corner
    of the wall and a sign (73 px, tuned score 0.99, stock ONet 0.15) that the shipped classifier
    calls masked at 0.94. The default check turns it away; at 0.05, the check that would meet more
    of issue #9's recall bar (docs/detector.md), it would count toward opening the door."""
    from maskgate.config import Config, PolicyConfig
    from maskgate.gate.build import make_detector
    from maskgate.gate.classifier import MaskClassifier
    from maskgate.gate.policy import DecisionPolicy
    from maskgate.training.cropset import read_rgb
    from maskgate.training.datasets import parse_voc
    from maskgate.training.evaluate import classify_faces

    scenes = DATASETS / "scenes" / "fmd"
    if not scenes.is_dir():
        pytest.skip(f"shared dataset {scenes} is not present")
    config, paired = shipped_pair
    image = read_rgb(scenes / "images" / "maksssksksss751.jpg")
    annotation = parse_voc((scenes / "annotations" / "maksssksksss751.xml").read_bytes())
    drawn = [box for _, box in annotation.objects]
    classifier = MaskClassifier(ROOT / "models" / "default")
    policy = DecisionPolicy(PolicyConfig(), "test")
    calibration = box_calibration(config)

    def faceless_openers(detector) -> list:
        faces = classify_faces(image, detector.detect(image), classifier, calibration)
        return [
            face
            for face, classification in faces
            if policy.counts_to_open(face, classification)
            and all(calibration.apply(face.box).iou(box) < 0.5 for box in drawn)
        ]

    # The default pair asks its face-check net about the wall (the stock ONet's 0.15 is above the
    # net's floor) and the net turns it away.
    assert paired.face_check is not None and paired.face_check_floor < 0.147
    assert faceless_openers(paired) == []
    low_check = make_detector(replace(Config(), detector=replace(config, stock_check=0.05)))
    (wall,) = faceless_openers(low_check)
    assert wall.box.side >= PolicyConfig().min_face_size
    # No check at all lets the wall in too, and the gate says so when it starts.
    caplog.clear()
    with caplog.at_level("WARNING", logger="maskgate.gate.build"):
        unchecked = make_detector(replace(Config(), detector=replace(config, stock_check=0.0)))
    assert "stock_check is 0" in caplog.text and "never asked" not in caplog.text
    assert len(faceless_openers(unchecked)) == 1


@pytest.mark.slow
def test_with_stock_the_gate_crops_the_faces_stock_finds_as_stock_would(tuned_folder, door_frame, caplog):

    from maskgate.config import Config
    from maskgate.gate.build import make_detector

    paired_config = DetectorConfig(min_face_size=20, model=str(tuned_folder), with_stock=True)
    paired = make_detector(replace(Config(), detector=paired_config))
    assert isinstance(paired, StockFirstDetector) and paired.tuned.folder == tuned_folder
    stock_config = DetectorConfig(min_face_size=20)
    stock = LiteRtMtcnnDetector(stock_config)
    two_faces = np.concatenate([door_frame, door_frame[:, ::-1]], axis=1)  # 1280 px, worked at 640
    blank = np.full((480, 640, 3), 90, np.uint8)
    for frame, faces in ((door_frame, 1), (two_faces, 2), (blank, 0)):
        expected, found = stock.detect(frame), paired.detect(frame)
        assert len(found) == len(expected) == faces
        for face, stock_face in zip(found, expected, strict=True):
            gate_box = box_calibration(paired_config).apply(face.box_to_crop)
            assert gate_box.iou(box_calibration(stock_config).apply(stock_face.box)) > 0.999
    # Without a folder there is nothing to pair: the stock nets alone, and the gate says so.
    with caplog.at_level("WARNING", logger="maskgate.gate.build"):
        alone = make_detector(replace(Config(), detector=DetectorConfig(with_stock=True)))
    assert isinstance(alone, LiteRtMtcnnDetector)
    assert "without detector.model" in caplog.text


def test_beside_the_stock_nets_each_set_of_nets_runs_at_its_own_thresholds():
    from maskgate.config import Config
    from maskgate.gate.build import make_detector

    folder = str(ROOT / "models" / "detector-masked")
    tuned_only = (0.3, 0.7, 0.8)
    pair = make_detector(
        replace(Config(), detector=DetectorConfig(model=folder, with_stock=True, thresholds=tuned_only))
    )
    assert pair.tuned.config.thresholds == tuned_only
    assert pair.stock.config.thresholds == DetectorConfig().stock_thresholds == (0.6, 0.7, 0.8)
    assert pair.stock.folder != pair.tuned.folder
    stricter = make_detector(
        replace(
            Config(), detector=DetectorConfig(model=folder, with_stock=True, stock_thresholds=(0.7, 0.7, 0.9))
        )
    )
    assert stricter.stock.config.thresholds == (0.7, 0.7, 0.9)
    assert stricter.tuned.config.thresholds == DetectorConfig().thresholds
    # Alone, a folder's nets and the stock nets both run at `thresholds`.
    assert make_detector(
        replace(Config(), detector=DetectorConfig(thresholds=tuned_only))
    ).config.thresholds == (tuned_only)


def test_a_detector_folder_without_keras_weights_is_refused_by_the_reference(tmp_path):
    with pytest.raises(FileNotFoundError, match="joblib"):
        MtcnnDetector(DetectorConfig(model=str(tmp_path)))


LANDMARK_KEYS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


# -- box calibration (detector box -> the box a person draws) -------------------------------


def test_the_stock_detector_ships_a_calibration_that_moves_boxes_down(tmp_path):
    calibration = box_calibration(DetectorConfig(box_calibration=True))
    # MTCNN's boxes sit higher than hand-drawn ones (docs/detector.md): the centre moves down.
    assert not calibration.is_identity and calibration.dy > 0.05
    assert box_calibration(DetectorConfig(box_calibration=False)).is_identity
    assert box_calibration(DetectorConfig()) == calibration  # on by default (docs/detector.md)


def test_a_detector_folder_without_calibration_calibrates_nothing(tmp_path):
    import json
    import shutil

    folder = tmp_path / "det"
    shutil.copytree(DEFAULT_DETECTOR_DIR, folder)
    card = json.loads((folder / "card.json").read_text())
    del card["box_calibration"]
    (folder / "card.json").write_text(json.dumps(card))
    assert box_calibration(DetectorConfig(model=str(folder), box_calibration=True)).is_identity


def test_an_invalid_calibration_in_a_card_is_refused_with_its_file(tmp_path):
    import json
    import shutil

    folder = tmp_path / "det"
    shutil.copytree(DEFAULT_DETECTOR_DIR, folder)
    card = json.loads((folder / "card.json").read_text())
    card["box_calibration"]["height_scale"] = 40
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match=r"card\.json: box_calibration: .*scales outside"):
        box_calibration(DetectorConfig(model=str(folder), box_calibration=True))
    with pytest.raises(ModelFileError, match="not a detector folder"):
        box_calibration(DetectorConfig(model=str(tmp_path / "nowhere"), box_calibration=True))


def test_a_calibrated_detector_returns_calibrated_boxes(door_frame):
    detector = LiteRtMtcnnDetector()
    calibration = box_calibration(DetectorConfig(box_calibration=True))
    raw = detector.detect(door_frame)
    found = CalibratedDetector(detector, calibration).detect(door_frame)
    assert len(found) == len(raw) == 1
    assert found[0].box == calibration.apply(raw[0].box) and found[0].score == raw[0].score
    assert found[0].crop_box is None
    located = Face(Box(10, 10, 50, 50), 0.9, crop_box=Box(12, 8, 48, 46))
    (moved,) = CalibratedDetector(FixedFaces(located), calibration).detect(door_frame)
    assert moved.box == calibration.apply(located.box)
    assert moved.crop_box == calibration.apply(located.crop_box)


def test_a_model_trained_on_other_crops_than_the_gate_cuts_is_named():

    from maskgate.crop import BoxCalibration
    from maskgate.gate.detector import calibration_mismatch
    from maskgate.modelcard import load_card

    shipped = load_card(Path(__file__).parents[2] / "models" / "default")
    stock = box_calibration(DetectorConfig(box_calibration=True))
    assert calibration_mismatch(shipped, stock) is None  # trained as the gate cuts by default
    reason = calibration_mismatch(shipped, BoxCalibration())
    assert reason and shipped.version in reason and "detector.box_calibration" in reason
    nearly = replace(stock, dy=stock.dy + 0.01)
    assert calibration_mismatch(shipped, nearly) is None  # within tolerance
    unrecorded = replace(
        shipped, training={k: v for k, v in shipped.training.items() if k != "detector_for_photos"}
    )
    assert calibration_mismatch(unrecorded, BoxCalibration()) is None


def test_a_model_whose_photos_the_pair_located_matches_a_stock_calibrated_gate(shipped_pair):
    """Photos located by the tuned nets beside the stock ones were cut as the pair cuts: through the
    stock calibration, whatever the folder's own calibration is."""

    from maskgate.gate.detector import calibration_mismatch, crops_calibrated_as
    from maskgate.modelcard import load_card
    from maskgate.training.cropset import photo_detector_record

    paired, detector = shipped_pair
    shipped = load_card(ROOT / "models" / "default")
    record = photo_detector_record(paired)
    stock = box_calibration(DetectorConfig())
    assert record["calibration"] != record["stock_calibration"] == stock.to_json()
    card = replace(shipped, training=shipped.training | {"detector_for_photos": record})
    assert calibration_mismatch(card, crops_calibrated_as(detector, box_calibration(paired))) is None
    assert calibration_mismatch(card, stock) is None  # a stock gate
    tuned_alone = BoxCalibration.from_json(record["calibration"])  # the folder's nets without stock
    assert calibration_mismatch(card, tuned_alone) is not None
    reason = calibration_mismatch(card, BoxCalibration())  # a gate that does not calibrate
    assert reason and "detector.box_calibration" in reason
    # paired, but cropping raw boxes: trained on raw crops, so only an uncalibrated gate matches
    raw = replace(card, training=card.training | {"detector_for_photos": photo_detector_record(
        replace(paired, box_calibration=False))})  # fmt: skip
    assert calibration_mismatch(raw, BoxCalibration()) is None
    assert calibration_mismatch(raw, stock) is not None
