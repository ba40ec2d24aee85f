"""Robust image decoding: any file PIL opens becomes a deterministic L or RGB image, or a clear error.

EXIF orientation is applied; transparency is composited over white; 16/32-bit and float images are
scaled to 8 bits by their type's range; decompression bombs are refused before their pixels are read.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from imgcls.errors import ImgclsError

# PIL warns above this many pixels and raises at twice; we refuse at the warning already.
GRAY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"}  # decoded as 1 channel
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
IMAGE_EXTENSIONS = {
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
}

# Truncated files must fail, not decode to a half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageDecodeError(ImgclsError, ValueError):
    """A file that is not a readable image; `reason` is short and human."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def open_image(source: str | Path | bytes | Any, channels: int) -> Image.Image:
    """Decodes `source` (a path, encoded bytes, or anything with `read_bytes()`) into an 'L' (channels=1) or 'RGB' (channels=3) image.

    Raises:
        ImageDecodeError: unreadable, truncated, empty, not an image, or a decompression bomb.

    Example:
        >>> open_image("cat.png", channels=3).mode   # doctest: +SKIP
        'RGB'
    """
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        raw = source if isinstance(source, bytes) else _readable(source).read_bytes()
    except OSError as e:
        raise ImageDecodeError(name, f"cannot read file ({e.strerror or e})") from None
    if not raw:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ImageDecodeError(
                        name, f"decompression bomb refused ({im.width}x{im.height} pixels)"
                    )
                im.load()
                im = ImageOps.exif_transpose(im)
                return to_channels(im, channels)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError(name, "decompression bomb refused") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(name, "not an image file") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError) as e:
        # PIL signals truncation and corrupt streams with a zoo of exception types.
        raise ImageDecodeError(name, f"corrupt or truncated image ({type(e).__name__}: {e})") from None


def _readable(source: Any) -> Any:
    """A path as a Path; a container member (anything with read_bytes) as it is."""
    return source if hasattr(source, "read_bytes") else Path(source)


def to_channels(im: Image.Image, channels: int) -> Image.Image:
    """Converts any PIL mode deterministically to 'L' or 'RGB'."""
    im = _to_8bit(im)
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    if im.mode in ("LA", "RGBA", "La", "RGBa"):
        im = _over_white(im)
    if im.mode not in ("L", "RGB"):
        im = im.convert("RGB")  # 1, CMYK, YCbCr, LAB, HSV
    target = "L" if channels == 1 else "RGB"
    return im if im.mode == target else im.convert(target)


def _to_8bit(im: Image.Image) -> Image.Image:
    if im.mode.startswith("I;16"):
        arr = np.asarray(im, dtype=np.uint16)
        return Image.fromarray((arr.astype(np.uint32) * 255 // 65535).astype(np.uint8), "L")
    if im.mode == "I":  # 32-bit int; in practice 16-bit PNG/TIFF data
        arr = np.clip(np.asarray(im, dtype=np.int64), 0, 65535)
        return Image.fromarray((arr * 255 // 65535).astype(np.uint8), "L")
    if im.mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64))
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(arr * scale, 0, 255).round().astype(np.uint8), "L")
    return im


def _over_white(im: Image.Image) -> Image.Image:
    base_mode = "L" if im.mode in ("LA", "La") else "RGB"
    background = Image.new(base_mode, im.size, "white")
    background.paste(im.convert(base_mode), mask=im.getchannel("A"))
    return background
