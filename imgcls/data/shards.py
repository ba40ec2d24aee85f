"""WebDataset tar shards (the `wds` extra): reading `shards/train-{000000..000099}.tar`, and writing them.

A shard set is read the way webdataset names things (brace expansion; a sample is the members sharing a key,
the path up to the first dot of the file name; `.jpg/.png/...` holds the image, `.cls` or `.json` the label),
but indexed once with Python's tarfile instead of streamed: every sample becomes a `Member` at a known offset,
so shuffling, DDP sharding and exact mid-epoch resume work as with folders, and data that fit in RAM are
decoded once like any other. Class names come from `classes.json` beside the shards (`imgcls data pack`
writes it); without it, `.cls` numbers or `.json` label names are the classes.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from imgcls.data.decode import IMAGE_EXTENSIONS
from imgcls.data.folder import sorted_labels
from imgcls.data.manifest import SPLIT_NAMES
from imgcls.data.types import DataBundle, DataError, Member, Split
from imgcls.utils.extras import require
from imgcls.utils.io import atomic_write

log = logging.getLogger("imgcls")
CLASSES_FILE = "classes.json"
INDEX_VERSION = 1  # bump when what a shard's index holds changes
IMAGE_EXTS = {e.lstrip(".") for e in IMAGE_EXTENSIONS}
SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


@dataclass(frozen=True)
class TarMember(Member):
    """One sample's image inside an uncompressed tar shard, at a byte offset."""

    shard: Path
    name: str
    offset: int
    size: int
    stamp: str  # the shard's inode, size and times when indexed

    def read_bytes(self) -> bytes:
        with open(self.shard, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)

    def identity(self) -> str:
        return f"{self.shard}\0{self.stamp}\0{self.offset}"

    def __str__(self) -> str:
        return f"{self.shard}::{self.name}"


def is_shards(name: str) -> bool:
    """A tar file or pattern (`train-{000..009}.tar`), or a folder of .tar shards (no class folders).

    Compressed ones (.tar.gz, .tgz) are claimed too, to be refused with the reason (no offsets in them).
    """
    path = Path(name).expanduser()
    if path.is_dir():
        folders = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return any(path.glob("*.tar")) and not folders
    return name.endswith((".tar", ".tar.gz", ".tgz")) and ("{" in name or path.is_file())


def from_shards(name: str, index_cache: Path | None = None) -> DataBundle:
    """A DataBundle from tar shards: the pattern's (or folder's) train, val and test shards.

    Each shard's index (its samples' keys, offsets, sizes and labels) is kept in `index_cache`, keyed by the
    shard's path, inode, size and times: a second open of unchanged shards reads no tar header.
    """
    by_split = _shard_files(name)
    if not by_split.get("train"):
        raise DataError(f"{name}: no training shards (expected train-*.tar, or a pattern naming them)")
    folder = by_split["train"][0].parent
    names = _class_file(folder)
    skipped: list[tuple[str, str]] = []
    samples = {
        s: [x for shard in shards for x in _indexed(shard, skipped, index_cache)]
        for s, shards in by_split.items()
    }
    classes = names or _classes_from_labels(samples["train"])
    index = {c: i for i, c in enumerate(classes)}
    splits = {s: _split(items, index, names, skipped) for s, items in samples.items()}
    log.info("%s: %d shard(s), %d classes", name, sum(map(len, by_split.values())), len(classes))
    return DataBundle.of_splits(name, classes, splits, skipped)


def _shard_files(name: str) -> dict[str, list[Path]]:
    """The shard files of each split: a folder's by file-name prefix, a pattern's and its siblings'."""
    path = Path(name).expanduser()
    if path.is_dir():
        out: dict[str, list[Path]] = {}
        for shard in sorted(path.glob("*.tar")):
            word = re.split(r"[-_.]", shard.name, maxsplit=1)[0].lower()
            split = next((s for s, names in SPLIT_NAMES.items() if word in names), "train")
            out.setdefault(split, []).append(shard)
        return out
    out = {"train": _expand(name)}
    head, sep, tail = name.rpartition("train")
    if sep:  # train-{...}.tar: val-*.tar and test-*.tar beside it (any number of shards) are the other splits
        for split in ("val", "test"):
            for word in SPLIT_NAMES[split]:
                found = sorted(
                    map(Path, glob.glob(re.sub(r"\{[^}]*\}", "*", os.path.expanduser(head + word + tail))))
                )
                if found:
                    out[split] = found
                    break
    return out


