"""Hugging Face datasets (the `hf` extra): Hub datasets, `save_to_disk` folders, Parquet files, imagefolders.

Loading, downloading and caching are the `datasets` library's own (`load_dataset`, `load_from_disk`); imgcls
only reads the rows. Each image is a `Member` that hands its encoded bytes to imgcls's decoder, so a broken
image is a counted skip as in a folder, and the data go through the same in-RAM or streaming path: decoded
into RAM when they fit, else read row by row from the memory-mapped Arrow files, which also lets a run
shuffle, shard across DDP ranks and resume mid-epoch exactly as with folders.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imgcls.config import DataConfig
from imgcls.data.folder import sorted_labels
from imgcls.data.manifest import LABEL_COLUMNS, SPLIT_NAMES
from imgcls.data.types import DataBundle, DataError, Member, Split
from imgcls.utils.extras import require

log = logging.getLogger("imgcls")
PREFIX = "hf:"
SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk leaves in its folder


def is_hf(name: str) -> bool:
    """`hf:...`, a folder written by `save_to_disk`, or a Parquet file."""
    path = Path(name).expanduser()
    saved = path.is_dir() and any((path / m).is_file() for m in SAVED_MARKERS)
    return name.startswith(PREFIX) or saved or (path.is_file() and path.suffix.lower() == ".parquet")


class Rows:
    """One split's image column, read row by row as {bytes, path} (undecoded)."""

    def __init__(self, dataset: Any, column: str, name: str) -> None:
        datasets = require("datasets", "hf", "Hugging Face datasets")
        try:
            self.rows = dataset.select_columns([column]).cast_column(column, datasets.Image(decode=False))
        except (ValueError, TypeError, NotImplementedError) as e:  # pyarrow: a column of numbers, say
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise DataError(f"{name}: column {column!r} does not hold images ({first})") from None
        self.column, self.name = column, name
        self.fingerprint = self.rows._fingerprint  # changes with the data: the decode cache's key

    def read(self, index: int) -> bytes:
        cell = self.rows[index][self.column]
        if cell.get("bytes"):
            return cell["bytes"]
        if cell.get("path"):  # an imagefolder's rows point at their files
            return Path(cell["path"]).read_bytes()
        return b""  # decodes as "empty file": a counted skip


@dataclass(frozen=True)
class Row(Member):
    """One row's image (equal and hashed by its table, which compares by identity, and its index)."""

    rows: Rows
    index: int

    def read_bytes(self) -> bytes:
        return self.rows.read(self.index)

    def identity(self) -> str:
        return f"{self.rows.fingerprint}:{self.index}"

    def __str__(self) -> str:
        return f"{self.rows.name}[{self.index}]"


def from_hf(name: str, cfg: DataConfig) -> DataBundle:
    """A DataBundle from a Hugging Face dataset; its own splits are kept (val/test carved where missing)."""
    local = Path(name.removeprefix(PREFIX)).expanduser().exists()
    with _progress_bars(shown=not local):  # a download's bars help; local reads and casts are quick
        loaded = _load(name)
    with _progress_bars(shown=False):
        return _bundle(loaded, name, cfg)


@contextmanager
def _progress_bars(shown: bool) -> Iterator[None]:
    """`datasets` progress bars on or off for a moment, as they were afterwards (the user's process state)."""
    datasets = require("datasets", "hf", "Hugging Face datasets")
    was = datasets.is_progress_bar_enabled()
    (datasets.enable_progress_bars if shown else datasets.disable_progress_bars)()
    try:
        yield
    finally:
        (datasets.enable_progress_bars if was else datasets.disable_progress_bars)()


def _bundle(loaded: Any, name: str, cfg: DataConfig) -> DataBundle:
    splits = _named_splits(loaded, name)
    if "train" not in splits:
        raise DataError(f"{name}: no train split (found: {', '.join(sorted(splits)) or 'none'})")
    train = splits["train"]
    image_col = _image_column(train, cfg.image_column, name)
    label_col = _label_column(train, cfg.label_column, image_col, name)
    classes, index = _classes(train, label_col)
    skipped: list[tuple[str, str]] = []
    built = {s: _split(ds, s, image_col, label_col, index, name, skipped) for s, ds in splits.items()}
    log.info("%s: image column %r, label column %r, %d classes", name, image_col, label_col, len(classes))
    return DataBundle.of_splits(name, classes, built, skipped)


