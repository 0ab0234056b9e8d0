"""The one crop function shared by training and the gate."""

from __future__ import annotations

import numpy as np
import pytest

from maskgate.core import Box
from maskgate.crop import CropSpec, EmptyCropError, crop_face, square_box


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
