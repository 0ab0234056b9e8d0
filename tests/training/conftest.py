"""Small real samples from the shared datasets, assembled per test in a temporary folder.

The images stay in ``../shared/datasets`` (never copied into the repository): tests copy a
handful into ``tmp_path``. Where the folder is absent the tests that need it skip, saying so.
Set ``MASKGATE_TEST_DATASETS`` to use another location.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from maskgate.config import PathsConfig

ROOT = Path(__file__).parents[2]


def datasets_root() -> Path:
    configured = os.environ.get("MASKGATE_TEST_DATASETS")
    path = Path(configured) if configured else PathsConfig().datasets
    return path if path.is_absolute() else ROOT / path


DATASETS = datasets_root()
needs_datasets = pytest.mark.skipif(
    not (DATASETS / "folders" / "chandrikadeb7").is_dir(),
    reason=f"shared datasets not found at {DATASETS} (set MASKGATE_TEST_DATASETS)",
)


def sample_files(folder: Path, count: int) -> list[Path]:
    """The first `count` images of `folder` (sorted: the same sample every run); skips without it."""
    if not folder.is_dir():
        pytest.skip(f"shared datasets not found: no {folder} (set MASKGATE_TEST_DATASETS)")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".jpg")[:count]


def make_faces_folder(root: Path, per_class: int) -> Path:
    """A folder-per-class source from real images: chandrikadeb7 faces, comp6721 improper photos."""
    picks = {
        "with_mask": DATASETS / "folders/chandrikadeb7/with_mask",
        "without_mask": DATASETS / "folders/chandrikadeb7/without_mask",
        "mask_weared_incorrect": DATASETS / "folders/comp6721/mask_weared_incorrect",
    }
    for name, folder in picks.items():
        (root / name).mkdir(parents=True)
        for file in sample_files(folder, per_class):
            shutil.copy(file, root / name / file.name)
    return root


@pytest.fixture
def datasets() -> Path:
    if not (DATASETS / "folders" / "chandrikadeb7").is_dir():
        pytest.skip(f"shared datasets not found at {DATASETS} (set MASKGATE_TEST_DATASETS)")
    return DATASETS


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compact model trained for one epoch on a few real faces at 32 px (the slow part, shared)."""
    if not (DATASETS / "folders" / "chandrikadeb7").is_dir():
        pytest.skip(f"shared datasets not found at {DATASETS} (set MASKGATE_TEST_DATASETS)")
    from maskgate.crop import CropSpec
    from maskgate.training.datasets import DataSpec
    from maskgate.training.split import SplitConfig
    from maskgate.training.train import TrainConfig, train

    base = tmp_path_factory.mktemp("tiny")
    source = make_faces_folder(base / "faces", per_class=24)
    config = TrainConfig(
        arch="compact",
        crop=CropSpec(size=32),
        epochs=1,
        batch_size=16,
        split=SplitConfig(val=0.25, test=0.25, seed=7),
        progress=False,
    )
    result = train([DataSpec.parse(str(source))], base / "model", config, base / "cache")
    return result.folder


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
