"""`imgcls data labels` and `imgcls data apply` as a user runs them: a folder with planted label errors and
an icon theme's symlinked alias (one picture in two class folders), the review queue and page, the applied
manifest, the mistakes a user makes in review.csv, and the backbone-features path with its cache."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

import imgcls
from imgcls import cli
from imgcls.config import DataConfig
from imgcls.data.datasets import open_dataset
from imgcls.models import build_model
from tests.conftest import CLASSES, write_class_tree
from tests.multilabel import write_multilabel_manifest

PER_CLASS = 30
FLIPPED = {  # file -> (class folder it is filed in, its true class)
    "circle/circle_3.png": ("cross", "circle"),
    "circle/circle_7.png": ("square", "circle"),
    "cross/cross_5.png": ("circle", "cross"),
    "cross/cross_9.png": ("square", "cross"),
    "square/square_2.png": ("circle", "square"),
    "square/square_8.png": ("cross", "square"),
}
ALIAS = "square/alias-of-circle_0.png"  # a symlink to ../circle/circle_0.png
FAST = [
    "--folds",
    "3",
    "--set",
    "train.amp=off",
    "log.progress=false",
    "data.batch_size=16",
    "train.epochs=6",
]


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file's bytes hash and modification time (symlinks as links)."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.lstat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """3 classes x 40 images in class folders; 6 filed under a wrong class; one alias in two classes."""
    root = tmp_path_factory.mktemp("labels") / "photos"
    write_class_tree(root, per_class=PER_CLASS)
    for name, (wrong, _) in FLIPPED.items():
        (root / name).rename(root / wrong / f"moved-{Path(name).name}")
    (root / ALIAS).symlink_to(Path("..") / "circle" / "circle_0.png")
    return root


def moved(name: str) -> str:
    return f"{FLIPPED[name][0]}/moved-{Path(name).name}"


@pytest.fixture(scope="module")
def reviewed(folder: Path) -> tuple[Path, dict, dict]:
    before = snapshot(folder)
    out = folder.parent / "review"
    assert cli.main(["data", "labels", str(folder), "--out", str(out), *FAST]) == 0
    return out, before, snapshot(folder)


def rows_of(review: Path) -> list[dict[str, str]]:
    with open(review, newline="") as f:
        return list(csv.DictReader(f))


def test_conflicts_first_then_the_planted_errors_and_the_files_untouched(folder: Path, reviewed):
    out, before, after = reviewed
    assert before == after  # every input file's bytes and time, the symlink included
    rows = rows_of(out / "review.csv")
    assert list(rows[0]) == [
        "rank",
        "path",
        "split",
        "issue",
        "given",
        "suggested",
        "score",
        "note",
        "action",
    ]
    conflict = {Path(r["path"]).relative_to(folder).as_posix() for r in rows[:2]}
    assert conflict == {ALIAS, "circle/circle_0.png"} and {r["issue"] for r in rows[:2]} == {"conflict"}
    planted = {str(folder / moved(name)): truth for name, (_, truth) in FLIPPED.items()}
    top = rows[2 : 2 + 2 * len(planted)]  # the top 2 x (number planted) after the conflict
    found = [r for r in top if r["path"] in planted]
    # The issue asks for 70% in the top 2x. Confident learning flags an image only where the model is
    # confident (by that class's threshold) of another class: here 5 or 6 of the 6.
    assert len(found) >= 5
    assert all(r["issue"] == "label" and r["suggested"] == planted[r["path"]] for r in found)
    assert all(r["action"] == "" for r in rows)


def test_the_review_page_shows_each_row_with_neighbours_of_both_labels(reviewed):
    out, _, _ = reviewed
    page = (out / "review.html").read_text()
    rows = rows_of(out / "review.csv")
    assert page.count('<tr class="kind-') == len(rows)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 7 * len(rows)  # the image, 3 nearest of its given label, 3 of the suggested
    for data in images:
        Image.open(io.BytesIO(base64.b64decode(data))).verify()


def test_apply_writes_a_manifest_of_the_decisions(folder: Path, reviewed, tmp_path: Path):
    out, before, _ = reviewed
    rows = rows_of(out / "review.csv")
    truth = {str(folder / moved(name)): t for name, (_, t) in FLIPPED.items()}
    for r in rows:
        if r["path"] in truth:
            r["action"], r["suggested"] = "relabel", truth[r["path"]]
        elif r["path"].endswith(ALIAS):
            r["action"] = "DROP"  # any case
    decided = out / "decided.csv"
    write_rows(decided, rows)
    fixed = folder.parent / "fixed.csv"
    assert cli.main(["data", "apply", str(decided), "--out", str(fixed)]) == 0
    assert snapshot(folder) == before
    bundle = open_dataset(DataConfig(name=str(fixed), val_split=0.0, test_split=0.0))
    assert len(bundle.train) == 3 * PER_CLASS  # the alias dropped
    labels = {
        Path(p).relative_to(folder).as_posix(): bundle.classes[y]
        for p, y in zip(bundle.train.paths, bundle.train.labels.tolist())
    }
    relabelled = {Path(r["path"]).relative_to(folder).as_posix() for r in rows if r["action"] == "relabel"}
    assert relabelled and all(
        labels[moved(name)] == t for name, (_, t) in FLIPPED.items() if moved(name) in relabelled
    )
    assert all(
        labels[moved(name)] == wrong for name, (wrong, _) in FLIPPED.items() if moved(name) not in relabelled
    )
    assert ALIAS not in labels and labels["circle/circle_0.png"] == "circle"
    assert sorted(set(labels.values())) == sorted(CLASSES)


def write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"action": "fix"}, r"line 2: action 'fix' is none of keep, relabel, drop"),
        (
            {"action": "relabel", "suggested": "triangle"},
            r"line 2: relabel to 'triangle', which is not a class",
        ),
        ({"path": "/nowhere/x.png"}, r"names 1 image\(s\) .* no longer lists, e.g. /nowhere/x.png"),
    ],
)
def test_mistakes_in_the_review_are_one_error_line(reviewed, tmp_path: Path, capsys, change, message):
    out, _, _ = reviewed
    rows = rows_of(out / "review.csv")
    rows[0] |= change
    bad = out / "bad.csv"
    write_rows(bad, rows)
    assert cli.main(["data", "apply", str(bad), "--out", str(out.parent / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and re.search(message, err), err
    assert not (out.parent / "x.csv").exists()


def test_a_manifest_outside_the_images_folder_and_a_review_without_its_summary_are_refused(
    reviewed, tmp_path: Path, capsys
):
    out, _, _ = reviewed
    assert cli.main(["data", "apply", str(out / "review.csv"), "--out", str(out / "fixed.csv")]) == 2
    assert "put it in" in capsys.readouterr().err
    lone = tmp_path / "review.csv"
    lone.write_bytes((out / "review.csv").read_bytes())
    assert cli.main(["data", "apply", str(lone), "--out", str(tmp_path / "f.csv")]) == 2
    assert "no labels.json beside" in capsys.readouterr().err


def test_what_cannot_be_reviewed_is_said_before_training(tmp_path: Path, capsys):
    manifest = write_multilabel_manifest(tmp_path, n=24)
    assert cli.main(["data", "labels", str(manifest), "--out", str(tmp_path / "r")]) == 2
    assert "single-label data" in capsys.readouterr().err
    assert cli.main(["data", "labels", str(manifest), "--folds", "1"]) == 2
    assert "at least 2 folds" in capsys.readouterr().err
    write_class_tree(tmp_path / "tree", per_class=6)
    assert (
        cli.main(["data", "labels", str(tmp_path / "tree"), "--time", "1s", "--out", str(tmp_path / "r")])
        == 2
    )
    assert "the time budget is used up before fold 1 of 5" in capsys.readouterr().err
    write_class_tree(tmp_path / "three", per_class=1)
    assert cli.main(["data", "labels", str(tmp_path / "three"), "--out", str(tmp_path / "r")]) == 2
    assert "3 images are too few to cross-fit in 5 folds" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_pretrained_backbone_gives_a_linear_head_per_fold_on_features_cached_by_content(
    folder: Path, tmp_path: Path, monkeypatch
):
    backbone = tmp_path / "backbone.safetensors"  # a backbone's weights file, as --weights takes one
    save_file(
        build_model("smallnet", num_classes=10, in_chans=3, input_size=32, width=8).state_dict(), backbone
    )
    settings = {"model.weights": str(backbone), "model.width": 8, "train.amp": "off", "log.progress": False}
    first = imgcls.review_labels(str(folder), out=tmp_path / "r1", folds=3, overrides=settings)
    assert first["method"] == "a linear head on smallnet features"
    cache = list((Path(os.environ["IMGCLS_DATA"]) / "cache" / "features").glob("*.npz"))
    assert len(cache) == 1
    with np.load(cache[0]) as stored:
        assert len(stored["keys"]) == 3 * PER_CLASS  # the alias has circle_0's content: one entry

    def no_forward(*args, **kwargs):
        raise AssertionError("features computed again")

    monkeypatch.setattr("imgcls.api.label_review.predict_features", no_forward)
    second = imgcls.review_labels(str(folder), out=tmp_path / "r2", folds=3, overrides=settings)
    with (
        np.load(tmp_path / "r1" / "probabilities.npz") as a,
        np.load(tmp_path / "r2" / "probabilities.npz") as b,
    ):
        assert np.array_equal(a["probs"], b["probs"]) and a["names"].tolist() == b["names"].tolist()
    assert second["issues"] == first["issues"]


@pytest.mark.parametrize(
    ("review_bytes", "summary", "message"),
    [
        (b"path,given\xff\n", None, "is not a UTF-8 CSV file"),
        (b"path,given\n/x.png,a\n", None, "has no action, suggested column"),
        (None, "{not json", "labels.json cannot be read"),
    ],
)
def test_a_broken_review_folder_is_one_error_line(
    reviewed, tmp_path: Path, capsys, review_bytes, summary, message
):
    out, _, _ = reviewed
    (tmp_path / "review.csv").write_bytes(review_bytes or (out / "review.csv").read_bytes())
    (tmp_path / "labels.json").write_text(summary or (out / "labels.json").read_text())
    assert cli.main(["data", "apply", str(tmp_path / "review.csv"), "--out", str(tmp_path / "f.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and message in err and "Traceback" not in err, err


def test_an_empty_class_folder_keeps_its_column(tmp_path: Path):
    write_class_tree(tmp_path / "tree", per_class=8)
    (tmp_path / "tree" / "triangle").mkdir()  # a class folder with no images yet
    settings = {"train.amp": "off", "log.progress": False, "train.epochs": 2}
    summary = imgcls.review_labels(str(tmp_path / "tree"), out=tmp_path / "r", folds=2, overrides=settings)
    assert summary["classes"] == [*CLASSES, "triangle"]
    with np.load(tmp_path / "r" / "probabilities.npz") as stored:
        assert stored["probs"].shape == (3 * 8, 4)
