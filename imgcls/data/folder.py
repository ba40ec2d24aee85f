"""Class-folder trees and CSV manifests as file lists with stable class indices."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import torch

from imgcls.config import DataConfig
from imgcls.data.decode import IMAGE_EXTENSIONS
from imgcls.data.manifest import SPLIT_NAMES, Row, read_manifest
from imgcls.data.types import DataBundle, DataError, Split

log = logging.getLogger("imgcls")
# How a skipped path that is no readable file is described (the data check counts these as warnings).
UNUSABLE_PATH = (
    "broken symbolic link",
    "vanished",
    "cannot read",
    "not a regular file",
    "cannot list",
    "folder ",
)


def from_folder(root: Path, cfg: DataConfig) -> DataBundle:
    """`root/train/<class>/*` (+ val/, test/), or a single `root/<class>/*` tree.

    Classes are the sorted sub-folders of the training tree, empty ones included, so an empty or
    missing class never shifts another class's index.
    """
    subdirs = {p.name.lower(): p for p in _visible_dirs(root)}
    split_dirs = {
        s: next((subdirs[n] for n in names if n in subdirs), None) for s, names in SPLIT_NAMES.items()
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
    if not len(bundle.train):
        unusable = (
            f"; {len(skipped)} path(s) skipped, e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        )
        raise DataError(
            f"no images in the class folders of {root} ({', '.join(classes[:5])}"
            f"{', ...' if len(classes) > 5 else ''}){unusable}"
        )
    _warn_empty_classes(bundle)
    return bundle


def from_csv(path: Path, cfg: DataConfig) -> DataBundle:
    """A manifest of `path,label[,split]` rows (see `imgcls.data.manifest`); multi-label where `cfg.task`
    says so or the rows show it (see `from_multilabel_rows`)."""
    rows, skipped = read_manifest(
        path, need_label=True, strict=cfg.strict, keep_unlabelled=cfg.task != "multiclass"
    )
    if not rows:
        raise DataError(f"{path}: no usable rows (expected lines of path,label)")
    why = multilabel_reason(rows, cfg)
    if why:
        return from_multilabel_rows(path, rows, skipped, cfg.label_sep, why)
    unlabelled = [(f"{path}:{row.line}", "no label (expected path,label)") for row in rows if not row.label]
    if unlabelled and cfg.strict:
        raise DataError(f"{unlabelled[0][0]}: {unlabelled[0][1]}")
    rows, skipped = [row for row in rows if row.label], skipped + unlabelled
    by_split: dict[str, list[Row]] = {"train": [], "val": [], "test": []}
    for row in rows:
        by_split[row.split].append(row)
    if not by_split["train"]:
        raise DataError(f"{path}: no rows for the train split")
    classes = sorted_labels({row.label for row in by_split["train"]})
    index = {c: i for i, c in enumerate(classes)}
    splits: dict[str, Split] = {}
    for split, items in by_split.items():
        if not items:
            continue
        unknown = sorted({row.label for row in items} - index.keys())
        if unknown:
            raise DataError(f"{path}: {split} rows use labels the train rows lack: {', '.join(unknown[:10])}")
        labels = torch.tensor([index[row.label] for row in items], dtype=torch.long)
        splits[split] = Split(labels, paths=[row.path for row in items])
    return DataBundle.of_splits(str(path), classes, splits, skipped)


def multilabel_reason(rows: list[Row], cfg: DataConfig) -> str:
    """Why the manifest is multi-label ("" when it is not): the config says so, a label cell lists several
    labels, or an image has rows with different labels. Never guessed from duplicate images elsewhere."""
    if cfg.task != "auto":
        return "data.task=multilabel" if cfg.task == "multilabel" else ""
    if any(cfg.label_sep in row.label for row in rows):
        return f"label cells list several labels separated by {cfg.label_sep!r}"
    first: dict[Path, str] = {}
    for row in rows:
        if row.label and first.setdefault(row.path, row.label) != row.label:
            return f"{row.path.name} has rows with different labels"
    return ""


def from_multilabel_rows(
    path: Path, rows: list[Row], skipped: list[tuple[str, str]], sep: str, why: str
) -> DataBundle:
    """Multi-label splits: each image's labels are the union of its rows' label cells (split on `sep`), so
    `dog;cat` in one row and one row per (path, label) pair both work; a row with an empty label cell is an
    image with no label (a negative). Labels come from the train rows, sorted."""
    images: dict[Path, tuple[str, set[str]]] = {}  # in first-seen order
    for row in rows:
        split, labels = images.setdefault(row.path, (row.split, set()))
        if split != row.split:
            raise DataError(f"{path}:{row.line}: {row.path.name} is in the {split} split on an earlier row")
        labels |= {label.strip() for label in row.label.split(sep)} - {""}
    by_split: dict[str, list[tuple[Path, set[str]]]] = {}
    for file, (split, labels) in images.items():
        by_split.setdefault(split, []).append((file, labels))
    if "train" not in by_split:
        raise DataError(f"{path}: no rows for the train split")
    classes = sorted_labels(set().union(*(labels for _, labels in by_split["train"])))
    if not classes:
        raise DataError(f"{path}: the train rows have no labels")
    index = {c: i for i, c in enumerate(classes)}
    splits = {}
    for split, items in by_split.items():
        unknown = sorted(set().union(*(labels for _, labels in items)) - index.keys())
        if unknown:
            raise DataError(f"{path}: {split} rows use labels the train rows lack: {', '.join(unknown[:10])}")
        targets = torch.zeros(len(items), len(classes))
        for i, (_, labels) in enumerate(items):
            targets[i, [index[label] for label in labels]] = 1.0
        splits[split] = Split(targets, paths=[file for file, _ in items])
    none = int((splits["train"].labels.sum(1) == 0).sum())
    log.info(
        "multi-label data (%s): %d labels, %d training images (%d with no label)",
        why,
        len(classes),
        len(splits["train"]),
        none,
    )
    return DataBundle.of_splits(str(path), classes, splits, skipped)


def sorted_labels(labels: set[str]) -> list[str]:
    """Class names from label texts: numeric labels sort as numbers ("2" before "10"), others as text."""
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _visible_dirs(root: Path) -> list[Path]:
    try:
        return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise DataError(f"cannot list {root}: {e.strerror or e}") from None


def class_name(folder: Path) -> str:
    """A class folder's name as text: its bytes read as UTF-8 whatever the locale's encoding (a C locale
    would give surrogate escapes), bytes that are no UTF-8 shown as \\xNN escapes."""
    return os.fsencode(folder.name).decode("utf-8", "backslashreplace")


def _class_names(root: Path) -> list[str]:
    classes = [class_name(p) for p in _visible_dirs(root)]
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
        found: list[tuple[str, str]] = []
        files = list_files(class_dir, found)
        if class_name(class_dir) not in index:
            if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in files):
                raise DataError(
                    f"{class_dir} is a class the training split lacks; known classes: {', '.join(classes)}"
                )
            continue
        skipped += found
        for p in files:
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append((str(p), "not an image file (extension)"))
                continue
            paths.append(p)
            labels.append(index[class_name(class_dir)])
    return Split(torch.tensor(labels, dtype=torch.long), paths=paths)


def list_files(folder: Path, skipped: list[tuple[str, str]]) -> list[Path]:
    """Every regular file under `folder` (hidden ones aside), sorted, following symlinked folders once.

    What cannot be a file to read is named in `skipped`: broken links, link loops, fifos, sockets and
    devices, folders that cannot be listed.
    """
    files, seen = [], set()

    def walk_error(e: OSError) -> None:
        skipped.append((str(e.filename), f"cannot list folder ({e.strerror or e})"))

    root = os.path.realpath(folder)
    for top, dirs, names in os.walk(folder, followlinks=True, onerror=walk_error):
        real = os.path.realpath(top)
        if real != root and (root.startswith(real + os.sep) or real in seen):
            why = (
                "a link to an enclosing folder (a loop)" if root.startswith(real + os.sep) else "already read"
            )
            skipped.append((top, f"folder {why}: skipped"))
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(top) / name
            why = _unusable(path)
            if why:
                skipped.append((str(path), why))
            else:
                files.append(path)
    return sorted(files)


def _unusable(path: Path) -> str | None:
    """Why `path` is not a regular file that can be read, or None."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "broken symbolic link" if path.is_symlink() else "vanished while listing"
    except OSError as e:
        return f"cannot read ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    kind = {
        stat.S_IFIFO: "a fifo",
        stat.S_IFSOCK: "a socket",
        stat.S_IFCHR: "a device",
        stat.S_IFBLK: "a device",
    }
    return f"not a regular file ({kind.get(stat.S_IFMT(mode), 'special file')})"


def _warn_empty_classes(bundle: DataBundle) -> None:
    counts = torch.bincount(bundle.train.labels, minlength=len(bundle.classes))
    empty = [c for c, n in zip(bundle.classes, counts.tolist()) if n == 0]
    if empty:
        log.warning(
            "class folder(s) with no training images: %s (kept, so indices stay stable)", ", ".join(empty)
        )
