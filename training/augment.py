"""Training-time augmentation of face crops, batched TensorFlow ops inside the input pipeline.

It is applied to batches of 0-255 float crops, never inside the model, so the exported model
is exactly what the gate runs. The transforms mimic how a door camera's crops differ from the
training photos: mirror images, a tilted head and a detector box a little off (rotation, zoom,
shift), other light (brightness, contrast, saturation) and a softer or smaller face (blur,
downscale-and-upscale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentConfig:
    flip: bool = True
    rotation_deg: float = 12.0
    zoom: float = 0.12  # scale in [1 - zoom, 1 + zoom]
    shift: float = 0.06  # fraction of the side
    brightness: float = 0.25  # added, as a fraction of 255
    contrast: float = 0.3  # factor in [1 - contrast, 1 + contrast]
    saturation: float = 0.3  # colour crops only
    blur_probability: float = 0.2
    lowres_probability: float = 0.25  # downscale to 25-70 % and back: small, far faces

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def augment_batch(images, config: AugmentConfig):
    """Random transforms of a float32 batch (B, S, S, C) of 0-255 pixels; returns the same shape."""
    import tensorflow as tf

    batch = tf.shape(images)[0]
    size = images.shape[1]
    channels = images.shape[3]
    x = images
    if config.flip:
        flip = tf.random.uniform([batch, 1, 1, 1]) < 0.5
        x = tf.where(flip, tf.reverse(x, axis=[2]), x)
    x = _affine(x, batch, size, config)
    if config.lowres_probability > 0:
        factor = tf.random.uniform([], 0.25, 0.7)
        small = tf.maximum(8, tf.cast(tf.cast(size, tf.float32) * factor, tf.int32))
        degraded = tf.image.resize(tf.image.resize(x, [small, small], antialias=True), [size, size])
        x = tf.where(tf.random.uniform([batch, 1, 1, 1]) < config.lowres_probability, degraded, x)
    if config.blur_probability > 0:
        x = tf.where(tf.random.uniform([batch, 1, 1, 1]) < config.blur_probability, _blur(x, channels), x)
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    contrast = tf.random.uniform([batch, 1, 1, 1], 1 - config.contrast, 1 + config.contrast)
    x = (x - mean) * contrast + mean
    if channels == 3 and config.saturation > 0:
        grey = tf.reduce_mean(x, axis=3, keepdims=True)
        saturation = tf.random.uniform([batch, 1, 1, 1], 1 - config.saturation, 1 + config.saturation)
        x = (x - grey) * saturation + grey
    x = x + tf.random.uniform([batch, 1, 1, 1], -config.brightness, config.brightness) * 255.0
    return tf.clip_by_value(x, 0.0, 255.0)


def _affine(x, batch, size: int, config: AugmentConfig):
    """Rotate, zoom and shift each image about its centre (reflecting at the border)."""
    import tensorflow as tf

    angle = tf.random.uniform([batch], -1.0, 1.0) * (config.rotation_deg * math.pi / 180)
    scale = tf.random.uniform([batch], 1 - config.zoom, 1 + config.zoom)
    tx = tf.random.uniform([batch], -config.shift, config.shift) * size
    ty = tf.random.uniform([batch], -config.shift, config.shift) * size
    c = (size - 1) / 2.0
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    # The transform maps output pixel (x, y) to the input pixel it samples.
    a0, a1 = cos, -sin
    b0, b1 = sin, cos
    a2 = c - a0 * c - a1 * c + tx
    b2 = c - b0 * c - b1 * c + ty
    zeros = tf.zeros([batch])
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x,
        transforms=transforms,
        output_shape=tf.constant([size, size], tf.int32),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )


def _blur(x, channels: int):
    import tensorflow as tf

    sigma = tf.random.uniform([], 0.6, 1.6)
    radius = 3
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel_1d = tf.exp(-(offsets**2) / (2 * sigma**2))
    kernel_1d = kernel_1d / tf.reduce_sum(kernel_1d)
    kernel = tf.tensordot(kernel_1d, kernel_1d, axes=0)[:, :, None, None]
    kernel = tf.tile(kernel, [1, 1, channels, 1])
    padded = tf.pad(x, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="SYMMETRIC")
    return tf.nn.depthwise_conv2d(padded, kernel, strides=[1, 1, 1, 1], padding="VALID")