def _expand(pattern: str) -> list[Path]:
    braceexpand = require("braceexpand", "wds", "WebDataset shards").braceexpand
    files = [Path(p).expanduser() for p in braceexpand(pattern)]
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} of {len(files)} shard(s) of {pattern} not found, e.g. {missing[0]}")
    return files


def _class_file(folder: Path) -> list[str] | None:
    path = folder / CLASSES_FILE
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable JSON list of class names ({e})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: expected a JSON list of class names")
    return names


@dataclass
class _Sample:
    key: str
    image: TarMember | None = None
    label: Any = None  # int (.cls) or int/str (.json "label")


def _indexed(shard: Path, skipped: list[tuple[str, str]], cache: Path | None) -> list[_Sample]:
    """The shard's samples, from the index cache when the shard is unchanged, else read and remembered."""
    try:
        st = shard.stat()
    except OSError as e:
        raise DataError(f"{shard}: cannot read ({e.strerror or e})") from None
    stamp = f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    key = hashlib.sha256(f"{INDEX_VERSION}\0{os.path.abspath(shard)}\0{stamp}".encode()).hexdigest()[:32]
    path = cache / f"{key}.json" if cache else None
    if path and path.is_file():
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
            skipped += [(where, why) for where, why in index["skipped"]]
            return [
                _Sample(k, TarMember(shard, name, offset, size, stamp) if name else None, label)
                for k, name, offset, size, label in index["samples"]
            ]
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring unreadable shard index %s (%s)", path, e)
    own: list[tuple[str, str]] = []
    samples = list(_samples(shard, stamp, own))
    skipped += own
    if path:
        rows = [
            [x.key, *((x.image.name, x.image.offset, x.image.size) if x.image else ("", 0, 0)), x.label]
            for x in samples
        ]
        text = json.dumps({"samples": rows, "skipped": own})
        try:
            atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        except OSError as e:
            log.warning("could not write the shard index %s: %s", path, e)
    return samples


def _samples(shard: Path, stamp: str, skipped: list[tuple[str, str]]) -> Iterator[_Sample]:
    """The shard's samples in order: consecutive members sharing a key, as webdataset groups them."""
    try:
        tar = tarfile.open(shard, mode="r:")  # noqa: SIM115 (closed below); uncompressed: members have offsets
    except (OSError, tarfile.TarError) as e:
        raise DataError(f"{shard}: not a readable uncompressed tar shard ({e})") from None
    current: _Sample | None = None
    with tar:
        for info in tar:
            match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", info.name) if info.isfile() else None
            if not match:
                continue
            key, ext = match.groups()
            if current is None or key != current.key:
                if current is not None:
                    yield current
                current = _Sample(key)
            _add_member(current, shard, info, ext.lower(), tar, stamp, skipped)
    if current is not None:
        yield current


def _add_member(
    sample: _Sample, shard: Path, info: tarfile.TarInfo, ext: str, tar: tarfile.TarFile, stamp: str, skipped
) -> None:
    last = ext.rsplit(".", 1)[-1]
    if last in IMAGE_EXTS and sample.image is None:
        sample.image = TarMember(shard, info.name, info.offset_data, info.size, stamp)
    elif ext in ("cls", "json"):
        raw = tar.extractfile(info).read().decode("utf-8", "replace").strip()
        try:
            sample.label = int(raw) if ext == "cls" else _json_label(json.loads(raw))
        except (ValueError, TypeError, KeyError):
            skipped.append((f"{shard}::{info.name}", f"unreadable label {raw[:40]!r}"))


def _json_label(obj: Any) -> Any:
    if isinstance(obj, dict):
        for key in ("label", "cls", "class"):
            if key in obj:
                return obj[key]
        raise KeyError("label")
    return obj


def _classes_from_labels(samples: list[_Sample]) -> list[str]:
    return sorted_labels({str(s.label) for s in samples if s.label is not None and s.image is not None})


