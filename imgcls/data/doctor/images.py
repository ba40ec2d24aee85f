"""Reading what each image says about itself, for the data doctor: files (headers, decode, hashes,
oddities) in threads or processes, in-memory tensors in whole-tensor operations."""

from __future__ import annotations

import hashlib
import io
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from imgcls.data.decode import GRAY_MODES, MAX_PIXELS, ImageDecodeError, open_image
from imgcls.data.stats import pixel_sums
from imgcls.data.types import ImageSource
from imgcls.utils.env import available_cores

TINY_SIDE = 16  # pixels: smaller images hold little to learn from
EXTREME_ASPECT = 4.0  # width/height (or inverse) beyond this is distorted badly by square resizing
THUMB = 16
PROCESS_THRESHOLD = 4000  # files; below this, threads (no process start-up)


@dataclass
class ImageFacts:
    """What one image file (or container member) says about itself (or why it cannot be read)."""

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
    sums: torch.Tensor | None = None  # data.stats.pixel_sums of the image, as 3 channels
    label: str = ""  # the class it is filed under (multi-label: its labels joined), set by the checks


def file_images(splits: dict[str, Any]) -> list[ImageFacts]:
    """Inspects every file; large datasets in worker processes (the per-file work is mostly Python,
    which threads would serialize on the GIL), small ones in threads (no start-up cost)."""
    jobs = [(name, p) for name, split in splits.items() for p in split.paths or []]
    cores = available_cores()
    if len(jobs) >= PROCESS_THRESHOLD and cores > 1:
        chunks = [jobs[i : i + 512] for i in range(0, len(jobs), 512)]
        with ProcessPoolExecutor(max_workers=cores) as pool:
            facts = [info for part in pool.map(_inspect_many, chunks) for info in part]
        for info in facts:
            info.sums = torch.from_numpy(info.sums) if info.sums is not None else None
        return facts
    with ThreadPoolExecutor(max_workers=min(32, 2 * cores)) as pool:
        return list(pool.map(lambda job: _inspect(*job), jobs, chunksize=32))


def _inspect_many(jobs: list[tuple[str, ImageSource]]) -> list[ImageFacts]:
    facts = [_inspect(*job) for job in jobs]
    for (
        info
    ) in facts:  # numpy across processes: torch passes each tensor as a file descriptor, which can run out
        info.sums = info.sums.numpy() if info.sums is not None else None
    return facts


def byte_hash(path: ImageSource) -> str:
    try:
        return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    except OSError:
        return ""


def _inspect(split: str, path: ImageSource) -> ImageFacts:
    info = ImageFacts(split, str(path))
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
                info.gray = im.mode in GRAY_MODES
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
    pixels = np.array(image, dtype=np.uint8)  # a writable copy: torch reads it below
    info.pixel_hash = hashlib.blake2b(
        pixels.tobytes() + repr(pixels.shape).encode(), digest_size=16
    ).hexdigest()
    luma = image.convert("L")
    gray = np.asarray(luma.resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    info.dhash = pack_bits((gray[:, 1:] > gray[:, :-1]).reshape(1, -1))[0]
    info.thumb = np.asarray(luma.resize((THUMB, THUMB), Image.Resampling.BILINEAR), dtype=np.uint8)
    info.sums = pixel_sums(torch.from_numpy(pixels).permute(2, 0, 1)[None])
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


def tensor_images(splits: dict[str, Any], dhash: bool = True) -> list[ImageFacts]:
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
            out.append(
                ImageFacts(name, str(p), pixel_hash=f, dhash=int(c), thumb=thumb, size=size, gray=gray)
            )
        if out and dhash:
            out[-1].sums = _rgb(pixel_sums(images))  # one entry carries the split's totals
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
        codes.append(pack_bits((small[:, :, 1:] > small[:, :, :-1]).reshape(len(chunk), -1).numpy()))
        thumb = F.interpolate(gray, size=(THUMB, THUMB), mode="bilinear", antialias=True, align_corners=False)
        thumbs.append(thumb[:, 0].round().clamp(0, 255).to(torch.uint8).numpy())
    if not codes:
        return np.zeros(0, dtype=np.uint64), np.zeros((0, THUMB, THUMB), dtype=np.uint8)
    return np.concatenate(codes), np.concatenate(thumbs)


def _rgb(sums: torch.Tensor) -> torch.Tensor:
    """Grayscale sums as three equal channels, so they add up with colour images' sums."""
    if len(sums) == 7:
        return sums
    return torch.cat([sums[0].repeat(3), sums[1].repeat(3), sums[2:]])


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """(N, 64) booleans -> N unsigned 64-bit codes."""
    return np.packbits(bits.astype(np.uint8), axis=1).view(">u8").astype(np.uint64).reshape(-1)
