"""WebDataset shards: `imgcls data pack` from any source, and reading shard sets (patterns, folders, damage)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgcls
from imgcls import cli
from imgcls.config import DataConfig
from imgcls.data.datasets import open_dataset
from imgcls.data.decode import open_image
from imgcls.data.loader import prepare
from imgcls.data.shards import TarMember, parse_size
from imgcls.data.types import DataError
from tests.conftest import CLASSES
from tests.sources import shard_set


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_pack_writes_every_split_in_shards_with_the_files_bytes_unchanged(tmp_path: Path, split_tree: Path):
    before = tree_hashes(split_tree)
    out = shard_set(tmp_path, split_tree, shard_size="8KB")
    assert tree_hashes(split_tree) == before  # the user's files are only read
    names = sorted(p.name for p in out.iterdir())
    assert json.loads((out / "classes.json").read_text()) == list(CLASSES)
    assert {n.split("-")[0] for n in names if n.endswith(".tar")} == {"train", "val", "test"}
    assert sum(n.startswith("train-") for n in names) > 1  # 8KB shards: the training split spans several

    bundle = open_dataset(DataConfig(name=str(out)))
    original = open_dataset(DataConfig(name=str(split_tree)))
    for split in ("train", "val", "test"):
        ours, theirs = getattr(bundle, split), getattr(original, split)
        assert ours.labels.tolist() == theirs.labels.tolist()
        assert [m.read_bytes() for m in ours.paths] == [p.read_bytes() for p in theirs.paths]
    assert isinstance(bundle.train.paths[0], TarMember) and "::" in str(bundle.train.paths[0])


def test_a_brace_pattern_names_the_training_shards_and_finds_val_and_test_beside_them(
    tmp_path: Path, split_tree: Path
):
    out = shard_set(tmp_path, split_tree, shard_size="8KB")
    last = max(int(p.stem.split("-")[1]) for p in out.glob("train-*.tar"))
    bundle = open_dataset(DataConfig(name=f"{out}/train-{{000000..{last:06d}}}.tar"))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (48, 12, 18)
    missing = f"{out}/train-{{000000..{last + 1:06d}}}.tar"
    with pytest.raises(DataError, match="1 of"):
        open_dataset(DataConfig(name=missing))


def test_a_built_in_packs_as_lossless_png(tmp_path: Path):
    result = imgcls.pack_data("digits", tmp_path / "digits")
    shards = open_dataset(DataConfig(name=str(tmp_path / "digits"), val_split=0))
    digits = open_dataset(DataConfig(name="digits", val_split=0))
    assert result["counts"] == {"train": len(digits.train), "test": len(digits.test)}
    assert shards.classes == digits.classes and shards.train.labels.tolist() == digits.train.labels.tolist()
    for i in (0, 700, 1436):
        pixels = np.asarray(open_image(shards.train.paths[i], 1))
        assert np.array_equal(pixels, digits.train.images[i, 0].numpy())


def test_packing_twice_gives_the_same_bytes_and_never_overwrites(tmp_path: Path, image_tree: Path, capsys):
    imgcls.pack_data(str(image_tree), tmp_path / "a")
    imgcls.pack_data(str(image_tree), tmp_path / "b")
    a, b = (sorted((tmp_path / x).iterdir()) for x in "ab")
    assert [p.name for p in a] == [p.name for p in b] and [p.read_bytes() for p in a] == [
        p.read_bytes() for p in b
    ]
    assert cli.main(["data", "pack", str(image_tree), "--out", str(tmp_path / "a")]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert (
        cli.main(["data", "pack", str(image_tree), "--out", str(tmp_path / "c"), "--shard-size", "big"]) == 2
    )
    assert (
        capsys.readouterr().err.strip() == "error: shard size must look like 1GB, 500MB or 64MiB, not 'big'"
    )
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob(".c.tmp*"))
    (tmp_path / "file").write_text("not a folder")
    assert cli.main(["data", "pack", str(image_tree), "--out", str(tmp_path / "file" / "shards")]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot write shards to {tmp_path / 'file' / 'shards'}")


def test_parse_size_reads_decimal_and_binary_units():
    assert parse_size("1GB") == 10**9 and parse_size("64MiB") == 64 << 20 and parse_size("1000") == 1000


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((12, 12), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_damaged_samples_are_counted_skips_and_json_labels_name_classes(tmp_path: Path):
    members = {
        "a/0001.png": _png(10),
        "a/0001.json": b'{"label": "cat"}',
        "a/0002.jpg": _png(200),  # a PNG under a .jpg name: decoded by content
        "a/0002.json": b'{"label": "dog"}',
        "a/0003.png": b"broken",
        "a/0003.json": b'{"label": "dog"}',
        "a/0004.png": _png(30),  # no label
        "a/0005.cls": b"1",  # no image
        "a/0006.png": _png(40),
        "a/0006.json": b"not json",
    }
    _tar(tmp_path / "train-0.tar", members)
    bundle = open_dataset(DataConfig(name=str(tmp_path / "train-0.tar"), val_split=0, test_split=0))
    assert bundle.classes == ["cat", "dog"] and bundle.train.labels.tolist() == [0, 1, 1]
    reasons = sorted(why for _, why in bundle.skipped)
    assert reasons == [
        "no image member (.jpg, .png, ...)",
        "no label (.cls or .json)",
        "no label (.cls or .json)",
        "unreadable label 'not json'",
    ]
    prepared = prepare(bundle, DataConfig(), size=12, channels=1)
    assert len(prepared.train) == 2 and any("0003.png" in where for where, _ in prepared.skipped)


def test_a_compressed_or_missing_shard_is_one_error_line(tmp_path: Path, capsys):
    (tmp_path / "train-0.tar").write_bytes(gzip.compress(b"x" * 1000))
    assert cli.main(["train", "--data", str(tmp_path / "train-0.tar")]) == 2
    assert "not a readable uncompressed tar shard" in capsys.readouterr().err
    assert cli.main(["train", "--data", str(tmp_path / "train-{0..3}.tar")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 3 of 4 shard(s)") and "\n" not in err
    (tmp_path / "train-0.tar.gz").write_bytes(gzip.compress(b"x" * 1000))
    assert cli.main(["train", "--data", str(tmp_path / "train-0.tar.gz")]) == 2
    assert "not a readable uncompressed tar shard" in capsys.readouterr().err


def test_without_the_extra_one_error_line_names_it(tmp_path: Path, image_tree: Path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "webdataset", None)
    monkeypatch.setitem(sys.modules, "braceexpand", None)
    assert cli.main(["data", "pack", str(image_tree), "--out", str(tmp_path / "s")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "error: WebDataset shards need(s) the wds extra: pip install 'imgcls[wds]'"
    )
    assert cli.main(["train", "--data", str(tmp_path / "train-{0..3}.tar")]) == 2
    assert "imgcls[wds]" in capsys.readouterr().err


def test_a_second_open_reads_the_index_cache_and_a_changed_shard_is_indexed_again(
    tmp_path: Path, split_tree: Path, monkeypatch
):
    out = shard_set(tmp_path, split_tree, shard_size="8KB")
    first = open_dataset(DataConfig(name=str(out)))
    opened = []
    real_open = tarfile.open
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    again = open_dataset(DataConfig(name=str(out)))
    assert opened == []  # no tar header read
    for split in ("train", "val", "test"):
        ours, theirs = getattr(again, split), getattr(first, split)
        assert ours.labels.tolist() == theirs.labels.tolist() and ours.paths == theirs.paths
    changed = sorted(out.glob("train-*.tar"))[0]
    changed.write_bytes(changed.read_bytes())  # same bytes, new times: indexed afresh
    open_dataset(DataConfig(name=str(out)))
    assert opened == [changed]