def _split(
    samples: list[_Sample], index: dict[str, int], names: list[str] | None, skipped: list[tuple[str, str]]
) -> Split:
    keep, labels = [], []
    for s in samples:
        where = str(s.image) if s.image else s.key
        label = (
            names[s.label] if names and isinstance(s.label, int) and 0 <= s.label < len(names) else s.label
        )
        if s.image is None:
            skipped.append((where, "no image member (.jpg, .png, ...)"))
        elif label is None:
            skipped.append((where, "no label (.cls or .json)"))
        elif str(label) not in index:
            skipped.append((where, f"label {label!r} is not a class of the training shards"))
        else:
            keep.append(s.image)
            labels.append(index[str(label)])
    return Split(torch.tensor(labels, dtype=torch.long), paths=keep)


def parse_size(text: str) -> int:
    """Bytes in "1GB", "500MB", "64MiB" or "1000000".

    Example:
        >>> parse_size("1.5GB")
        1500000000
    """
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in SIZE_UNITS:
        raise DataError(f"shard size must look like 1GB, 500MB or 64MiB, not {text!r}")
    try:
        size = int(float(match.group(1)) * SIZE_UNITS[unit])
    except ValueError:
        raise DataError(f"shard size must look like 1GB, 500MB or 64MiB, not {text!r}") from None
    if size < 1:
        raise DataError(f"shard size must be positive, not {text!r}")
    return size


def pack(bundle: DataBundle, out: Path, shard_size: int = 10**9) -> dict[str, Any]:
    """Writes each split of `bundle` as `out/<split>-NNNNNN.tar` shards plus `out/classes.json`.

    Files keep their encoded bytes; tensor images are written as PNG (lossless). The shards are written in
    a temporary folder that becomes `out` only when complete: an interrupted pack leaves nothing half-made.
    Returns the counts written per split and the shard files.
    """
    wds = require("webdataset", "wds", "WebDataset shards")
    if bundle.multilabel:
        raise DataError(
            "imgcls data pack writes one class per image (.cls); multi-label data stays a CSV manifest"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and is not an empty folder; choose a new --out")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    counts: dict[str, int] = {}
    skipped: list[tuple[str, str]] = []
    try:
        tmp.mkdir(parents=True)
        for split_name in ("train", "val", "test"):
            split = getattr(bundle, split_name)
            if split is None or not len(split):
                continue
            pattern = str(tmp / f"{split_name}-%06d.tar")
            # A fixed mtime: packing the same data twice gives the same bytes.
            with wds.ShardWriter(pattern, maxsize=shard_size, maxcount=10**9, verbose=0, mtime=0) as sink:
                for sample in _encoded(split, skipped):
                    sink.write(sample)
                counts[split_name] = sink.total
        (tmp / CLASSES_FILE).write_text(
            json.dumps(bundle.classes, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except OSError as e:  # a folder that cannot be made, a full disk: nothing half-written is left
        raise DataError(f"cannot write shards to {out}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"counts": counts, "shards": sorted(p.name for p in out.glob("*.tar")), "skipped": skipped}


def _encoded(split: Split, skipped: list[tuple[str, str]]) -> Iterator[dict[str, Any]]:
    for i in range(len(split)):
        try:
            data, ext = _image_bytes(split, i)
        except OSError as e:  # a file that vanished or cannot be read: counted, not packed
            skipped.append((str(split.paths[i]), f"cannot read ({e.strerror or e})"))
            continue
        yield {"__key__": f"{i:09d}", ext: data, "cls": int(split.labels[i])}


def _image_bytes(split: Split, i: int) -> tuple[bytes, str]:
    if split.images is not None:
        image = split.images[i]
        array = image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return buffer.getvalue(), "png"
    source = split.paths[i]
    data = source.read_bytes()
    suffix = source.suffix.lower().lstrip(".") if isinstance(source, Path) else ""
    if suffix not in IMAGE_EXTS:  # a member, or a file with no image suffix: name it by its format
        try:
            with Image.open(io.BytesIO(data)) as im:
                suffix = (im.format or "png").lower().replace("jpeg", "jpg")
        except Exception:
            suffix = "png"  # not an image: training on the shards reports it as a counted skip
    return data, suffix
