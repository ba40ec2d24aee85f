"""The one CSV manifest reader, for training, the data check and prediction.

A manifest lists images as `path[,label[,split]]` rows. A header row is recognised by its column names
(path/file/filename/image/filepath; label/class/target/category; split) and may put the columns in any
order; without one, the order is path, label, split. UTF-8 with or without a BOM, any line ending, CSV
quoting. Paths are relative to the manifest's folder and may not leave it, judged lexically (`..` and
absolute paths elsewhere are refused; a folder that is a symlink inside it is fine, wherever it points).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from imgcls.data.types import DataError

PATH_COLUMNS = ("path", "file", "filename", "image", "filepath")
LABEL_COLUMNS = ("label", "labels", "class", "target", "category", "tags")
SPLIT_NAMES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}


@dataclass(frozen=True)
class Row:
    path: Path
    label: str  # "" where the manifest has no label for the row
    split: str  # train, val or test ("train" where the manifest has no split column)
    line: int = 0  # the row's line in the manifest


def read_manifest(
    path: str | Path, *, need_label: bool, strict: bool = False, keep_unlabelled: bool = False
) -> tuple[list[Row], list[tuple[str, str]]]:
    """The usable rows of a manifest, and (`file:line`, reason) for each row that names no usable image.

    `need_label`: the manifest must have a label column, and a row with an empty label is skipped unless
    `keep_unlabelled` (multi-label data: an image with no label is a negative example).

    Raises:
        DataError: the file cannot be read as UTF-8 CSV, or (with `strict`) any row is unusable.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}); save the manifest as UTF-8") from None
    except (OSError, csv.Error) as e:
        raise DataError(f"cannot read CSV manifest {path}: {e}") from None
    columns, start = _columns(lines[0] if lines else [], need_label)
    if need_label and keep_unlabelled and columns[1] < 0:
        raise DataError(f"{path} has no label column")
    base = Path(os.path.abspath(path.parent))
    rows, skipped = [], []
    for lineno, line in enumerate(lines[start:], start=start + 1):
        if not line or all(not c.strip() for c in line):
            continue
        try:
            rows.append(_row(line, columns, base, need_label, keep_unlabelled, lineno))
        except DataError as e:
            if strict:
                raise DataError(f"{path}:{lineno}: {e}") from None
            skipped.append((f"{path}:{lineno}", str(e)))
    return rows, skipped


def contained(base: Path, relative: str) -> Path | None:
    """`base / relative` normalised lexically, or None where it leaves `base`."""
    file = os.path.normpath(os.path.join(base, relative))  # strings: Path.parents is slow on 100k rows
    inside = file == str(base) or file.startswith(os.path.join(str(base), ""))
    return Path(file) if inside else None


def _columns(first: list[str], need_label: bool) -> tuple[tuple[int, int, int], int]:
    """(path, label, split) column indices (-1: absent) and the first data row."""
    header = [h.strip().lower() for h in first]
    if not set(header) & set(PATH_COLUMNS):
        return (0, 1, 2), 0
    path_col = next(i for i, h in enumerate(header) if h in PATH_COLUMNS)
    label_col = next((i for i, h in enumerate(header) if h in LABEL_COLUMNS), -1)
    if need_label and label_col < 0:
        raise DataError(
            f"the manifest header {','.join(first)} has no label column ({', '.join(LABEL_COLUMNS)})"
        )
    split_col = header.index("split") if "split" in header else -1
    return (path_col, label_col, split_col), 1


def _row(
    line: list[str],
    columns: tuple[int, int, int],
    base: Path,
    need_label: bool,
    keep_unlabelled: bool,
    lineno: int,
) -> Row:
    path_col, label_col, split_col = columns
    cell = lambda i: line[i].strip() if 0 <= i < len(line) else ""  # noqa: E731
    relative, label = cell(path_col), cell(label_col)
    if not relative:
        raise DataError("empty path")
    # An empty label cell may be kept (a multi-label negative); a row without the cell is malformed.
    if need_label and not label and (not keep_unlabelled or label_col >= len(line)):
        raise DataError("no label (expected path,label)")
    split = _split(cell(split_col)) if cell(split_col) else "train"
    file = contained(base, relative)
    if file is None:
        raise DataError(f"path {relative!r} leaves the manifest's folder {base}; refused")
    if not file.is_file():
        raise DataError(f"file not found: {relative}")
    return Row(file, label, split, lineno)


def _split(text: str) -> str:
    name = next((s for s, names in SPLIT_NAMES.items() if text.lower() in names), None)
    if name is None:
        raise DataError(f"unknown split {text!r} (use train, val or test)")
    return name
