"""Export MTCNN's three networks (weights from the `mtcnn` package) to TFLite for the gate.

``maskgate export-detector --out DIR`` runs it; it needs the training extra (TensorFlow, mtcnn).
The result is a detector folder that :class:`maskgate.gate.mtcnn_litert.LiteRtMtcnnDetector` runs
with LiteRT alone:

    pnet.tflite  (1, H, W, 3), H, W >= 12 -> box regression (1, h, w, 4), face prob (1, h, w, 2)
    rnet.tflite  (N, 24, 24, 3)           -> box offsets (N, 4), face prob (N, 2)
    onet.tflite  (N, 48, 48, 3)           -> box offsets (N, 4), landmarks (N, 10), face prob (N, 2)
    card.json    provenance, licence, each network's output channels and each file's sha256

Outputs are told apart by their channel count (the converter does not keep their order).
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

from maskgate.core import utcnow
from maskgate.modelcard import sha256_file

DETECTOR_CARD = "card.json"
NETWORKS = {"pnet": (None, None), "rnet": (24, 24), "onet": (48, 48)}


def export_detector(out: Path) -> dict:
    """Write the three TFLite networks and a card into `out`; returns the card."""
    import tensorflow as tf
    from mtcnn.stages import StageONet, StagePNet, StageRNet
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    out.mkdir(parents=True, exist_ok=True)
    stages = {"pnet": StagePNet(), "rnet": StageRNet(), "onet": StageONet()}
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
    (out / DETECTOR_CARD).write_text(json.dumps(card, indent=2) + "\n")
    return card

