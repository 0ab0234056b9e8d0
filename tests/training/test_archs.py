"""The architectures: the seed exactly as designed, the compact default small and RGB."""

from __future__ import annotations

import numpy as np
import pytest

from maskgate.core import LABELS
from maskgate.crop import CropSpec
from maskgate.training.archs import ARCHS, SEED_PARAMETERS, compact, seed, trainable_parameters


@pytest.mark.slow
def test_seed_is_the_original_network():
    model = seed(ARCHS["seed"].crop)
    assert ARCHS["seed"].crop == CropSpec(size=255, margin=0.2, color="grey")
    assert tuple(model.input_shape) == (None, 255, 255, 1)
    assert trainable_parameters(model) == SEED_PARAMETERS == 1_625_315
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Conv2D") == 5 and kinds.count("MaxPooling2D") == 4 and kinds.count("Dense") == 2
    assert next(layer for layer in model.layers if type(layer).__name__ == "Dropout").rate == 0.25


def test_compact_is_small_rgb_and_normalises_inside():
    crop = ARCHS["compact"].crop
    model = compact(crop)
    assert crop.color == "rgb" and tuple(model.input_shape) == (None, crop.size, crop.size, 3)
    assert 50_000 < trainable_parameters(model) <= 300_000
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"SeparableConv2D", "BatchNormalization", "GlobalAveragePooling2D", "Rescaling"} <= kinds
    # Takes 0-255 pixels (the card's contract) and returns probabilities in LABELS order.
    probs = model.predict(np.full((2, crop.size, crop.size, 3), 255, np.float32), verbose=0)
    assert probs.shape == (2, len(LABELS)) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
