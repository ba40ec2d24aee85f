"""Builders of the data sources users bring from elsewhere, made in tmp_path: Hugging Face datasets
(Parquet, `save_to_disk`, an imagefolder with metadata.csv) and WebDataset shards."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import CLASSES, make_image

# Not in sorted order: a ClassLabel's own order must survive.
HF_CLASSES = ["square", "circle", "cross"]


def png_rows(per_class: int, seed: int, size: int = 16) -> tuple[list[bytes], list[int]]:
    """Encoded PNGs and their labels (indices into HF_CLASSES), learnable by colour."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in range(len(HF_CLASSES)):
        for _ in range(per_class):
            buffer = io.BytesIO()
            make_image(label, rng, size).save(buffer, format="PNG")
            images.append(buffer.getvalue())
            labels.append(label)
    return images, labels


def hf_dataset(per_class: int, seed: int, size: int = 16):
    """A `datasets.Dataset` with an Image column and a ClassLabel column."""
    import datasets

    images, labels = png_rows(per_class, seed, size)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=HF_CLASSES)})
    rows = {"image": [{"bytes": b, "path": None} for b in images], "label": labels}
    return datasets.Dataset.from_dict(rows, features=features)


def saved_dataset(root: Path, train: int = 16, test: int = 4, size: int = 16) -> Path:
    """A DatasetDict (train, test) written with save_to_disk."""
    import datasets

    splits = {"train": hf_dataset(train, 0, size), "test": hf_dataset(test, 1, size)}
    datasets.DatasetDict(splits).save_to_disk(str(root))
    return root


def parquet_file(path: Path, per_class: int = 12, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    hf_dataset(per_class, 2, size).to_parquet(str(path))
    return path


def digits_parquet(folder: Path) -> str:
    """scikit-learn's digits as folder/train.parquet + folder/test.parquet (PNG bytes, ClassLabel): `hf:folder`."""
    import datasets

    from imgcls.config import DataConfig
    from imgcls.data.datasets import open_dataset

    digits = open_dataset(DataConfig(name="digits", val_split=0))
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=digits.classes)}
    )
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train", "test"):
        split = getattr(digits, name)
        cells = []
        for image in split.images:
            buffer = io.BytesIO()
            Image.fromarray(image[0].numpy()).save(buffer, format="PNG")
            cells.append({"bytes": buffer.getvalue(), "path": None})
        rows = {"image": cells, "label": split.labels.tolist()}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(folder / f"{name}.parquet"))
    return f"hf:{folder}"


def shard_set(tmp_path: Path, split_tree: Path, shard_size: str = "4KB") -> Path:
    """`imgcls data pack` of a class tree with train/val/test folders."""
    import imgcls

    out = tmp_path / "shards"
    imgcls.pack_data(str(split_tree), out, shard_size=shard_size)
    return out


__all__ = [
    "CLASSES",
    "HF_CLASSES",
    "digits_parquet",
    "hf_dataset",
    "parquet_file",
    "png_rows",
    "saved_dataset",
    "shard_set",
]
