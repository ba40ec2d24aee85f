"""Sorting new images by what the model says: confident ones into OUT/<class>/, the rest into OUT/_review/,
ranked most uncertain first on a review page. The inputs are never moved or modified: each placed image is
a hard link where the file system allows (no extra space), else a copy."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.config import ConfigError
from imgcls.data.decode import IMAGE_EXTENSIONS, ImageDecodeError, open_image
from imgcls.data.folder import class_name, list_files
from imgcls.utils.io import write_text
from imgcls.utils.templates import render

log = logging.getLogger("imgcls")
REVIEW = "_review"  # the folder of images the model is unsure of (never a class name: see `manifest`)
PAGE = "review.html"


class Sorter:
    """Places predicted images into `out`: a prediction at or above `accept` (and not an abstention) goes to
    its class's folder, every other one to `_review/`. Running it again over the same inputs changes nothing:
    an input already anywhere in `out` (the same file, or the same bytes: a review that moved it elsewhere)
    stays where it is."""

    def __init__(self, out: str | Path, accept: float) -> None:
        self.out, self.accept = Path(out), accept
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"--sort-into {out} exists and is not a folder")
        self.out.mkdir(parents=True, exist_ok=True)
        self.present = _Present(self.out)
        self.counts: dict[str, int] = {}
        self.review: list[dict[str, Any]] = []
        self.kept = 0  # already in `out` from an earlier run or review

    def add(self, pred: dict[str, Any]) -> None:
        label = pred.get("label")
        confident = label is not None and pred["probability"] >= self.accept
        folder = _safe_folder(label) if confident else REVIEW
        source = Path(pred["path"])
        where = self._placed(source) or self._place(source, self.out / folder)
        pred["sorted_to"], pred["to_review"] = str(where), not confident
        self.counts[folder] = self.counts.get(folder, 0) + 1
        if not confident:
            self.review.append({**pred, "sorted_to": str(where)})

    def finish(self, thumbnail: Callable[[np.ndarray], str], channels: int) -> dict[str, Any]:
        """Writes OUT/review.html (the review queue, most uncertain first, with `thumbnail` data URIs of the
        images' pixels) and returns the counts."""
        queue = sorted(self.review, key=lambda p: (p["probability"], p["path"]))
        for item in queue[:500]:
            item["thumbnail"] = _thumbnail(item["sorted_to"], channels, thumbnail)
        classes = {k: v for k, v in sorted(self.counts.items()) if k != REVIEW}
        write_text(
            self.out / PAGE,
            render(
                "sort_review.html",
                out=str(self.out),
                accept=self.accept,
                classes=classes,
                queue=queue,
                shown=min(len(queue), 500),
                review=REVIEW,
            ),
        )
        sorted_count = sum(classes.values())
        return {
            "sorted": sorted_count,
            "review": len(queue),
            "kept": self.kept,
            "by_class": classes,
            "page": str(self.out / PAGE),
        }

    def _placed(self, source: Path) -> Path | None:
        """Where `source` already is in OUT (same inode, or same bytes), or None."""
        found = self.present.find(source)
        if found is not None:
            self.kept += 1
        return found

    def _place(self, source: Path, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / source.name
        if target.exists():  # another input of the same name: a name of its own, the same on every run
            tag = hashlib.blake2b(os.fsencode(source.resolve()), digest_size=4).hexdigest()
            target = folder / f"{source.stem}-{tag}{source.suffix}"
        try:
            os.link(source, target)
        except OSError:  # another file system, or links not allowed: a copy (with its times)
            shutil.copy2(source, target)
        self.present.add(target)
        return target


def manifest_rows(out: str | Path) -> list[tuple[str, str]]:
    """(path relative to `out`, class) for every image in `out`'s class folders, `_review/` left out: after a
    review, what goes back into training."""
    out = Path(out)
    if not out.is_dir():
        raise ConfigError(f"{out} is not a folder")
    rows = []
    for folder in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith((".", REVIEW))):
        for file in list_files(folder, []):
            if file.suffix.lower() in IMAGE_EXTENSIONS:
                rows.append((file.relative_to(out).as_posix(), class_name(folder)))
    return rows


class _Present:
    """The files already under OUT: by (device, inode), and by size, their contents hashed only when an input
    of the same size asks (a large OUT is not read whole)."""

    def __init__(self, out: Path) -> None:
        self.by_inode: dict[tuple[int, int], Path] = {}
        self.by_size: dict[int, list[Path]] = {}
        self.digests: dict[Path, str] = {}
        for file in list_files(out, []):
            self.add(file)

    def add(self, file: Path) -> None:
        try:
            st = file.stat()
        except OSError:
            return
        self.by_inode[(st.st_dev, st.st_ino)] = file
        self.by_size.setdefault(st.st_size, []).append(file)

    def find(self, source: Path) -> Path | None:
        try:
            st = source.stat()
        except OSError:
            return None
        if (st.st_dev, st.st_ino) in self.by_inode:
            return self.by_inode[(st.st_dev, st.st_ino)]
        same_size = self.by_size.get(st.st_size, [])
        if not same_size:
            return None
        wanted = _digest(source)
        return next((f for f in same_size if self._digest(f) == wanted), None)

    def _digest(self, file: Path) -> str:
        if file not in self.digests:
            try:
                self.digests[file] = _digest(file)
            except OSError:  # gone since it was listed: matches nothing
                self.digests[file] = ""
        return self.digests[file]


def _digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def _safe_folder(label: str) -> str:
    """A class name as a folder name: path separators and a leading dot replaced (never a way out of OUT)."""
    name = label.replace("/", "_").replace("\\", "_").replace("\0", "_")
    return "_" + name if name.startswith(".") or name in ("", "..") else name


def _thumbnail(path: str, channels: int, thumbnail: Callable[[np.ndarray], str]) -> str:
    try:
        return thumbnail(np.asarray(open_image(Path(path), channels)))
    except ImageDecodeError:
        return ""
