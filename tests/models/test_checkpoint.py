"""Weights on disk, read and written in one place: mismatches and damaged files are said in words, and
model.json is edited without touching the weights."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from imgcls.models import build_model
from imgcls.models.checkpoint import (
    CheckpointError,
    load_weights,
    mismatch,
    read_meta,
    save_weights,
    update_meta,
)


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


def test_one_mismatch_report_for_run_weights_and_backbones():
    """Missing, unexpected and mis-shaped keys are said the same way wherever weights are loaded."""
    own = {"a.weight": torch.zeros(2, 3), "b.weight": torch.zeros(4), "c.bias": torch.zeros(1)}
    given = {"a.weight": torch.zeros(3, 3), "c.bias": torch.zeros(1), "d.extra": torch.zeros(1)}
    assert (
        mismatch(own, given)
        == "missing: b.weight; unexpected: d.extra; shape mismatch: a.weight (3, 3) vs (2, 3)"
    )
    assert mismatch(own, own) == ""
    assert mismatch(own, given, ignore=("a.", "b.", "d.")) == ""
    many = {f"k{i}": torch.zeros(1) for i in range(5)}
    assert mismatch(many, {}) == "missing: k0, k1, k2 ..."


def test_update_meta_edits_model_json_and_keeps_the_rest(tmp_path: Path):
    model = build_model("tutorial-cnn", num_classes=3, in_chans=1, input_size=28)
    save_weights(model, tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()
    update_meta(tmp_path, {"temperature": 1.7, "tta": "flip"})
    meta = read_meta(tmp_path)
    assert (meta.temperature, meta.tta, meta.name) == (1.7, "flip", model.meta.name)
    assert (tmp_path / "model.safetensors").read_bytes() == before  # the weights are untouched
