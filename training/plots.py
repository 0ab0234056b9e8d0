"""PNG plots: the model folder's training curves and confusion matrix, and sheets of face crops to review."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from maskgate.core import LABELS


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def training_curves(
    history: Mapping[str, Sequence[float]], path: Path, best_epoch: int | None = None
) -> None:
    plt = _pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for key, ax in (("loss", loss_ax), ("accuracy", acc_ax)):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + key)
            if values:
                epochs = np.arange(1, len(values) + 1)
                ax.plot(epochs, values, style, label=("validation " if prefix else "training ") + key)
        if best_epoch:
            ax.axvline(best_epoch, color="grey", lw=0.8, ls=":", label="kept (best validation loss)")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def confusion_plot(matrix: np.ndarray, path: Path, title: str) -> None:
    plt = _pyplot()
    names = [label.value for label in LABELS]
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            colour = "white" if share[i, j] > 0.6 else "black"
            ax.text(j, i, f"{matrix[i, j]}\n{share[i, j]:.1%}", ha="center", va="center", color=colour)
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def face_sheet(crops: np.ndarray, captions: Sequence[str], path: Path, columns: int = 8) -> None:
    """Face crops in a grid, each above its caption: a sheet a person can review at a glance."""
    plt = _pyplot()
    rows = max(1, -(-len(crops) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.9), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, crop, caption in zip(axes.flat[: len(crops)], crops, captions, strict=True):
        grey = crop.shape[-1] == 1
        ax.imshow(crop.squeeze(-1) if grey else crop, cmap="gray" if grey else None, vmin=0, vmax=255)
        ax.set_title(caption, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
