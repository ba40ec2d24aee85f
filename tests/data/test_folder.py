"""Folder trees and CSV manifests: layouts, splits, stable class indices, bad input."""

import os
import shutil
from pathlib import Path

import pytest
import torch

from imgcls.config import DataConfig
from imgcls.data.datasets import DataError, open_dataset, stratified_split
from imgcls.data.doctor import check
from tests.conftest import CLASSES, write_class_tree


def test_single_tree_is_split_stratified_and_seeded(image_tree: Path):
    cfg = DataConfig(name=str(image_tree), val_split=0.25, test_split=0.25)
    a, b = open_dataset(cfg), open_dataset(cfg)
    assert a.classes == list(CLASSES)
    assert (len(a.train), len(a.val), len(a.test)) == (18, 9, 9)
    for split in (a.val, a.test):
        assert torch.bincount(split.labels).tolist() == [3, 3, 3]  # stratified
    assert a.val.paths == b.val.paths  # seeded: the same split every time
    seen = set(a.train.paths) | set(a.val.paths) | set(a.test.paths)
    assert len(seen) == 36  # disjoint and complete


def test_split_layout_uses_its_own_val_and_test(split_tree: Path):
    b = open_dataset(DataConfig(name=str(split_tree)))
    assert (len(b.train), len(b.val), len(b.test)) == (48, 12, 18)
    for split in (b.train, b.val, b.test):
        for path, label in zip(split.paths, split.labels.tolist()):
            assert path.parent.name == CLASSES[label]  # never a wrong label


def test_empty_class_and_missing_val_class_never_shift_labels(split_tree: Path):
    (split_tree / "train" / "aaa_empty").mkdir()  # sorts first: would shift every index if dropped
    for p in (split_tree / "val" / "cross").iterdir():
        p.unlink()
    (split_tree / "val" / "cross").rmdir()
    b = open_dataset(DataConfig(name=str(split_tree)))
    assert b.classes == ["aaa_empty", *CLASSES]
    for split in (b.train, b.val, b.test):
        for path, label in zip(split.paths, split.labels.tolist()):
            assert b.classes[label] == path.parent.name
    assert "cross" not in {p.parent.name for p in b.val.paths}


def test_class_only_in_test_is_an_error(split_tree: Path):
    write_class_tree(split_tree / "test", per_class=2, classes=("zebra",))
    with pytest.raises(DataError, match="zebra.*training split lacks"):
        open_dataset(DataConfig(name=str(split_tree)))


def test_folder_without_class_folders(tmp_path: Path):
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(DataError, match="no class folders"):
        open_dataset(DataConfig(name=str(tmp_path)))


def test_missing_path_and_unknown_name():
    with pytest.raises(DataError, match="neither an existing folder"):
        open_dataset(DataConfig(name="/no/such/folder"))
    with pytest.raises(DataError, match="Did you mean: fashion-mnist"):
        open_dataset(DataConfig(name="fashion-mnst"))


def test_non_image_files_are_counted_as_skipped(image_tree: Path):
    (image_tree / "circle" / "notes.txt").write_text("hello")
    b = open_dataset(DataConfig(name=str(image_tree)))
    assert [(Path(p).name, why) for p, why in b.skipped] == [("notes.txt", "not an image file (extension)")]


def test_csv_manifest(csv_manifest: Path):
    b = open_dataset(DataConfig(name=str(csv_manifest), val_split=0.2, test_split=0.2))
    assert b.classes == sorted(CLASSES)
    assert len(b.train) + len(b.val) + len(b.test) == 30
    for split in (b.train, b.val, b.test):
        for path, label in zip(split.paths, split.labels.tolist()):
            assert path.name.startswith(b.classes[label])


def test_csv_bad_rows_are_skipped_and_counted(csv_manifest: Path):
    with open(csv_manifest, "a") as f:
        f.write("images/missing.png,circle\n")
        f.write("only-one-column\n")
        f.write(",cross\n")
        f.write("\n")
    b = open_dataset(DataConfig(name=str(csv_manifest)))
    reasons = [why for _, why in b.skipped]
    assert len(reasons) == 3
    assert any("file not found" in r for r in reasons) and any("no label" in r for r in reasons)
    assert any("empty path" in r for r in reasons)
    with pytest.raises(DataError, match="file not found"):
        open_dataset(DataConfig(name=str(csv_manifest), strict=True))


def test_csv_path_escaping_its_folder_is_refused(csv_manifest: Path, tmp_path: Path):
    outside = tmp_path.parent / "outside.png"
    outside.write_bytes((csv_manifest.parent / "images" / "circle0.png").read_bytes())
    with open(csv_manifest, "a") as f:
        f.write(f"../{outside.name},circle\n")
    with pytest.raises(DataError, match="leaves the manifest's folder"):
        open_dataset(DataConfig(name=str(csv_manifest), strict=True))
    b = open_dataset(DataConfig(name=str(csv_manifest)))
    assert any("leaves the manifest's folder" in why for _, why in b.skipped)
    assert outside not in b.train.paths


def test_csv_split_column_and_numeric_labels(tmp_path: Path, csv_manifest: Path):
    lines = ["file,class,split"]
    for i, split in enumerate(["train"] * 6 + ["val"] * 2 + ["test"] * 2):
        lines.append(f"images/circle{i}.png,{[2, 10, 1][i % 3]},{split}")
    (tmp_path / "m.csv").write_text("\n".join(lines))
    b = open_dataset(DataConfig(name=str(tmp_path / "m.csv")))
    assert b.classes == ["1", "2", "10"]  # numeric order, not text order
    assert (len(b.train), len(b.val), len(b.test)) == (6, 2, 2)


