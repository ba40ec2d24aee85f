"""Decoding of every odd mode, EXIF orientation, and refusal of broken or hostile files."""

import io

import numpy as np
import pytest
from PIL import Image

from imgcls.data import decode
from imgcls.data.decode import ImageDecodeError, open_image


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


RGB = Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("mode_image", "fmt"),
    [
        (Image.new("L", (16, 12), 90), "PNG"),
        (Image.new("LA", (16, 12), (90, 255)), "PNG"),
        (RGB.convert("P"), "PNG"),
        (Image.new("RGBA", (16, 12), (10, 20, 30, 255)), "PNG"),
        (RGB.convert("CMYK"), "JPEG"),
        (RGB.convert("CMYK"), "TIFF"),
        (Image.fromarray(np.full((12, 16), 40000, dtype=np.uint16)), "PNG"),  # 16-bit: I;16 or I
        (RGB.convert("1"), "PNG"),
        (RGB, "JPEG"),
        (RGB, "BMP"),
        (RGB, "WEBP"),
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_becomes_l_or_rgb(mode_image, fmt, channels):
    im = open_image(encode(mode_image, fmt), channels)
    assert im.mode == ("L" if channels == 1 else "RGB")
    assert im.size == (16, 12)
    again = open_image(encode(mode_image, fmt), channels)
    assert np.array_equal(np.asarray(im), np.asarray(again))  # deterministic


def test_sixteen_bit_scales_by_type_range():
    raw = encode(Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)))
    assert np.asarray(open_image(raw, 1)).max() == 255
    raw = encode(Image.fromarray(np.full((4, 4), 257 * 100, dtype=np.uint16)))
    assert np.asarray(open_image(raw, 1))[0, 0] == 100


def test_transparency_is_composited_over_white():
    clear = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert np.asarray(open_image(encode(clear), 3))[0, 0].tolist() == [255, 255, 255]
    solid = Image.new("RGBA", (4, 4), (10, 20, 30, 255))
    assert np.asarray(open_image(encode(solid), 3))[0, 0].tolist() == [10, 20, 30]


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (20, 10), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    decoded = open_image(encode(im, "JPEG", exif=exif), 3)
    assert decoded.size == (10, 20)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty"),
        (b"this is text, not an image", "not an image"),
        (encode(RGB, "JPEG")[:200], "truncated"),
        (encode(RGB, "PNG")[:60], "truncated"),
    ],
)
def test_broken_files_raise_decode_error(payload, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        open_image(payload, 3)


def test_decompression_bomb_is_refused(monkeypatch):
    monkeypatch.setattr(decode, "MAX_PIXELS", 100)
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        open_image(encode(Image.new("L", (20, 20))), 1)


def test_missing_file(tmp_path):
    with pytest.raises(ImageDecodeError, match="cannot read"):
        open_image(tmp_path / "nope.png", 3)
