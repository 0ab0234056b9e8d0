"""The mask classifier at the gate: a model folder run by LiteRT, all faces of a frame in one call."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from maskgate.core import Classification
from maskgate.crop import CropSpec
from maskgate.modelcard import CARD_FILE, RUNTIME_FILE, ModelCard, ModelFileError, load_card

log = logging.getLogger(__name__)


class MaskClassifier:
    """Loads ``model.tflite`` from a verified model folder and classifies batches of crops.

    The interpreter runs the very bytes whose sha256 was checked, held in memory. Given the path,
    LiteRT would map the file and keep reading it: a model file corrupted or overwritten on disk
    later would change what the running gate computes (all-zero outputs, or an exception on every
    frame) although it had been verified at start.
    """

    def __init__(self, folder: str | Path, num_threads: int = 1):
        self.folder = Path(folder)
        self.card: ModelCard = load_card(self.folder)
        content = self._verified_runtime_bytes()
        try:
            self._interpreter = Interpreter(model_content=content, num_threads=num_threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(f"{self.folder}: LiteRT cannot load {RUNTIME_FILE}: {exc}") from None
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._batch = int(self._input["shape"][0])
        self._lock = threading.Lock()  # one interpreter, not re-entrant
        expected = (self.crop.size, self.crop.size, self.crop.channels)
        actual = tuple(int(n) for n in self._input["shape"][1:])
        if actual != expected:
            raise ModelFileError(f"{self.folder}: {RUNTIME_FILE} takes {actual}, the card says {expected}")
        # The card's labels are known (Label.parse in load_card); each must name one output, in order.
        labels, width = self.card.labels, int(self._output["shape"][-1])
        if width != len(labels) or len(set(labels)) != len(labels):
            raise ModelFileError(
                f"{self.folder}: {RUNTIME_FILE} gives {width} probabilities per face, the card lists "
                f"{len(labels)} labels ({', '.join(labels)}): not one distinct label per output"
            )

    def _verified_runtime_bytes(self) -> bytes:
        """``model.tflite`` read once and checked against the card (it may have changed since load_card)."""
        path = self.folder / RUNTIME_FILE
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise ModelFileError(f"{self.folder}: cannot read {RUNTIME_FILE}: {exc}") from None
        if hashlib.sha256(content).hexdigest() != self.card.sha256:
            raise ModelFileError(
                f"{self.folder}: {RUNTIME_FILE} does not match the sha256 in {CARD_FILE} (altered?)"
            )
        return content

    @property
    def crop(self) -> CropSpec:
        return self.card.crop

    @property
    def version(self) -> str:
        return self.card.version

    def classify(self, crops: Sequence[np.ndarray]) -> list[Classification]:
        """Probabilities for each crop (from :func:`maskgate.crop.crop_face`), in one interpreter call."""
        if not crops:
            return []
        batch = np.stack(crops).astype(np.float32)
        with self._lock:
            if batch.shape[0] != self._batch:
                # Resizing re-plans the graph: do it only when the number of faces changes.
                self._interpreter.resize_tensor_input(self._input["index"], batch.shape)
                self._interpreter.allocate_tensors()
                self._batch = batch.shape[0]
            self._interpreter.set_tensor(self._input["index"], batch)
            self._interpreter.invoke()
            probabilities = self._interpreter.get_tensor(self._output["index"])
        return [Classification.from_vector(row, self.card.labels) for row in probabilities]