def test_stratified_split_keeps_every_class_in_train():
    labels = torch.tensor([0] * 10 + [1] * 2 + [2])
    keep, take = stratified_split(labels, 0.3, seed=0)
    assert set(labels[keep].tolist()) == {0, 1, 2}
    assert sorted(labels[take].tolist()) == [0, 0, 0, 1]


def test_every_unusable_path_is_a_named_skip(image_tree: Path, caplog):
    """Hostile entries a real folder has: each is named in a counted skip, nothing raises, nothing is silent."""
    circle = image_tree / "circle"
    (circle / "gone.png").symlink_to(image_tree / "nowhere.png")  # a broken link
    os.mkfifo(circle / "pipe.png")  # a special file: opening it would hang
    (circle / "loop").symlink_to(image_tree)  # a folder link that loops back
    (circle / "alias.png").symlink_to(circle / "circle_0.png")  # an alias: a usable file
    (circle / "empty.png").write_bytes(b"")  # zero bytes: a decode-time skip, named there
    bad_name = os.path.join(os.fsencode(circle), b"caf\xe9.png").decode("utf-8", "surrogateescape")
    shutil.copy(circle / "circle_1.png", bad_name)  # a name that is not valid UTF-8
    b = open_dataset(DataConfig(name=str(image_tree), val_split=0, test_split=0))
    reasons = {Path(where).name: why for where, why in b.skipped}
    assert reasons["gone.png"] == "broken symbolic link"
    assert reasons["pipe.png"] == "not a regular file (a fifo)"
    assert reasons["loop"] == "folder a link to an enclosing folder (a loop): skipped"
    names = {p.name for p in b.train.paths}
    assert {"alias.png", "empty.png", Path(bad_name).name} <= names and len(b.train) == 36 + 3
    report = check(b, near=False)
    assert any(f.kind == "unusable-path" and f.count == 3 for f in report.findings)
    assert any(f.kind == "zero-byte" for f in report.errors)


def test_labels_that_differ_only_by_case_space_or_unicode_form_are_warned(tmp_path: Path, caplog):
    import unicodedata

    from tests.conftest import write_class_tree

    classes = (
        "Cat",
        "cat",
        unicodedata.normalize("NFC", "café"),
        unicodedata.normalize("NFD", "café"),
        "dog",
    )
    write_class_tree(tmp_path / "t", per_class=3, classes=classes)
    with caplog.at_level("WARNING", logger="imgcls"):
        b = open_dataset(DataConfig(name=str(tmp_path / "t"), val_split=0, test_split=0))
    assert len(b.classes) == 5  # kept apart, never merged silently
    warned = [r.getMessage() for r in caplog.records if "differ only by case" in r.getMessage()]
    assert len(warned) == 2 and "'Cat' / 'cat'" in " ".join(warned)


@pytest.mark.parametrize("kind", ["folder", "class folders without images", "manifest"])
def test_empty_data_is_one_error_line_in_train_and_exit_1_in_check(kind: str, tmp_path: Path, capsys):
    from imgcls import cli

    data = tmp_path / "data"
    data.mkdir()
    if kind == "class folders without images":
        (data / "a").mkdir()
        (data / "b").mkdir()
    if kind == "manifest":
        data = tmp_path / "list.csv"
        data.write_text("path,label\n")
    assert cli.main(["train", "--data", str(data), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert cli.main(["data", "check", str(data), "--out", str(tmp_path / "c.json")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_one_manifest_reader_for_train_check_and_predict(tmp_path: Path):
    """BOM, CRLF, quoting, columns in any order, an images folder that is a symlink elsewhere: accepted by
    training and prediction alike; a path leaving the manifest's folder: refused by both."""
    from imgcls.data.manifest import read_manifest
    from imgcls.inference.inputs import inputs_with_labels

    elsewhere = tmp_path / "disk2" / "pictures"
    write_class_tree(elsewhere, per_class=4)
    project = tmp_path / "project"
    project.mkdir()
    (project / "images").symlink_to(elsewhere)  # the images live on another disk
    (project / "images" / "circle" / "a, b.png").write_bytes(
        (elsewhere / "circle" / "circle_0.png").read_bytes()
    )
    (tmp_path / "outside.png").write_bytes((elsewhere / "cross" / "cross_0.png").read_bytes())
    rows = ["label,path"] + [f"{c},images/{c}/{c}_{i}.png" for c in CLASSES for i in range(4)]
    rows += ['circle,"images/circle/a, b.png"', "cross,../outside.png", f"cross,{tmp_path / 'outside.png'}"]
    manifest = project / "data.csv"
    manifest.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(rows).encode() + b"\r\n")

    train_rows, train_skipped = read_manifest(manifest, need_label=True)
    assert len(train_rows) == 13 and len(train_skipped) == 2
    assert all("leaves the manifest's folder" in why for _, why in train_skipped)
    assert all(str(r.path).startswith(str(project / "images")) for r in train_rows)  # not resolved away
    b = open_dataset(DataConfig(name=str(manifest), val_split=0, test_split=0))
    assert b.classes == list(CLASSES) and len(b.train) == 13

    files, labels, missing = inputs_with_labels([manifest], CLASSES)
    assert files == [r.path for r in train_rows] and len(missing) == 2
    assert labels[project / "images" / "circle" / "a, b.png"] == "circle"
