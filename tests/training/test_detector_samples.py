"""MTCNN training samples (issue #9): IoU classes, regression targets in the detector's own
convention, mirroring, and synthetic masks drawn on a real face."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.data import astronaut

from maskgate.config import DetectorConfig
from maskgate.gate.mtcnn_litert import PNET_CELL, PNET_STRIDE, LiteRtMtcnnDetector, _cells_to_boxes, regress
from maskgate.gate.synthetic import MASK_COLOURS
from maskgate.training.detector_samples import (
    CHIN,
    SYNTHETIC_STYLES,
    Kind,
    SampleConfig,
    Samples,
    Scene,
    classify_crops,
    draw_style,
    flip,
    iou_matrix,
    regression_targets,
    scene_samples,
    synthetic_scenes,
)

FACE = np.array([[100.0, 100.0, 200.0, 200.0]])


def test_crops_are_classed_by_their_best_iou_with_the_faces():
    crops = np.array(
        [
            [100, 100, 200, 200],  # the face: IoU 1
            [110, 100, 210, 200],  # IoU 0.82: positive
            [140, 100, 240, 200],  # IoU 0.43: part face
            [150, 100, 250, 200],  # IoU 0.33: between part and negative, not used
            [170, 100, 270, 200],  # IoU 0.18: negative
            [400, 400, 500, 500],  # nowhere near: negative
        ],
        float,
    )
    kinds, match = classify_crops(crops, FACE)
    assert kinds.tolist() == [
        Kind.POSITIVE,
        Kind.POSITIVE,
        Kind.PART,
        Kind.IGNORE,
        Kind.NEGATIVE,
        Kind.NEGATIVE,
    ]
    assert match.tolist() == [0, 0, 0, 0, -1, -1]


def test_iou_matrix_agrees_with_box_iou():
    from maskgate.core import Box

    a, b = np.array([[0, 0, 10, 10], [5, 5, 15, 20]]), np.array([[2, 3, 12, 9], [100, 100, 101, 101]])
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            assert iou_matrix(a, b)[i, j] == pytest.approx(Box(*map(float, x)).iou(Box(*map(float, y))))


def test_rnet_and_onet_targets_are_undone_by_the_detectors_regression():
    crop = np.array([[10.0, 20.0, 109.0, 119.0]])  # x2 - x1 + 1 = 100: the package's box size
    truth = np.array([[20.0, 10.0, 120.0, 110.0]])
    offsets = regression_targets(crop, truth, "rnet")
    assert offsets[0].tolist() == pytest.approx([0.10, -0.10, 0.11, -0.09])
    decoded = regress(np.concatenate([crop, [[0.9]]], axis=1), offsets)
    assert decoded[0, :4] == pytest.approx(truth[0])


def test_pnet_targets_are_undone_by_the_cell_decoding():
    """P-net regresses a cell's 12 px window by offset * 11 at the level's scale."""
    scale = 0.5  # a level at half size: the cell covers 22 px of the image
    cell_y, cell_x = 3, 4
    window = np.array([[cell_x * PNET_STRIDE + 1, cell_y * PNET_STRIDE + 1]] * 2).reshape(1, 4)
    window = np.array(
        [[window[0, 0], window[0, 1], window[0, 0] + PNET_CELL - 1, window[0, 1] + PNET_CELL - 1]]
    )
    crop = window / scale
    truth = crop + np.array([[3.0, -2.0, 5.0, 1.0]])
    offsets = regression_targets(crop, truth, "pnet")
    regression = np.zeros((6, 8, 4), np.float32)
    regression[cell_y, cell_x] = offsets[0]
    probability = np.zeros((6, 8), np.float32)
    probability[cell_y, cell_x] = 0.99
    boxes = _cells_to_boxes(regression, probability, 0.5, scale)
    assert boxes[0, :4] == pytest.approx(truth[0], abs=1e-3)


def test_mirrored_samples_have_mirrored_targets():
    width = 300.0
    crop, truth = np.array([[90.0, 95.0, 209.0, 214.0]]), FACE
    mirror = lambda b: np.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], axis=1)  # noqa: E731
    samples = Samples(
        np.zeros((1, 24, 24, 3), np.float32),
        np.array([Kind.POSITIVE]),
        regression_targets(crop, truth, "rnet"),
        np.array(["with_mask"], object),
    )
    expected = regression_targets(mirror(crop), mirror(truth), "rnet")
    assert flip(samples).offsets == pytest.approx(expected, abs=1e-6)


def test_a_scene_gives_positives_parts_and_negatives_with_matching_targets():
    rng = np.random.default_rng(0)
    image = np.random.default_rng(1).integers(0, 255, (240, 320, 3), np.uint8)
    scene = Scene("x.jpg", image, FACE.copy(), ["with_mask"], np.array([100.0]))
    samples = scene_samples(scene, "onet", np.zeros((0, 5)), SampleConfig(jitter_per_face=40), rng)
    counts = samples.counts()
    assert counts["positive"] > 0 and counts["part"] > 0 and counts["negative"] > 0
    assert samples.patches.shape[1:] == (48, 48, 3)
    assert np.abs(samples.patches).max() <= 1.0  # normalised as the detector normalises
    assert not samples.offsets[samples.kinds == Kind.NEGATIVE].any()
    faces = samples.kinds != Kind.NEGATIVE
    assert set(samples.labels[faces]) == {"with_mask"}
    assert samples.sides[faces].tolist() == [100.0] * int(faces.sum())  # the matched face's side
    assert not samples.sides[~faces].any()
    both = Samples.concat([samples, flip(samples)], 48)
    assert both.sides.tolist() == samples.sides.tolist() * 2


@pytest.fixture(scope="module")
def portrait_scene() -> Scene:
    """A real face (scikit-image's astronaut) labelled bare, with the box the stock detector gives it."""
    image = np.ascontiguousarray(astronaut()[10:330, 50:370])
    face = LiteRtMtcnnDetector(DetectorConfig(min_face_size=40)).detect(image)[0]
    box = np.array([[face.box.x1, face.box.y1, face.box.x2, face.box.y2]])
    return Scene("astronaut", image, box, ["without_mask"], np.array([face.box.side]))


def test_synthetic_masks_keep_the_face_box_and_stay_on_the_face(portrait_scene):
    detector = LiteRtMtcnnDetector(DetectorConfig(min_face_size=40))
    masked = synthetic_scenes([portrait_scene], detector, np.random.default_rng(0))
    assert len(masked) == 1
    scene = masked[0]
    assert scene.boxes.tolist() == portrait_scene.boxes.tolist()  # the annotated box is kept
    assert scene.labels[0] in ("with_mask", "improper_mask") and scene.focus == 0
    x1, y1, x2, y2 = portrait_scene.boxes[0]
    side = max(x2 - x1, y2 - y1)
    landmarks = dict(detector.detect(portrait_scene.image)[0].landmarks)
    for style in SYNTHETIC_STYLES:
        drawn = draw_style(portrait_scene.image, landmarks, style)
        ys, xs = np.nonzero(np.any(drawn != portrait_scene.image, axis=2))
        assert len(ys) > 0.1 * side * side, style  # a mask, not a speck
        # the mask covers the lower face: within the box, widened for the ear loops and the chin
        inside = (xs > x1 - 0.35 * side) & (xs < x2 + 0.35 * side) & (ys > y1) & (ys < y2 + 0.5 * side)
        assert inside.mean() > 0.97, style
        if style == CHIN:
            mouth = (landmarks["mouth_left"][1] + landmarks["mouth_right"][1]) / 2
            assert np.median(ys) > mouth  # on the chin: mostly below the mouth


def test_synthetic_masks_take_their_colours_from_the_palette(portrait_scene):
    """Not one colour: a detector taught only blue masks would learn "blue" for "mask"."""
    detector = LiteRtMtcnnDetector(DetectorConfig(min_face_size=40))
    masked = synthetic_scenes([portrait_scene] * 12, detector, np.random.default_rng(1))
    colours = set()
    for scene in masked:
        changed = np.any(scene.image != portrait_scene.image, axis=2)
        values, counts = np.unique(scene.image[changed], axis=0, return_counts=True)
        colours.add(tuple(int(v) for v in values[counts.argmax()]))  # the mask's body; pleats are darker
    assert len(masked) == 12 and colours <= set(MASK_COLOURS) and len(colours) >= 4
