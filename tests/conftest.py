"""Shared fixtures: tiny synthetic datasets made in tmp_path (the way torchvision fakes dataset data)."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Python writes bytecode caches even where the machine says not to (PYTHONDONTWRITEBYTECODE): each `imgcls`
# process a test starts would otherwise compile imgcls again (half a second each, dozens of processes).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: one thread each (and in the processes they start), or every OpenMP region
    # waits for a descheduled thread (PERF-NOTES: 4-8x slower).
    os.environ["OMP_NUM_THREADS"] = "1"

# Hugging Face's caches (`datasets` turns Parquet into Arrow files there) in a folder of the test run's own,
# set before `datasets` is imported, which reads it once: the user's ~/.cache/huggingface is never touched.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="imgcls-tests-hf-")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)

CLASSES = ("circle", "cross", "square")
FASHION_CLASSES = (  # Fashion-MNIST's, in label order
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# What every finished run folder holds (README, "Run folder").
RUN_FILES = (
    "config.yaml",
    "metrics.csv",
    "model.safetensors",
    "model.json",
    "state.pt",
    "curves.png",
    "confusion_matrix.png",
    "eval.json",
    "report.md",
)


def make_image(label: int, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """A learnable picture: the class decides the colour channel that is bright, plus noise."""
    arr = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    arr[..., label % 3] = rng.integers(150, 255, (size, size), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


def write_class_tree(root: Path, per_class: int, seed: int = 0, classes=CLASSES, ext: str = ".png") -> None:
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make_image(label, rng).save(root / name / f"{name}_{i}{ext}")


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """root/<class>/*.png: 3 classes x 12 images, 32 px RGB."""
    root = tmp_path / "tree"
    write_class_tree(root, per_class=12)
    return root


@pytest.fixture
def split_tree(tmp_path: Path) -> Path:
    """root/{train,val,test}/<class>/*.png."""
    root = tmp_path / "splits"
    for i, (split, n) in enumerate((("train", 16), ("val", 4), ("test", 6))):
        write_class_tree(root / split, per_class=n, seed=i)
    return root


@pytest.fixture
def csv_manifest(tmp_path: Path) -> Path:
    """images/*.png listed in data.csv as path,label (with a header)."""
    rng = np.random.default_rng(3)
    (tmp_path / "images").mkdir()
    lines = ["path,label"]
    for label, name in enumerate(CLASSES):
        for i in range(10):
            make_image(label, rng).save(tmp_path / "images" / f"{name}{i}.png")
            lines.append(f"images/{name}{i}.png,{name}")
    path = tmp_path / "data.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(autouse=True)
def _isolated_data_cache(tmp_path_factory, monkeypatch):
    """Built-in downloads never touch the user's cache; Fashion-MNIST still finds the system copy."""
    monkeypatch.setenv("IMGCLS_DATA", str(tmp_path_factory.getbasetemp() / "imgcls-data"))
    log = logging.getLogger("imgcls")
    log.propagate = True  # let caplog see our warnings
    yield
    # `cli.main` points the logger at this test's captured stderr, which closes with the test.
    log.handlers.clear()
