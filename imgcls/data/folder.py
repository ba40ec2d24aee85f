"""Class-folder trees and CSV manifests as file lists with stable class indices."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch

from imgcls.config import DataConfig
from imgcls.data.datasets import DataBundle, DataError, Split
from imgcls.data.decode import IMAGE_EXTENSIONS

log = logging.getLogger("imgcls")
SPLIT_DIRS = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}
PATH_COLUMNS = ("path", "file", "filename", "image", "filepath")
LABEL_COLUMNS = ("label", "class", "target", "category")


def from_folder(root: Path, cfg: DataConfig) -> DataBundle:
    """`root/train/<class>/*` (+ val/, test/), or a single `root/<class>/*` tree.

    Classes are the sorted sub-folders of the training tree, empty ones included, so an empty or
    missing class never shifts another class's index.
    """
    subdirs = {p.name.lower(): p for p in _visible_dirs(root)}
    split_dirs = {
        s: next((subdirs[n] for n in names if n in subdirs), None) for s, names in SPLIT_DIRS.items()
    }
    skipped: list[tuple[str, str]] = []
    if split_dirs["train"] is None:
        if split_dirs["val"] or split_dirs["test"]:
            raise DataError(f"{root} has val/test folders but no train/ folder")
        classes = _class_names(root)
        train = _scan(root, classes, skipped)
        bundle = DataBundle(str(root), classes, train, skipped=skipped, single_tree=True)
    else:
        classes = _class_names(split_dirs["train"])
        splits = {s: _scan(d, classes, skipped) for s, d in split_dirs.items() if d is not None}
        bundle = DataBundle(
            str(root), classes, splits["train"], splits.get("val"), splits.get("test"), skipped=skipped
        )
    _warn_empty_classes(bundle)
    return bundle


def from_csv(path: Path, cfg: DataConfig) -> DataBundle:
    """A manifest of `path,label[,split]` rows; paths are relative to the CSV's folder and may not leave it."""
    base = path.resolve().parent
    rows, skipped = _read_manifest(path, base, cfg.strict)
    if not rows:
        raise DataError(f"{path}: no usable rows (expected lines of path,label)")
    by_split: dict[str, list[tuple[Path, str]]] = {"train": [], "val": [], "test": []}
    for file, label, split in rows:
        by_split[split].append((file, label))
    if not by_split["train"]:
        raise DataError(f"{path}: no rows for the train split")
    classes = _sorted_labels({label for _, label in by_split["train"]})
    index = {c: i for i, c in enumerate(classes)}
    splits: dict[str, Split] = {}
    for split, items in by_split.items():
        if not items:
            continue
        unknown = sorted({label for _, label in items} - index.keys())
        if unknown:
            raise DataError(f"{path}: {split} rows use labels the train rows lack: {', '.join(unknown[:10])}")
        labels = torch.tensor([index[label] for _, label in items], dtype=torch.long)
        splits[split] = Split(labels, paths=[f for f, _ in items])
    single = "val" not in splits and "test" not in splits
    return DataBundle(
        str(path),
        classes,
        splits["train"],
        splits.get("val"),
        splits.get("test"),
        skipped=skipped,
        single_tree=single,
    )


def _read_manifest(
    path: Path, base: Path, strict: bool
) -> tuple[list[tuple[Path, str, str]], list[tuple[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read CSV manifest {path}: {e}") from None
    cols = (0, 1, 2)
    start = 0
    if lines and _looks_like_header(lines[0]):
        header = [h.strip().lower() for h in lines[0]]
        cols = (
            next(i for i, h in enumerate(header) if h in PATH_COLUMNS),
            next(i for i, h in enumerate(header) if h in LABEL_COLUMNS),
            header.index("split") if "split" in header else -1,
        )
        start = 1
    rows, skipped = [], []
    for lineno, line in enumerate(lines[start:], start=start + 1):
        if not line or all(not c.strip() for c in line):
            continue
        try:
            rows.append(_parse_row(line, cols, base))
        except DataError as e:
            if strict:
                raise DataError(f"{path}:{lineno}: {e}") from None
            skipped.append((f"{path}:{lineno}", str(e)))
    return rows, skipped


def _looks_like_header(row: list[str]) -> bool:
    names = {c.strip().lower() for c in row}
    return bool(names & set(PATH_COLUMNS)) and bool(names & set(LABEL_COLUMNS))


def _parse_row(line: list[str], cols: tuple[int, int, int], base: Path) -> tuple[Path, str, str]:
    path_col, label_col, split_col = cols
    if len(line) <= max(path_col, label_col):
        raise DataError(f"expected path,label but got {len(line)} column(s)")
    rel, label = line[path_col].strip(), line[label_col].strip()
    if not rel or not label:
        raise DataError("empty path or label")
    split = line[split_col].strip().lower() if 0 <= split_col < len(line) else "train"
    split = next((s for s, names in SPLIT_DIRS.items() if split in names), None) or ""
    if not split:
        raise DataError(f"unknown split {line[split_col].strip()!r} (use train, val or test)")
    file = (base / rel).resolve()
    if not file.is_relative_to(base):
        raise DataError(f"path {rel!r} escapes the manifest's folder {base}; refused")
    if not file.is_file():
        raise DataError(f"file not found: {rel}")
    return file, label, split


def _sorted_labels(labels: set[str]) -> list[str]:
    # Numeric labels sort as numbers ("2" before "10"); anything else sorts as text.
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _visible_dirs(root: Path) -> list[Path]:
    try:
        return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise DataError(f"cannot list {root}: {e.strerror or e}") from None


def _class_names(root: Path) -> list[str]:
    classes = [p.name for p in _visible_dirs(root)]
    if not classes:
        raise DataError(
            f"no class folders in {root}: expected {root}/<class>/<image> "
            f"or {root}/train/<class>/<image> (with optional val/ and test/)"
        )
    return classes


def _scan(root: Path, classes: list[str], skipped: list[tuple[str, str]]) -> Split:
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for class_dir in _visible_dirs(root):
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
        if class_dir.name not in index:
            if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in files):
                raise DataError(
                    f"{class_dir} is a class the training split lacks; known classes: {', '.join(classes)}"
                )
            continue
        for p in files:
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append((str(p), "not an image file (extension)"))
                continue
            paths.append(p)
            labels.append(index[class_dir.name])
    return Split(torch.tensor(labels, dtype=torch.long), paths=paths)


def _warn_empty_classes(bundle: DataBundle) -> None:
    counts = torch.bincount(bundle.train.labels, minlength=len(bundle.classes))
    empty = [c for c, n in zip(bundle.classes, counts.tolist()) if n == 0]
    if empty:
        log.warning(
            "class folder(s) with no training images: %s (kept, so indices stay stable)", ", ".join(empty)
        )
