"""The data doctor: finds what would spoil a training run before it starts.

Broken files (undecodable, truncated, zero-byte, not images, decompression bombs), odd images (CMYK,
16-bit, palette with transparency, animated, EXIF-rotated, extreme aspect ratios, tiny), class counts and
imbalance, classes missing from a split, exact duplicates (same bytes or same pixels) and near-duplicates
(a 64-bit difference hash) within a split and across splits (leakage), and the per-channel mean/std.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
import warnings
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from imgcls.data.decode import MAX_PIXELS, ImageDecodeError, open_image
from imgcls.data.folder import UNUSABLE_PATH
from imgcls.data.types import DataBundle, Split

SPLITS = ("train", "val", "test")
TINY_SIDE = 16  # pixels: smaller images hold little to learn from
EXTREME_ASPECT = 4.0  # width/height (or inverse) beyond this is distorted badly by square resizing
IMBALANCE_WARNING = 10.0  # largest / smallest training class
NEAR_BITS = 4  # difference-hash distance (of 64 bits) at or under which two images are candidates...
NEAR_PIXELS = 4.0  # ...confirmed when their 16x16 gray thumbnails differ by at most this (of 255) on average
THUMB = 16
MAX_BUCKET = 256  # hash buckets larger than this (flat, near-empty images) are not paired exhaustively
PROCESS_THRESHOLD = 4000  # files; below this, threads (no process start-up)
LIST_LIMIT = 200  # pairs/paths listed per finding in the report (all are counted)


@dataclass
class Finding:
    severity: str  # "error" (exit 1) or "warning"
    kind: str
    message: str
    items: list[Any] = field(default_factory=list)  # paths, or [path, path] pairs
    count: int = 0


@dataclass
class DataReport:
    dataset: str
    num_images: int
    class_counts: dict[str, dict[str, int]]
    stats: dict[str, Any]
    findings: list[Finding]
    seconds: float = 0.0

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": not self.errors}


@dataclass
class _Image:
    """What one image file says about itself (or why it cannot be read)."""

    split: str
    path: str
    error: tuple[str, str] | None = None  # (kind, reason)
    odd: list[str] = field(default_factory=list)
    byte_hash: str = ""
    pixel_hash: str = ""
    dhash: int = 0
    thumb: np.ndarray | None = None  # THUMB x THUMB gray uint8, to confirm near-duplicates
    size: tuple[int, int] = (0, 0)
    gray: bool = True
    sums: np.ndarray | None = None  # per-channel sum and sum of squares of [0, 1] pixels, and the pixel count


def check(bundle: DataBundle, *, near: bool = True) -> DataReport:
    """Examines every image of a dataset (before decoding for training) and returns the findings.

    Example:
        >>> report = check(open_dataset(DataConfig(name="my_folder")))   # doctest: +SKIP
        >>> [f.kind for f in report.errors]                              # doctest: +SKIP
    """
    start = time.perf_counter()
    splits = {name: getattr(bundle, name) for name in SPLITS if getattr(bundle, name) is not None}
    findings: list[Finding] = []
    not_images = [f"{where}: {why}" for where, why in bundle.skipped if "not an image" in why]
    if not_images:
        findings.append(_finding("error", "not-image", ERROR_MESSAGES["not-image"], not_images))
    unusable = [f"{where}: {why}" for where, why in bundle.skipped if why.startswith(UNUSABLE_PATH)]
    if unusable:
        findings.append(_finding("warning", "unusable-path", "paths that are no readable file (skipped)", unusable))
    bad_rows = [f"{where}: {why}" for where, why in bundle.skipped
                if "not an image" not in why and not why.startswith(UNUSABLE_PATH)]  # fmt: skip
    if bad_rows:
        findings.append(
            _finding("error", "unusable-entry", "manifest rows that name no usable image", bad_rows)
        )
    if all(s.images is not None for s in splits.values()):
        images = _tensor_images(splits)
    else:
        images = _file_images(splits)
    findings += _file_findings(images)
    counts = {name: _class_counts(split.labels, bundle.classes) for name, split in splits.items()}
    findings += _class_findings(counts, bundle.classes)
    findings += _duplicate_findings(images, near)
    report = DataReport(
        dataset=bundle.name,
        num_images=sum(len(s) for s in splits.values()),
        class_counts=counts,
        stats=_stats(images),
        findings=findings,
    )
    report.seconds = round(time.perf_counter() - start, 2)
    return report


def leakage(bundle: DataBundle) -> list[Finding]:
    """The cheap checks run before training: identical files (or tensors) in two splits."""
    splits = {name: getattr(bundle, name) for name in SPLITS if getattr(bundle, name) is not None}
    if len(splits) < 2:
        return []
    if all(s.images is not None for s in splits.values()):
        images = _tensor_images(splits, dhash=False)
    else:
        images = [
            _Image(name, str(p), byte_hash=_byte_hash(p)) for name, s in splits.items() for p in s.paths or []
        ]
    return [f for f in _duplicate_findings(images, near=False) if f.severity == "error"]


def duplicate_groups(split: Split) -> tuple[np.ndarray, int]:
    """A group id per image: identical and near-identical images (as `check` defines them) share one.

    Returns the ids (each group's smallest index) and the number of groups with more than one image.
    Splits carved along these groups never put two copies of one picture on both sides.
    """
    images = _tensor_images({"train": split}) if split.images is not None else _file_images({"train": split})
    parent = np.arange(len(images))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(a: int, b: int) -> None:
        ra, rb = root(a), root(b)
        parent[max(ra, rb)] = min(ra, rb)

    index = {id(img): i for i, img in enumerate(images)}
    by_key: dict[str, int] = {}
    for i, img in enumerate(images):
        for key in {img.byte_hash, img.pixel_hash, img.path if split.images is None else ""} - {""}:
            join(by_key.setdefault(key, i), i)
    for a, b in _near_pairs(images).values():
        join(index[id(a)], index[id(b)])
    groups = np.array([root(i) for i in range(len(images))], dtype=np.int64)
    shared = int((np.bincount(groups, minlength=len(groups)) > 1).sum())
    return groups, shared


# -- reading -----------------------------------------------------------------------------------------


def _file_images(splits: dict[str, Any]) -> list[_Image]:
    """Inspects every file; large datasets in worker processes (the per-file work is mostly Python,
    which threads would serialize on the GIL), small ones in threads (no start-up cost)."""
    jobs = [(name, Path(p)) for name, split in splits.items() for p in split.paths or []]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if len(jobs) >= PROCESS_THRESHOLD and cores > 1:
        chunks = [jobs[i : i + 512] for i in range(0, len(jobs), 512)]
        with ProcessPoolExecutor(max_workers=cores) as pool:
            return [info for part in pool.map(_inspect_many, chunks) for info in part]
    with ThreadPoolExecutor(max_workers=min(32, 2 * cores)) as pool:
        return list(pool.map(lambda job: _inspect(*job), jobs, chunksize=32))


def _inspect_many(jobs: list[tuple[str, Path]]) -> list[_Image]:
    return [_inspect(*job) for job in jobs]


def _byte_hash(path: Path) -> str:
    try:
        return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    except OSError:
        return ""


def _inspect(split: str, path: Path) -> _Image:
    info = _Image(split, str(path))
    try:
        raw = path.read_bytes()
    except OSError as e:
        info.error = ("unreadable", f"cannot read ({e.strerror or e})")
        return info
    if not raw:
        info.error = ("zero-byte", "empty file (0 bytes)")
        return info
    info.byte_hash = hashlib.blake2b(raw, digest_size=16).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(raw)) as im:
                info.size = im.size
                if im.width * im.height > MAX_PIXELS:
                    info.error = ("bomb", f"decompression bomb ({im.width}x{im.height} pixels)")
                    return info
                info.odd = _oddities(im)
                info.gray = im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
    except UnidentifiedImageError:
        info.error = ("not-image", "not an image file")
        return info
    except Exception as e:  # headers PIL cannot parse
        info.error = ("corrupt", f"unreadable header ({type(e).__name__})")
        return info
    try:
        image = open_image(raw, 3)
    except ImageDecodeError as e:
        detail = e.reason.split("(", 1)[-1]  # PIL's own words, after imgcls's summary
        truncated = any(w in detail for w in ("truncated", "EOF", "broken data stream"))
        kind = "truncated" if truncated else "corrupt"
        info.error = (kind, e.reason)
        return info
    pixels = np.asarray(image, dtype=np.uint8)
    info.pixel_hash = hashlib.blake2b(
        pixels.tobytes() + repr(pixels.shape).encode(), digest_size=16
    ).hexdigest()
    luma = image.convert("L")
    gray = np.asarray(luma.resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    info.dhash = _pack_bits((gray[:, 1:] > gray[:, :-1]).reshape(1, -1))[0]
    info.thumb = np.asarray(luma.resize((THUMB, THUMB), Image.Resampling.BILINEAR), dtype=np.uint8)
    x = pixels.reshape(-1, 3).astype(np.float64) / 255
    info.sums = np.concatenate([x.sum(0), (x * x).sum(0), [len(x)]])
    return info


def _oddities(im: Image.Image) -> list[str]:
    odd = []
    if im.mode == "CMYK":
        odd.append("cmyk")
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F") or (
        im.format == "PNG" and im.info.get("bits", 8) == 16
    ):
        odd.append("16-bit")
    if im.mode == "P" and "transparency" in im.info:
        odd.append("palette-transparency")
    if getattr(im, "n_frames", 1) > 1:
        odd.append("animated")
    try:
        if im.format in ("JPEG", "MPO", "TIFF", "WEBP", "HEIF") and im.getexif().get(0x0112, 1) not in (
            1,
            None,
        ):
            odd.append("exif-rotated")
    except Exception:  # a broken EXIF block is not worth an error of its own
        pass
    w, h = im.size
    if max(w, h) > EXTREME_ASPECT * max(1, min(w, h)):
        odd.append("extreme-aspect")
    if min(w, h) < TINY_SIDE:
        odd.append("tiny")
    return odd


def _tensor_images(splits: dict[str, Any], dhash: bool = True) -> list[_Image]:
    """In-memory datasets: pixel fingerprints, difference hashes, thumbnails and stats on whole tensors."""
    out = []
    for name, split in splits.items():
        images = split.images.contiguous()
        fingerprints = _fingerprints(images)
        codes, thumbs = _dhash_tensor(images) if dhash else (np.zeros(len(images), dtype=np.uint64), None)
        paths = split.paths or [f"{name}[{i}]" for i in range(len(images))]
        size, gray = tuple(images.shape[-2:]), images.shape[1] == 1
        for i, (p, f, c) in enumerate(zip(paths, fingerprints, codes)):
            thumb = thumbs[i] if thumbs is not None else None
            out.append(_Image(name, str(p), pixel_hash=f, dhash=int(c), thumb=thumb, size=size, gray=gray))
        if out and dhash:
            out[-1].sums = _tensor_sums(images)  # one entry carries the split's totals
    return out


def _fingerprints(images: torch.Tensor) -> list[str]:
    """A 64-bit random-projection fingerprint per image (wrapping int64 arithmetic), with the shape:
    equal images always match; a collision of different images has odds of about 2^-64 per pair."""
    weights = torch.randint(-(2**62), 2**62, (images[0].numel(),), generator=torch.Generator().manual_seed(0))
    codes = torch.cat(
        [(chunk.reshape(len(chunk), -1).long() * weights).sum(1) for chunk in images.split(8192)]
    )
    return [f"{tuple(images.shape[1:])}:{c}" for c in codes.tolist()] if len(images) else []


def _dhash_tensor(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    codes, thumbs = [], []
    for chunk in images.split(8192):
        gray = chunk.float().mean(1, keepdim=True)
        small = F.interpolate(gray, size=(8, 9), mode="bilinear", antialias=True, align_corners=False)[:, 0]
        codes.append(_pack_bits((small[:, :, 1:] > small[:, :, :-1]).reshape(len(chunk), -1).numpy()))
        thumb = F.interpolate(gray, size=(THUMB, THUMB), mode="bilinear", antialias=True, align_corners=False)
        thumbs.append(thumb[:, 0].round().clamp(0, 255).to(torch.uint8).numpy())
    if not codes:
        return np.zeros(0, dtype=np.uint64), np.zeros((0, THUMB, THUMB), dtype=np.uint8)
    return np.concatenate(codes), np.concatenate(thumbs)


def _tensor_sums(images: torch.Tensor) -> np.ndarray:
    c = images.shape[1]
    total, total_sq, count = np.zeros(3), np.zeros(3), 0
    for chunk in images.split(4096):
        x = chunk.to(torch.float64).div_(255).transpose(0, 1).reshape(c, -1)
        s, sq = x.sum(1).numpy(), (x * x).sum(1).numpy()
        total += np.resize(s, 3)
        total_sq += np.resize(sq, 3)
        count += x.shape[1]
    return np.concatenate([total, total_sq, [count]])


def _pack_bits(bits: np.ndarray) -> np.ndarray:
    """(N, 64) booleans -> N unsigned 64-bit codes."""
    return np.packbits(bits.astype(np.uint8), axis=1).view(">u8").astype(np.uint64).reshape(-1)


# -- findings ----------------------------------------------------------------------------------------


def _finding(severity: str, kind: str, message: str, items: list) -> Finding:
    return Finding(severity, kind, message, items[:LIST_LIMIT], len(items))


ODD_MESSAGES = {
    "cmyk": "CMYK images (converted to RGB; colours may shift)",
    "16-bit": "16-bit or float images (scaled to 8 bits by their type's range)",
    "palette-transparency": "palette images with transparency (composited over white)",
    "animated": "animated images (only the first frame is used)",
    "exif-rotated": "EXIF-rotated images (rotated upright when decoded)",
    "extreme-aspect": f"extreme aspect ratios (over {EXTREME_ASPECT:g}:1; squashed by square resizing)",
    "tiny": f"tiny images (a side under {TINY_SIDE} px)",
}
ERROR_MESSAGES = {
    "unreadable": "files that cannot be read",
    "zero-byte": "zero-byte files",
    "not-image": "non-image files",
    "bomb": "decompression bombs (refused)",
    "truncated": "truncated images",
    "corrupt": "undecodable images",
}


def _file_findings(images: list[_Image]) -> list[Finding]:
    findings = []
    for kind, message in ERROR_MESSAGES.items():
        paths = [f"{i.path}: {i.error[1]}" for i in images if i.error and i.error[0] == kind]
        if kind == "not-image" and paths:  # files with image extensions that are not images
            message += " (with an image extension)"
        if paths:
            findings.append(_finding("error", kind, message, paths))
    for kind, message in ODD_MESSAGES.items():
        paths = [i.path for i in images if kind in i.odd]
        if paths:
            findings.append(_finding("warning", kind, message, paths))
    return findings


def _class_counts(labels: torch.Tensor, classes: list[str]) -> dict[str, int]:
    counts = torch.bincount(labels, minlength=len(classes)).tolist()
    return dict(zip(classes, counts))


def _class_findings(counts: dict[str, dict[str, int]], classes: list[str]) -> list[Finding]:
    findings = []
    train = counts.get("train", {})
    empty = [c for c in classes if not train.get(c)]
    if empty:
        findings.append(_finding("warning", "empty-class", "classes with no training images", empty))
    for split in ("val", "test"):
        if split in counts:
            missing = [c for c in classes if train.get(c) and not counts[split].get(c)]
            if missing:
                findings.append(
                    _finding("warning", f"missing-in-{split}", f"classes with no {split} images", missing)
                )
    sizes = [n for n in train.values() if n]
    if sizes and max(sizes) / min(sizes) >= IMBALANCE_WARNING:
        big, small = max(train, key=train.get), min((c for c in train if train[c]), key=train.get)
        findings.append(_finding(
            "warning", "imbalance",
            f"training classes are imbalanced {max(sizes) / min(sizes):.1f}:1 ({big} {train[big]}, {small} {train[small]}); "
            "the small classes will be learnt poorly; collect more of them or weight the loss", [big, small],
        ))  # fmt: skip
    return findings


def _duplicate_findings(images: list[_Image], near: bool) -> list[Finding]:
    """Same bytes or same pixels (exact), or close difference hashes (near), within and across splits."""
    exact: dict[str, list[_Image]] = defaultdict(list)
    for img in images:
        for key in {img.byte_hash, img.pixel_hash} - {""}:
            exact[key].append(img)
    pairs: dict[tuple[str, str], tuple[_Image, _Image]] = {}
    for group in exact.values():
        for other in group[1:]:
            pairs.setdefault(_pair_key(group[0], other), (group[0], other))
    findings = _pair_findings(pairs, "duplicate", "leak", "identical images (same bytes or pixels)")
    if near:
        near_pairs = {k: v for k, v in _near_pairs(images).items() if k not in pairs}
        findings += _pair_findings(
            near_pairs,
            "near-duplicate",
            "near-leak",
            f"near-identical images (e.g. re-encoded: 16x16 thumbnails within {NEAR_PIXELS:g}/255)",
        )
    return findings


def _pair_key(a: _Image, b: _Image) -> tuple[str, str]:
    return tuple(sorted((a.path, b.path)))  # type: ignore[return-value]


def _pair_findings(pairs: dict, within_kind: str, across_kind: str, what: str) -> list[Finding]:
    within = [[a.path, b.path] for a, b in pairs.values() if a.split == b.split]
    across = [
        [f"{a.split}: {a.path}", f"{b.split}: {b.path}"] for a, b in pairs.values() if a.split != b.split
    ]
    findings = []
    if across:
        severity = "error" if across_kind == "leak" else "warning"
        findings.append(
            _finding(severity, across_kind, f"{what} in two splits: test results would be inflated", across)
        )
    if within:
        findings.append(_finding("warning", within_kind, f"{what} within a split", within))
    return findings


def _near_pairs(images: list[_Image]) -> dict[tuple[str, str], tuple[_Image, _Image]]:
    """Pairs within NEAR_BITS: two codes that close agree exactly on at least one of 5 bands (pigeonhole)."""
    usable = [i for i in images if i.error is None and i.thumb is not None]
    if len(usable) < 2:
        return {}
    codes = np.array([i.dhash for i in usable], dtype=np.uint64)
    found: dict[tuple[str, str], tuple[_Image, _Image]] = {}
    for band in range(NEAR_BITS + 1):
        shift, width = band * 13, 13 if band < NEAR_BITS else 64 - 13 * NEAR_BITS
        keys = (codes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(keys, kind="stable")
        bounds = np.flatnonzero(np.diff(keys[order])) + 1
        for bucket in np.split(order, bounds):
            if len(bucket) < 2 or len(bucket) > MAX_BUCKET:
                continue
            sub = codes[bucket]
            dist = _popcount(sub[:, None] ^ sub[None, :])
            for a, b in zip(*np.nonzero(np.triu(dist <= NEAR_BITS, k=1))):
                ia, ib = usable[bucket[a]], usable[bucket[b]]
                if np.abs(ia.thumb.astype(np.int16) - ib.thumb).mean() <= NEAR_PIXELS:
                    found.setdefault(_pair_key(ia, ib), (ia, ib))
    return found


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.unpackbits(x.astype(">u8").view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1)


def _stats(images: list[_Image]) -> dict[str, Any]:
    ok = [i for i in images if i.error is None]
    sums = [i.sums for i in ok if i.sums is not None]
    stats: dict[str, Any] = {"readable": len(ok), "unreadable": len(images) - len(ok)}
    if ok:
        widths = np.array([i.size[0] for i in ok])
        heights = np.array([i.size[1] for i in ok])
        stats |= {
            "width": {"min": int(widths.min()), "median": float(np.median(widths)), "max": int(widths.max())},
            "height": {
                "min": int(heights.min()),
                "median": float(np.median(heights)),
                "max": int(heights.max()),
            },
            "channels": 1 if all(i.gray for i in ok) else 3,
        }
    if sums:
        total = np.sum(sums, axis=0)
        n = max(total[6], 1)
        mean = total[:3] / n
        std = np.sqrt(np.maximum(total[3:6] / n - mean**2, 0))
        if stats.get("channels") == 1:
            mean, std = mean[:1], std[:1]
        stats |= {"mean": [round(float(v), 4) for v in mean], "std": [round(float(v), 4) for v in std]}
    return stats
