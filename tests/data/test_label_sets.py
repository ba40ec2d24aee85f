"""Multi-label manifests: label sets in one cell or one row per label, negatives, detection, stratified splits."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from imgcls.config import DataConfig
from imgcls.data.datasets import iterative_split, open_dataset
from imgcls.data.loader import balanced_weights, class_weights
from imgcls.data.memory import BatchMix
from imgcls.data.types import DataError
from tests.multilabel import LABELS, write_multilabel_manifest


def _sets(bundle, split="train") -> dict[str, set[str]]:
    s = bundle.split(split)
    return {
        Path(p).name: {bundle.classes[j] for j in np.flatnonzero(row.numpy())}
        for p, row in zip(s.paths, s.labels)
    }


def test_label_sets_in_one_cell_and_as_rows_give_the_same_data(tmp_path: Path, caplog):
    cells = write_multilabel_manifest(tmp_path / "cells", n=30)
    pairs = write_multilabel_manifest(tmp_path / "pairs", n=30, pairs=True)
    with caplog.at_level(logging.INFO, logger="imgcls"):
        a = open_dataset(DataConfig(name=str(cells), val_split=0, test_split=0))
        b = open_dataset(DataConfig(name=str(pairs), val_split=0, test_split=0))
    assert a.multilabel and b.multilabel and a.classes == b.classes == sorted(LABELS)
    assert a.train.labels.dtype == torch.float32 and a.train.labels.shape == (30, 3)
    assert _sets(a) == _sets(b)
    said = caplog.text
    assert (
        "label cells list several labels separated by ';'" in said
        and "has rows with different labels" in said
    )
    negatives = int((a.train.labels.sum(1) == 0).sum())
    assert negatives > 0 and f"({negatives} with no label)" in said  # empty label cells: counted negatives


def test_separator_and_quoting(tmp_path: Path):
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    from tests.multilabel import make_multilabel_image

    lines = ["file,tags"]
    for i, cell in enumerate(['"red,green"', "blue", '"a b, c"', '""', '" red , blue "']):
        make_multilabel_image(set(), rng).save(tmp_path / "images" / f"{i}.png")
        lines.append(f"images/{i}.png,{cell}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    bundle = open_dataset(DataConfig(name=str(tmp_path / "m.csv"), label_sep=",", val_split=0, test_split=0))
    assert bundle.classes == ["a b", "blue", "c", "green", "red"]
    assert _sets(bundle) == {
        "0.png": {"red", "green"},
        "1.png": {"blue"},
        "2.png": {"a b", "c"},
        "3.png": set(),
        "4.png": {"red", "blue"},
    }


def test_unknown_label_in_val_or_test_is_an_error_naming_it(tmp_path: Path):
    path = write_multilabel_manifest(tmp_path, n=24, splits=True)
    with open(path, "a") as f:
        f.write('images/img002.png,"zebra;red",test\n')  # img002 is a test image
    with pytest.raises(DataError, match="test rows use labels the train rows lack: zebra"):
        open_dataset(DataConfig(name=str(path)))


def test_an_image_in_two_splits_is_refused(tmp_path: Path):
    path = write_multilabel_manifest(tmp_path, n=12, pairs=True)
    lines = path.read_text().splitlines()
    lines[0] += ",split"
    lines = [lines[0]] + [line + ",train" for line in lines[1:]]
    first = lines[1].split(",")[0]
    lines.append(f"{first},red,val")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="is in the train split on an earlier row"):
        open_dataset(DataConfig(name=str(path)))


def test_the_task_is_chosen_explicitly_or_detected_never_from_folders(
    tmp_path: Path, image_tree: Path, csv_manifest
):
    single = open_dataset(DataConfig(name=str(csv_manifest)))
    assert not single.multilabel  # one label per image: single-label, as before
    forced = open_dataset(DataConfig(name=str(csv_manifest), task="multilabel", val_split=0, test_split=0))
    assert forced.multilabel and forced.train.labels.sum(1).eq(1).all()
    with pytest.raises(DataError, match="data.task=multilabel needs a CSV manifest"):
        open_dataset(DataConfig(name=str(image_tree), task="multilabel"))
    cells = write_multilabel_manifest(tmp_path / "m", n=12)
    as_single = open_dataset(DataConfig(name=str(cells), task="multiclass"))
    assert not as_single.multilabel and "green;red" in as_single.classes  # told so: the cell is one label


def test_iterative_split_keeps_each_labels_share_and_groups_whole():
    rng = np.random.default_rng(0)
    rates = np.array([0.5, 0.2, 0.05, 0.01])
    labels = rng.random((2000, 4)) < rates
    keep, take = iterative_split(labels, 0.2, seed=0)
    assert len(take) == pytest.approx(400, abs=15) and len(set(keep) | set(take)) == 2000
    for j in range(4):
        assert labels[take, j].sum() == pytest.approx(0.2 * labels[:, j].sum(), abs=2), j
    groups = np.arange(2000) // 4  # groups of 4 images move together
    keep, take = iterative_split(labels, 0.2, seed=0, groups=groups)
    assert not set(groups[keep]) & set(groups[take])
    assert len(take) == pytest.approx(400, abs=20)


def test_carved_val_split_is_stratified_per_label(tmp_path: Path):
    bundle = open_dataset(DataConfig(name=str(write_multilabel_manifest(tmp_path, n=120)), val_split=0.25))
    total = sum(s.labels.sum(0) for s in (bundle.train, bundle.val, bundle.test))
    assert torch.allclose(bundle.val.labels.sum(0), 0.25 * total, atol=1.5)


def test_weights_and_mixup_for_label_sets():
    y = torch.tensor([[1.0, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert class_weights(y, 3).tolist() == pytest.approx(
        [1 / 3, 3.0, 1.0]
    )  # negatives / positives; no positive: 1
    w = balanced_weights(y)
    assert w[1] == 1.0 and w[3] == 1.0 and w[0] == pytest.approx(1 / 3)  # the rarest label decides
    x = torch.rand(4, 1, 8, 8)
    _, mixed = BatchMix(3, mixup=0.4)(x, y, torch.Generator().manual_seed(0))
    assert mixed.shape == (4, 3) and ((mixed >= 0) & (mixed <= 1)).all()
    assert not torch.equal(mixed, y)  # soft multi-hot targets
