"""Model architectures: ``seed`` (the original design, kept for comparison) and ``compact`` (default).

Both take float32 pixels 0-255 as :func:`maskgate.crop.crop_face` makes them and normalise
inside the model (the model card's contract), and end in a softmax over ``LABELS``. The detector's
face-check net (``face_check``) shares compact's trunk and ends in one face probability.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from maskgate.core import LABELS
from maskgate.crop import CropSpec

SEED_PARAMETERS = 1_625_315  # trainable parameters of the original design


@dataclass(frozen=True)
class ArchInfo:
    name: str
    crop: CropSpec  # what the architecture expects by default
    build: Callable[[CropSpec], object]  # -> keras.Model (Keras is imported lazily)
    learning_rate: float
    flip_average: bool  # export averaging the crop and its mirror image (see with_flip_average)


def seed(crop: CropSpec):
    """The seed project's network exactly: 255x255 grey, Conv 64-64 / pool / 64 / pool / 96 / pool /
    128 / pool, Dense 64, dropout 0.25, softmax 3 (1,625,315 trainable parameters)."""
    import keras
    from keras import layers

    inputs = keras.Input((crop.size, crop.size, crop.channels), name="pixels")
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = layers.Conv2D(64, 3, activation="relu")(x)
    x = layers.Conv2D(64, 3, activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    for filters in (64, 96, 128):
        x = layers.Conv2D(filters, 3, activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(64, activation="relu")(x)
    x = layers.Dropout(0.25)(x)
    outputs = layers.Dense(len(LABELS), activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="seed")


# (filters, stride) of the separable blocks; a stride-2 block halves the resolution. Depth sits
# at 24 and 12 px where it is cheap in parameters: the cues (the mask's upper edge against the
# nose, a mask on the chin) are small.
COMPACT_BLOCKS = (
    (32, 1),
    (32, 1),
    (64, 2),
    (64, 1),
    (64, 1),
    (128, 2),
    (128, 1),
    (128, 1),
    (192, 2),
    (192, 1),
    (256, 2),
)


def compact(crop: CropSpec):
    """A small fast RGB network: a plain stem, then depthwise-separable blocks with batch norm
    (residual where the shape allows), global average pooling and a softmax.

    ~0.2 M parameters at any input size; on 96 px the last blocks see 3x3: enough context to
    tell a nose above or below the mask's edge, which is what separates improper from proper.
    """
    import keras
    from keras import layers

    inputs = keras.Input((crop.size, crop.size, crop.channels), name="pixels")
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = _separable_trunk(x, COMPACT_BLOCKS)
    outputs = layers.Dense(len(LABELS), activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="compact")


def _separable_trunk(x, blocks: tuple[tuple[int, int], ...]):
    """compact's body: a strided 3x3 stem, depthwise-separable blocks (filters, stride) with batch
    norm, residual where the shape allows, then global average pooling and dropout."""
    from keras import layers

    x = layers.Conv2D(24, 3, strides=2, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    for filters, stride in blocks:
        y = layers.SeparableConv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        y = layers.BatchNormalization()(y)
        y = layers.ReLU()(y)
        x = layers.Add()([x, y]) if stride == 1 and x.shape[-1] == filters else y
    x = layers.GlobalAveragePooling2D()(x)
    return layers.Dropout(0.3)(x)


# A face or not, on 64 px: fewer, narrower blocks than compact's (82,305 parameters).
FACE_CHECK_BLOCKS = ((32, 1), (48, 2), (64, 1), (96, 2), (128, 1), (160, 2), (192, 1))


def face_check(crop: CropSpec):
    """The detector's face-check net (:mod:`maskgate.gate.face_check`): compact's trunk, narrower,
    ending in one sigmoid, the probability that the crop is a face (masked or not)."""
    import keras
    from keras import layers

    inputs = keras.Input((crop.size, crop.size, crop.channels), name="pixels")
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = _separable_trunk(x, FACE_CHECK_BLOCKS)
    outputs = layers.Dense(1, activation="sigmoid", name="face")(x)
    return keras.Model(inputs, outputs, name="face_check")


def with_flip_average(model):
    """`model` wrapped to average its probabilities on the crop and on its mirror image.

    Faces are left-right symmetric for this task, so the mirror is a free second opinion: it
    costs a second pass (well under a millisecond per face for `compact`) and no parameters.
    """
    import keras
    from keras import layers

    from maskgate.training.layers import HorizontalFlip

    inputs = keras.Input(model.input_shape[1:], name="pixels")
    mirrored = HorizontalFlip(name="mirror")(inputs)
    outputs = layers.Average(name="probabilities")([model(inputs), model(mirrored)])
    return keras.Model(inputs, outputs, name=f"{model.name}_flipavg")


ARCHS: dict[str, ArchInfo] = {
    "compact": ArchInfo("compact", CropSpec(size=96, margin=0.2, color="rgb"), compact, 3e-3, True),
    # The seed stays as it was designed: one pass, no mirror.
    "seed": ArchInfo("seed", CropSpec(size=255, margin=0.2, color="grey"), seed, 1e-3, False),
}


def trainable_parameters(model) -> int:
    return int(sum(math.prod(w.shape) for w in model.trainable_weights))