def _load(name: str) -> Any:
    """The `datasets` object for `name`: a local folder or file, else a Hub id `OWNER/NAME[:CONFIG]`."""
    datasets = require("datasets", "hf", "Hugging Face datasets")
    spec = name.removeprefix(PREFIX)
    path = Path(spec).expanduser()
    try:
        if path.is_dir() and any((path / m).is_file() for m in SAVED_MARKERS):
            return datasets.load_from_disk(str(path))
        if path.is_file() and path.suffix.lower() == ".parquet":
            return datasets.load_dataset("parquet", data_files={"train": str(path)})
        if path.is_dir():  # Parquet files in split-named files, an imagefolder with metadata.csv, ...
            return datasets.load_dataset(str(path))
        hub_id, _, config = spec.partition(":")
        return datasets.load_dataset(hub_id, config or None)
    except Exception as e:  # the library's errors have many types (network, cache, format): one line each
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(
            f"could not load {name}: {type(e).__name__}: {first}. Hub datasets download into the "
            "Hugging Face cache ($HF_HOME); offline, set HF_DATASETS_OFFLINE=1 to read what is cached there"
        ) from None


def _named_splits(loaded: Any, name: str) -> dict[str, Any]:
    """{train|val|test: Dataset} from a Dataset (train only) or a DatasetDict with any split names."""
    if not hasattr(loaded, "keys"):
        return {"train": loaded}
    out, ignored = {}, []
    for key in loaded.keys():  # noqa: SIM118 (a DatasetDict)
        split = next((s for s, names in SPLIT_NAMES.items() if key.lower() in names), None)
        if split is None or split in out:
            ignored.append(key)
        else:
            out[split] = loaded[key]
    if ignored:
        log.info(
            "%s: split(s) %s not used (imgcls reads train, val/validation and test)", name, ", ".join(ignored)
        )
    return out


def _image_column(ds: Any, wanted: str | None, name: str) -> str:
    datasets = require("datasets", "hf", "Hugging Face datasets")
    images = [c for c, f in ds.features.items() if isinstance(f, datasets.Image)]
    if wanted:
        if wanted not in ds.features:
            raise DataError(
                f"{name}: no column {wanted!r} (data.image_column); columns: {', '.join(ds.features)}"
            )
        return wanted
    if not images:
        raise DataError(
            f"{name}: no image column (columns: {', '.join(ds.features)}); name it with data.image_column"
        )
    return images[0]


def _label_column(ds: Any, wanted: str | None, image_col: str, name: str) -> str:
    datasets = require("datasets", "hf", "Hugging Face datasets")
    if wanted:
        if wanted not in ds.features:
            raise DataError(
                f"{name}: no column {wanted!r} (data.label_column); columns: {', '.join(ds.features)}"
            )
        if wanted == image_col or isinstance(ds.features[wanted], datasets.Image):
            raise DataError(f"{name}: data.label_column {wanted!r} holds images, not labels")
        return wanted
    class_labels = [c for c, f in ds.features.items() if isinstance(f, datasets.ClassLabel)]
    named = [c for c in ds.features if c.lower() in LABEL_COLUMNS and c != image_col]
    found = class_labels or named
    if not found:
        raise DataError(
            f"{name}: no label column (a ClassLabel, or one named {', '.join(LABEL_COLUMNS)}); "
            f"columns: {', '.join(ds.features)}; name it with data.label_column"
        )
    return found[0]


def _classes(train: Any, label_col: str) -> tuple[list[str], dict[Any, int]]:
    """A ClassLabel's own names in its order; else the training split's sorted label values."""
    feature = train.features[label_col]
    names = getattr(feature, "names", None)
    if names:
        return list(names), {i: i for i in range(len(names))}
    values = {v for v in train[label_col] if v is not None and v != ""}
    classes = sorted_labels({str(v) for v in values})
    by_name = {c: i for i, c in enumerate(classes)}
    return classes, {v: by_name[str(v)] for v in values}


def _split(
    ds: Any,
    split: str,
    image_col: str,
    label_col: str,
    index: dict[Any, int],
    name: str,
    skipped: list[tuple[str, str]],
) -> Split:
    """Rows with a known label; the others are counted skips (a -1 label is the Hub's "unlabelled")."""
    rows = Rows(ds, image_col, f"{name}/{split}")
    keep, labels = [], []
    unknown = 0
    for i, value in enumerate(ds[label_col]):
        if value in index:
            keep.append(i)
            labels.append(index[value])
        elif value is None or value == "" or value == -1:
            skipped.append((f"{rows.name}[{i}]", "no label"))
        else:
            unknown += 1
            skipped.append((f"{rows.name}[{i}]", f"label {value!r} is not a class of the train split"))
    if unknown:
        log.warning("%s: %d row(s) with labels the train split does not have, skipped", rows.name, unknown)
    return Split(torch.tensor(labels, dtype=torch.long), paths=[Row(rows, i) for i in keep])
