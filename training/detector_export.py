"""Export MTCNN's three networks (weights from the `mtcnn` package) to TFLite for the gate.

``maskgate export-detector --out DIR`` runs it; it needs the training extra (TensorFlow, mtcnn).
The result is a detector folder that :class:`maskgate.gate.mtcnn_litert.LiteRtMtcnnDetector` runs
with LiteRT alone:

    pnet.tflite  (1, H, W, 3), H, W >= 12 -> box regression (1, h, w, 4), face prob (1, h, w, 2)
    rnet.tflite  (N, 24, 24, 3)           -> box offsets (N, 4), face prob (N, 2)
    onet.tflite  (N, 48, 48, 3)           -> box offsets (N, 4), landmarks (N, 10), face prob (N, 2)
    card.json    provenance, licence, each network's output channels and each file's sha256

Outputs are told apart by their channel count (the converter does not keep their order).
`weights` exports fine-tuned nets instead (``maskgate train-detector``, files in the package's
own joblib format); each export is checked against Keras on random patches.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

from maskgate.core import utcnow
from maskgate.modelcard import sha256_file

DETECTOR_CARD = "card.json"
NETWORKS = {"pnet": (None, None), "rnet": (24, 24), "onet": (48, 48)}
AGREEMENT = 1e-4  # largest Keras/TFLite difference accepted in any output
EXTRA_FILES = ("pnet.joblib", "rnet.joblib", "onet.joblib", "training_curves.png")


class ExportMismatchError(RuntimeError):
    """The TFLite file does not compute what the Keras network computes."""


def export_detector(out: Path, weights: dict[str, Path] | None = None, extra: dict | None = None) -> dict:
    """Write the three TFLite networks and a card into `out`; returns the card.

    `weights` maps a network name to a weights file (default: the package's stock weights);
    `extra` is merged into the card (a fine-tuned detector's data, settings and history).
    """
    import tensorflow as tf
    from mtcnn.stages import StageONet, StagePNet, StageRNet
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    out.mkdir(parents=True, exist_ok=True)
    weights = weights or {}
    classes = {"pnet": StagePNet, "rnet": StageRNet, "onet": StageONet}
    stages = {
        name: (cls(weights=str(weights[name])) if name in weights else cls()) for name, cls in classes.items()
    }
    outputs = {}
    for name, stage in stages.items():
        height, width = NETWORKS[name]
        batch = 1 if name == "pnet" else None
        model = stage._model  # the package keeps its Keras model here; it has no public accessor

        @tf.function(input_signature=[tf.TensorSpec([batch, height, width, 3], tf.float32)])
        def forward(images, model=model):
            return {f"output_{i}": tensor for i, tensor in enumerate(model(images))}

        # Freeze the weights into constants: otherwise the converter keeps them as resource
        # variables, which LiteRT reads as uninitialised (NaN outputs).
        frozen = convert_variables_to_constants_v2(forward.get_concrete_function())
        converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
        (out / f"{name}.tflite").write_bytes(converter.convert())
        outputs[name] = [
            int(t.shape[-1]) for t in forward.get_concrete_function().structured_outputs.values()
        ]
        check_agreement(model, out / f"{name}.tflite", name)
    card = {
        "kind": "mtcnn-litert",
        "source": f"mtcnn {metadata.version('mtcnn')} (PyPI), weights from its package assets",
        "licence": "MIT (mtcnn by Iván de Paz Centeno); original MTCNN by Zhang et al., 2016",
        "created": utcnow().isoformat(),
        "exported_with": f"tensorflow {tf.__version__}",
        "normalisation": "(pixel - 127.5) / 128, RGB",
        "output_channels": outputs,
        "files": {f"{name}.tflite": sha256_file(out / f"{name}.tflite") for name in NETWORKS},
    }
    if weights:
        card["licence"] = card["licence"] + "; fine-tuned on CC0 data (see training)"
    card.update(extra or {})
    card["files"].update({name: sha256_file(out / name) for name in EXTRA_FILES if (out / name).is_file()})
    (out / DETECTOR_CARD).write_text(json.dumps(card, indent=2) + "\n")
    return card


def check_agreement(model, tflite: Path, name: str, samples: int = 16, seed: int = 0) -> float:
    """Largest difference between Keras and the TFLite file on random patches; raises above AGREEMENT."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    height, width = NETWORKS[name]
    shape = (1, 37, 53, 3) if height is None else (samples, height, width, 3)
    images = np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)
    expected = sorted((np.asarray(t) for t in model(images)), key=lambda t: t.shape[-1])
    interpreter = Interpreter(model_path=str(tflite))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, images)
    interpreter.invoke()
    got = sorted(
        (interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()),
        key=lambda t: t.shape[-1],
    )
    worst = max(float(np.abs(a - b).max()) for a, b in zip(expected, got, strict=True))
    if worst > AGREEMENT:
        raise ExportMismatchError(f"{name}: TFLite differs from Keras by {worst:.2e} (> {AGREEMENT})")
    return worst
