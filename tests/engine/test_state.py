"""Checkpoints are never unpickled unsafely, never half-written, and mismatches are clear errors."""

import os
import pickle
from pathlib import Path

import pytest
import torch

from imgcls.engine.state import read_state
from imgcls.models.checkpoint import CheckpointError
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
