"""Fuzzing: mutated image bytes and mutated checkpoints give imgcls's own clear errors, never a crash or a hang."""

from __future__ import annotations

import faulthandler
import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file, save_file

from imgcls.config import Config
from imgcls.data.decode import ImageDecodeError, open_image
from imgcls.data.transforms import to_square
from imgcls.engine.state import read_state
from imgcls.engine.train import new_state
from imgcls.models import build_model
from imgcls.models.checkpoint import CheckpointError, load_weights

DECODE_REASONS = {
    "cannot read file",
    "empty file",
    "decompression bomb refused",
    "not an image file",
    "corrupt or truncated image",
}
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
WATCHDOG_S = 600  # a hang prints every thread's traceback (the session goes on; CI's own limit ends it)


@pytest.fixture(autouse=True)
def _watchdog():
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=False)
    yield
    faulthandler.cancel_dump_traceback_later()


def _encoded(fmt: str, **kwargs) -> bytes:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    if fmt == "GIF":  # animated, palette
        frames = [image.convert("P"), image.rotate(90).convert("P")]
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    else:
        image.save(buf, fmt, **kwargs)
    return buf.getvalue()


IMAGES = {fmt: _encoded(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")}


@st.composite
def mutations(draw, base: bytes) -> bytes:
    """Flipped, overwritten, inserted and deleted bytes, or a truncation: what disks and networks do."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if kind == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif kind == "set" and data:
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80]))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        else:
            del data[pos:]
    return bytes(data)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("fmt", sorted(IMAGES))
@FUZZ
@given(data=st.data())
def test_mutated_images_decode_or_raise_a_clear_error(fmt: str, data):
    mutated = data.draw(mutations(IMAGES[fmt]))
    square = to_square(16)
    for channels in (1, 3):
        try:
            image = square(open_image(mutated, channels))
        except ImageDecodeError as e:
            assert e.reason.split(" (")[0] in DECODE_REASONS, e.reason  # one of the known plain words
            continue
        assert image.shape == (channels, 16, 16) and image.dtype == torch.uint8


def _checkpoint_bytes() -> tuple[bytes, bytes]:
    model = build_model("tutorial-cnn", num_classes=3, in_chans=1, input_size=8)
    with tempfile.TemporaryDirectory() as tmp:
        new_state(model, Config()).save(Path(tmp) / "state.pt", Config().to_dict())
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()}, str(Path(tmp) / "w.safetensors")
        )
        return (Path(tmp) / "state.pt").read_bytes(), (Path(tmp) / "w.safetensors").read_bytes()


STATE, WEIGHTS = _checkpoint_bytes()


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit (a mutated float may be NaN, which == never matches)."""
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))
    )


@pytest.mark.filterwarnings("ignore")
@FUZZ
@given(data=st.data())
def test_mutated_training_states_load_or_raise_checkpoint_error(data):
    mutated = data.draw(mutations(STATE))
    model = build_model("tutorial-cnn", num_classes=3, in_chans=1, input_size=8)
    state = new_state(model, Config())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.pt"
        path.write_bytes(mutated)
        try:
            read_state(path)
            state.load(path)
        except CheckpointError as e:
            assert str(path) in str(e)
            return
        # It loaded (a mutation in padding or in a value): the model holds exactly the file's weights.
        saved = read_state(path)["model"]
        assert all(bitwise_equal(v, saved[k]) for k, v in state.model.state_dict().items())


@FUZZ
@given(data=st.data())
def test_mutated_safetensors_load_or_raise_checkpoint_error(data):
    mutated = data.draw(mutations(WEIGHTS))
    model = build_model("tutorial-cnn", num_classes=3, in_chans=1, input_size=8)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.safetensors"
        path.write_bytes(mutated)
        try:
            load_weights(model, path)
        except CheckpointError as e:
            assert str(path) in str(e)
            return
        # It loaded (a mutation that only changed values): the model holds exactly the file's tensors.
        saved = load_file(str(path))
        assert all(bitwise_equal(v, saved[k]) for k, v in model.state_dict().items())
