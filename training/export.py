"""Export a trained Keras model to the TFLite file the gate runs, and check that they agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TFLITE_TOLERANCE = 1e-3  # max absolute probability difference allowed between Keras and TFLite


class ExportError(RuntimeError):
    """The exported model does not compute what the trained one does."""


def to_tflite(model, path: Path) -> None:
    """Write `model` as float32 TFLite (no quantisation: the gate's budget is the detector's)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    path.write_bytes(converter.convert())


def tflite_predict(path: Path, crops: np.ndarray, batch: int = 64) -> np.ndarray:
    """Probabilities from the TFLite file run by LiteRT (as the gate does), in batches."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=2)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    results = []
    current = None
    for start in range(0, len(crops), batch):
        chunk = crops[start : start + batch].astype(np.float32)
        if chunk.shape != current:
            interpreter.resize_tensor_input(inp["index"], chunk.shape)
            interpreter.allocate_tensors()
            current = chunk.shape
        interpreter.set_tensor(inp["index"], chunk)
        interpreter.invoke()
        results.append(interpreter.get_tensor(out["index"]).copy())
    return np.concatenate(results) if results else np.zeros((0, 0), np.float32)


def keras_predict(model, crops: np.ndarray, batch: int = 128) -> np.ndarray:
    return np.asarray(model.predict(crops.astype(np.float32), batch_size=batch, verbose=0))


def check_agreement(model, path: Path, crops: np.ndarray) -> float:
    """The max probability difference between Keras and TFLite on `crops`; raises above tolerance."""
    diff = (
        float(np.max(np.abs(keras_predict(model, crops) - tflite_predict(path, crops))))
        if len(crops)
        else 0.0
    )
    if diff >= TFLITE_TOLERANCE:
        raise ExportError(f"{path}: TFLite differs from Keras by {diff:.2e} (limit {TFLITE_TOLERANCE:g})")
    return diff
