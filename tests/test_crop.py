"""The one crop function shared by training and the gate."""

from __future__ import annotations

import numpy as np
import pytest

from maskgate.core import Box
from maskgate.crop import BoxCalibration, CropSpec, EmptyCropError, crop_face, square_box


def gradient(height: int = 100, width: int = 160) -> np.ndarray:
    """An RGB image whose pixels encode their position (R = x, G = y), to see where a crop came from."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x, y, np.full_like(x, 7)], axis=-1).astype(np.uint8)


def test_square_box_is_centred_with_margin_on_the_longer_side():
    # Centre (20, 40); longer side 40; with 25 % per side the square is 60 wide.
    assert square_box(Box(10, 20, 30, 60), 0.25) == Box(-10, 10, 50, 70)
    assert square_box(Box(10, 20, 30, 60), 0.0) == Box(0, 20, 40, 60)


def test_crop_is_square_resized_and_rgb():
    crop = crop_face(gradient(), Box(40, 20, 80, 60), CropSpec(size=20, margin=0.0))
    assert crop.shape == (20, 20, 3) and crop.dtype == np.uint8
    # Exactly the box, area-downscaled 2x: the first pixel averages x 40-41, y 20-21.
    assert abs(int(crop[0, 0, 0]) - 40) <= 1 and abs(int(crop[0, 0, 1]) - 20) <= 1
    assert abs(int(crop[-1, -1, 0]) - 79) <= 1 and (crop[..., 2] == 7).all()


def test_crop_pads_by_replicating_the_border_instead_of_shifting():
    crop = crop_face(gradient(), Box(-10, -10, 10, 10), CropSpec(size=20, margin=0.0))
    # The left/top half lies outside: replicated edge (x = 0, y = 0), the face is not moved inwards.
    assert (crop[:, :10, 0] == 0).all() and (crop[:10, :, 1] == 0).all()
    assert crop[15, 15, 0] >= 4 and crop[15, 15, 1] >= 4


def test_grey_crops_have_one_channel():
    crop = crop_face(gradient(), Box(40, 20, 80, 60), CropSpec(size=16, color="grey"))
    assert crop.shape == (16, 16, 1)


def test_a_box_outside_the_image_is_an_error():
    with pytest.raises(EmptyCropError):
        crop_face(gradient(), Box(500, 500, 520, 520), CropSpec())


def test_crop_spec_json_round_trip_and_validation():
    spec = CropSpec(size=96, margin=0.2, color="rgb")
    assert CropSpec.from_json(spec.to_json()) == spec
    for bad in ({"size": 4, "margin": 0.2, "color": "rgb"}, {"size": 96, "margin": 0.2, "color": "bgr"}):
        with pytest.raises(ValueError, match="invalid crop spec"):
            CropSpec.from_json(bad)


# -- box calibration --------------------------------------------------------------------------


def test_box_calibration_moves_the_centre_by_a_share_of_the_box_and_scales_it():
    # Box 40 wide, 80 high, centre (30, 60): centre moves by (0.1 * 40, 0.25 * 80) = (4, 20) to
    # (34, 80); the new box is 40 * 1.5 = 60 wide and 80 * 0.5 = 40 high.
    calibration = BoxCalibration(dx=0.1, dy=0.25, width_scale=1.5, height_scale=0.5)
    assert calibration.apply(Box(10, 20, 50, 100)) == Box(4, 60, 64, 100)
    assert BoxCalibration().apply(Box(10, 20, 50, 100)) == Box(10, 20, 50, 100)
    assert BoxCalibration().is_identity and not calibration.is_identity


def test_box_calibration_invert_undoes_apply():
    calibration = BoxCalibration(dx=0.05, dy=0.156, width_scale=1.07, height_scale=0.952)
    for box in (Box(10, 20, 50, 100), Box(0, 0, 300, 240), Box(-4, 7, 9, 8)):
        for there_and_back in (
            calibration.apply(calibration.invert(box)),
            calibration.invert(calibration.apply(box)),
        ):
            assert there_and_back.center == pytest.approx(box.center)
            assert (there_and_back.width, there_and_back.height) == pytest.approx((box.width, box.height))
    assert calibration.invert(Box(0, 0, 107, 95.2)).width == pytest.approx(100)


def test_box_calibration_fit_recovers_a_known_mapping_and_ignores_a_stray_pair():
    truth = BoxCalibration(dx=0.05, dy=0.15, width_scale=1.1, height_scale=0.9)
    # Boxes wider than high and higher than wide: a fit that mixed up the axes would not recover it.
    corners = [(0, 0, 20, 30), (50, 10, 60, 40), (5, 90, 100, 70), (7, 3, 44, 64)]
    detected = [Box(x, y, x + w, y + h) for x, y, w, h in corners]
    drawn = [truth.apply(box) for box in detected]
    # A detection paired with a neighbour's face: far off, but one of five does not move a median.
    detected.append(Box(0, 0, 30, 30))
    drawn.append(Box(25, 25, 90, 90))
    fitted = BoxCalibration.fit(detected, drawn)
    assert fitted.dx == pytest.approx(0.05) and fitted.dy == pytest.approx(0.15)
    assert fitted.width_scale == pytest.approx(1.1) and fitted.height_scale == pytest.approx(0.9)


def test_box_calibration_refuses_nonsense():
    with pytest.raises(ValueError, match=r"more than 0\.5"):
        BoxCalibration(dy=0.8)
    with pytest.raises(ValueError, match="scales outside"):
        BoxCalibration(width_scale=3.0)
    with pytest.raises(ValueError, match="non-finite"):
        BoxCalibration(dx=float("nan"))
    with pytest.raises(ValueError, match="non-empty"):
        BoxCalibration.fit([], [])
    with pytest.raises(ValueError, match="keys"):
        BoxCalibration.from_json({"dx": 0.1})
    for bad in ("down", "0.1", True, None):
        with pytest.raises(ValueError, match="must be numbers"):
            BoxCalibration.from_json({"dx": bad, "dy": 0, "width_scale": 1, "height_scale": 1})
    calibration = BoxCalibration(0.01, 0.2, 1.05, 0.95)
    assert BoxCalibration.from_json(calibration.to_json() | {"fitted": {"pairs": 3}}) == calibration


def test_crop_face_of_a_detected_box_crops_around_the_calibrated_box():
    image = gradient(200, 200)
    calibration = BoxCalibration(dy=0.25)
    detected = Box(60, 40, 100, 80)
    through_calibration = crop_face(image, detected, CropSpec(size=40, margin=0.0), calibration)
    assert np.array_equal(
        through_calibration, crop_face(image, Box(60, 50, 100, 90), CropSpec(size=40, margin=0.0))
    )
    # The crop starts 10 px lower: the green channel (= y) of its top row says so.
    assert through_calibration[0, 0, 1] == 50


@pytest.mark.parametrize(
    "box",
    [Box(0, 0, 1e9, 1e9), Box(-1e9, -1e9, 1e9, 1e9), Box(-5e8, 10, 150, 1e9)],
    ids=["1e9 wide", "around", "reaching out left and down"],
)
def test_an_absurd_box_is_clipped_to_the_image_instead_of_padded_to_gigabytes(box: Box):
    """A box reaching far out of the image (a broken annotation, a wild detection) would make a
    padded square of 1e9 px a side: it is cut as its part inside the image instead."""
    image = gradient()
    spec = CropSpec(size=20)
    assert np.array_equal(crop_face(image, box, spec), crop_face(image, box.clip(160, 100), spec))


def test_a_box_at_the_border_within_half_the_image_is_still_padded_not_clipped():
    image = gradient()  # 160 x 100: boxes may reach out by up to 80 px
    spec = CropSpec(size=20, margin=0.0)
    reaching = Box(-70, 20, 10, 100)  # 80 px, 70 of them outside
    padded = crop_face(image, reaching, spec)
    assert (padded[:, :15, 0] == 0).all()  # the replicated column x = 0: the face is not moved inside
    assert not np.array_equal(padded, crop_face(image, reaching.clip(160, 100), spec))


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_a_box_that_is_not_finite_has_nothing_to_crop(value: float):
    with pytest.raises(EmptyCropError, match="not finite"):
        crop_face(gradient(), Box(10, 10, value, 50), CropSpec(size=20))


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"size": 1e400, "margin": 0.2, "color": "rgb"}, "crop size"),
        ({"size": 1_000_000_000, "margin": 0.2, "color": "rgb"}, "crop size"),
        ({"size": 96.5, "margin": 0.2, "color": "rgb"}, "crop size"),
        ({"size": True, "margin": 0.2, "color": "rgb"}, "crop size"),
        ({"size": "96", "margin": 0.2, "color": "rgb"}, "crop size"),
        ({"size": 96, "margin": float("nan"), "color": "rgb"}, "crop margin"),
        ({"size": 96, "margin": "0.2", "color": "rgb"}, "crop margin"),
        ({"size": 96, "margin": 0.2, "color": ["rgb"]}, "crop colour"),
        ({"size": 96, "margin": 0.2}, "expected an object"),
        ([96, 0.2, "rgb"], "expected an object"),
    ],
)
def test_crop_spec_from_json_refuses_what_a_card_cannot_hold(data, problem: str):
    with pytest.raises(ValueError, match=f"invalid crop spec .*{problem}"):
        CropSpec.from_json(data)


def test_crop_spec_problem_names_the_limits():
    assert CropSpec().problem() is None and CropSpec(size=8, margin=1.0, color="grey").problem() is None
    assert "from 8 to 1024, not 4" in CropSpec(size=4).problem()
    assert "from 8 to 1024, not 1025" in CropSpec(size=1025).problem()
    assert "margin" in CropSpec(margin=1.5).problem()
