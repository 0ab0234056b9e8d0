"""Glasses drawn from a face's landmarks (gate/synthetic.py): hard negatives for the classifier."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.data import astronaut

from maskgate.gate.mtcnn_litert import LiteRtMtcnnDetector
from maskgate.gate.synthetic import LENS_COLOURS, Landmarks, draw_glasses


@pytest.fixture(scope="module")
def portrait() -> tuple[np.ndarray, Landmarks]:
    image = np.ascontiguousarray(astronaut()[:300, 80:380])
    face = max(LiteRtMtcnnDetector().detect(image), key=lambda f: f.box.area)
    return image, dict(face.landmarks)


def eye_patches(image: np.ndarray, landmarks: Landmarks) -> list[np.ndarray]:
    patches = []
    for name in ("left_eye", "right_eye"):
        x, y = (round(v) for v in landmarks[name])
        patches.append(image[y - 3 : y + 4, x - 3 : x + 4].astype(float))
    return patches


def test_sunglasses_darken_both_eyes_and_leave_the_lower_face_alone(portrait):
    image, landmarks = portrait
    original = image.copy()
    drawn = draw_glasses(image, landmarks, LENS_COLOURS[0])
    assert np.array_equal(image, original)  # drawn on a copy
    for before, after in zip(eye_patches(image, landmarks), eye_patches(drawn, landmarks), strict=True):
        assert after.mean() < 0.5 * before.mean()
    changed = np.any(drawn != image, axis=2)
    ys, _ = np.nonzero(changed)
    assert ys.max() < landmarks["nose"][1]  # nothing at or below the nose: a mask's place stays bare
    eye_gap = abs(landmarks["right_eye"][0] - landmarks["left_eye"][0])
    lenses = 2 * np.pi * (0.42 * eye_gap) * (0.31 * eye_gap)
    assert 0.8 * lenses < changed.sum() < 2.0 * lenses


def test_clear_glasses_draw_a_frame_around_eyes_that_stay_visible(portrait):
    image, landmarks = portrait
    clear = draw_glasses(image, landmarks, None)
    for before, after in zip(eye_patches(image, landmarks), eye_patches(clear, landmarks), strict=True):
        assert np.array_equal(before, after)
    frame = np.any(clear != image, axis=2).sum()
    assert 0 < frame < np.any(draw_glasses(image, landmarks, LENS_COLOURS[2]) != image, axis=2).sum()
