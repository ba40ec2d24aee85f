"""Checkpoints are never unpickled unsafely, never half-written, and mismatches are clear errors."""

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from imgcls.engine.state import CheckpointError, load_weights, read_state
from imgcls.models import build_model
from imgcls.utils.io import atomic_write


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_checkpoint_is_refused_without_running_it(tmp_path: Path):
    marker = tmp_path / "pwned"
    path = tmp_path / "state.pt"
    torch.save({"model": Exploit(marker), "optimizer": {}, "epoch": 0, "meta": {}}, path)
    with pytest.raises(CheckpointError, match="not a readable imgcls checkpoint"):
        read_state(path)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("payload", [b"", b"random bytes" * 10, pickle.dumps({"a": 1})[:5]])
def test_garbage_checkpoints_are_clear_errors(tmp_path: Path, payload: bytes):
    path = tmp_path / "state.pt"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError):
        read_state(path)


def test_weights_for_another_class_count_or_architecture(tmp_path: Path):
    three = build_model("tutorial-cnn", num_classes=3, in_chans=1, input_size=28)
    save_file({k: v.contiguous() for k, v in three.state_dict().items()}, str(tmp_path / "w.safetensors"))
    five = build_model("tutorial-cnn", num_classes=5, in_chans=1, input_size=28)
    with pytest.raises(
        CheckpointError, match=r"w.safetensors holds a model for 3 classes, but 5 were expected"
    ):
        load_weights(five, tmp_path / "w.safetensors")
    other = build_model("smallnet", num_classes=3, in_chans=1, input_size=28)
    with pytest.raises(CheckpointError, match="missing"):
        load_weights(other, tmp_path / "w.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="is damaged: it is no valid safetensors file"):
        load_weights(three, tmp_path / "bad.safetensors")


def test_weights_file_problems_are_said_in_words(tmp_path: Path):
    model = build_model("tutorial-cnn", num_classes=3, in_chans=1, input_size=28)
    good = tmp_path / "good.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(good))
    cases = {
        "empty.safetensors": (b"", r"is empty \(0 bytes\)"),
        "cut.safetensors": (
            good.read_bytes()[: good.stat().st_size // 2],
            r"is truncated \(\d+ bytes, shorter",
        ),
        "pickled.safetensors": (None, r"is a pickle \(torch.save\) file, not safetensors"),
    }
    torch.save(model.state_dict(), tmp_path / "pickled.safetensors")
    for name, (data, message) in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=message):
            load_weights(model, tmp_path / name)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path):
    path = tmp_path / "ckpt"
    path.write_text("old")

    def crash(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(path, crash)
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind
