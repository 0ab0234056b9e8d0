"""Custom Keras layers of maskgate's models. Import this module before loading a `model.keras`
that uses them (:func:`load_keras` does)."""

from __future__ import annotations

from pathlib import Path

import keras


@keras.saving.register_keras_serializable(package="maskgate")
class HorizontalFlip(keras.layers.Layer):
    """Mirrors images (N, H, W, C) left-right; deterministic, a plain reverse in TFLite."""

    def call(self, inputs):
        return keras.ops.flip(inputs, axis=2)


def load_keras(path: Path):
    """A saved maskgate Keras model (with its custom layers known)."""
    return keras.models.load_model(path)
