"""The data doctor names every planted problem and finds nothing on a clean dataset."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgcls
from imgcls import cli
from imgcls.data.types import DataError
from imgcls.reporting import data_report_text
from tests.conftest import write_class_tree


def photo(seed: int, size: int = 64) -> Image.Image:
    """A smooth picture (gradient and a disc), the kind JPEG re-encoding barely changes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    cy, cx, r = rng.uniform(0.3, 0.7, 3) * np.array([1, 1, 0.5])
    disc = ((y - cy) ** 2 + (x - cx) ** 2 < r**2).astype(float)
    base = rng.uniform(0, 1, 3)
    arr = np.stack([(base[c] * x + (1 - base[c]) * y) * 180 + disc * 70 for c in range(3)], -1)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")


def png_bytes(image: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", **kwargs)
    return buf.getvalue()


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    root = tmp_path / "planted"
    for i, split in enumerate(("train", "val", "test")):
        write_class_tree(root / split, per_class=6, seed=10 + i, classes=("a", "b", "c"))
    (root / "train" / "d").mkdir()  # an empty class
    a = root / "train" / "a"
    (a / "zero.png").write_bytes(b"")
    (a / "notes.txt").write_text("not an image")
    good = png_bytes(photo(1))
    (a / "truncated.png").write_bytes(good[: len(good) // 2])
    jpeg = io.BytesIO()
    photo(2).save(jpeg, "JPEG")
    data = bytearray(jpeg.getvalue())
    data[200:] = bytes(len(data) - 200)  # header intact, image data destroyed
    (a / "corrupt.jpg").write_bytes(bytes(data))
    photo(3).convert("CMYK").save(a / "cmyk.jpg")
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(a / "deep.png")
    palette = photo(4).convert("P")
    palette.save(a / "palette.png", transparency=0)
    frames = [photo(5).convert("P"), photo(6).convert("P")]
    frames[0].save(a / "anim.gif", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 6
    photo(7).save(a / "rotated.jpg", exif=exif)
    photo(8).resize((200, 20)).save(a / "wide.png")
    photo(9).resize((8, 8)).save(a / "tiny.png")
    # Leakage: the same file in train and test; a re-encoded copy in val; a re-encoded copy within train.
    photo(11).save(root / "train" / "b" / "original.png")
    shutil.copy(root / "train" / "b" / "original.png", root / "test" / "b" / "copied.png")
    photo(11).save(root / "val" / "b" / "reencoded.jpg", quality=90)
    photo(12).save(root / "train" / "c" / "first.png")
    photo(12).save(root / "train" / "c" / "again.jpg", quality=92)
    return root


PLANTED = {
    "zero-byte": "zero.png",
    "not-image": "notes.txt",
    "truncated": "truncated.png",
    "corrupt": "corrupt.jpg",
    "cmyk": "cmyk.jpg",
    "16-bit": "deep.png",
    "palette-transparency": "palette.png",
    "animated": "anim.gif",
    "exif-rotated": "rotated.jpg",
    "extreme-aspect": "wide.png",
    "tiny": "tiny.png",
    "empty-class": "d",
    "leak": "copied.png",
    "near-leak": "reencoded.jpg",
    "near-duplicate": "again.jpg",
}


def test_every_planted_problem_is_named(planted: Path, tmp_path: Path, capsys):
    assert cli.main(["data", "check", str(planted), "--out", str(tmp_path / "r.json")]) == 1
    report = json.loads((tmp_path / "r.json").read_text())
    found = {f["kind"]: json.dumps(f["items"]) for f in report["findings"]}
    for kind, name in PLANTED.items():
        assert kind in found and name in found[kind], kind
    severities = {f["kind"]: f["severity"] for f in report["findings"]}
    assert {k for k, s in severities.items() if s == "error"} == {
        "not-image",
        "zero-byte",
        "truncated",
        "corrupt",
        "leak",
    }
    # Nothing else is flagged: the 54 plain images raise no finding.
    flagged = {
        Path(p).name for f in report["findings"] for r in f["items"] for p in (r["path"], r["other"]) if p
    }
    assert not [n for n in flagged if n.startswith(("a_", "b_", "c_"))]
    out = capsys.readouterr().out
    assert "ERROR leak" in out and "copied.png" in out


def test_findings_are_records_the_report_renders_without_parsing(planted: Path):
    """Each finding names records (kind, split, path, reason; a pair's other image; a class), and the text
    report is made from those fields."""
    report = imgcls.check_data(str(planted), out=None, near=False)
    items = {f["kind"]: f["items"] for f in report["findings"]}
    leak = items["leak"][0]
    assert {leak["split"], leak["other_split"]} == {"train", "test"}
    assert {Path(leak["path"]).name, Path(leak["other"]).name} == {"original.png", "copied.png"}
    truncated = items["truncated"][0]
    assert (truncated["kind"], truncated["split"], Path(truncated["path"]).name) == (
        "truncated",
        "train",
        "truncated.png",
    )
    assert truncated["reason"] and not truncated["other"]
    assert [(r["split"], r["label"], r["path"]) for r in items["empty-class"]] == [("train", "d", "")]
    text = data_report_text(report)
    assert f"{leak['split']}: {leak['path']} <-> {leak['other_split']}: {leak['other']}" in text
    assert f"{truncated['path']}: {truncated['reason']}" in text


def test_a_clean_dataset_has_no_findings(split_tree: Path, tmp_path: Path, capsys):
    assert cli.main(["data", "check", str(split_tree), "--out", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ok"] and report["findings"] == []
    assert report["stats"]["channels"] == 3 and len(report["stats"]["mean"]) == 3
    assert report["class_counts"]["train"] == {"circle": 16, "cross": 16, "square": 16}
    assert "clean: no problems found" in capsys.readouterr().out


def test_the_mean_and_std_match_the_pixels(tmp_path: Path):
    root = tmp_path / "gray"
    for c, value in (("dark", 0), ("light", 255)):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((20, 20), value, np.uint8), "L").save(root / c / f"{i}.png")
    report = imgcls.check_data(str(root), out=None, overrides={"data.val_split": 0.0, "data.test_split": 0.0})
    assert report["stats"]["channels"] == 1
    assert report["stats"]["mean"] == [0.5] and report["stats"]["std"] == [0.5]


def test_training_stops_on_leakage_unless_told_otherwise(planted: Path, tmp_path: Path):
    clean = tmp_path / "leaky"
    for split in ("train", "test"):
        write_class_tree(clean / split, per_class=6, seed=1, classes=("a", "b"))  # same seed: same files
    with pytest.raises(DataError, match=r"(?s)identical images .* in two splits.*--set data.check=off"):
        imgcls.train(
            data=str(clean),
            model="tutorial-cnn",
            epochs=1,
            out=tmp_path / "r",
            overrides={"log.progress": False},
        )
    result = imgcls.train(
        data=str(clean),
        model="tutorial-cnn",
        epochs=1,
        out=tmp_path / "r2",
        overrides={"log.progress": False, "data.check": False},
    )
    assert result.test is not None


def test_html_report_shows_thumbnails_of_named_files(planted: Path, tmp_path: Path):
    page = tmp_path / "check.html"
    assert (
        cli.main(["data", "check", str(planted), "--out", str(tmp_path / "r.json"), "--html", str(page)]) == 1
    )
    text = page.read_text()
    for section in ("classes", "stats", "findings"):
        assert f'id="{section}"' in text
    assert text.count("data:image/png;base64,") >= 10 and "copied.png" in text and "ERROR leak" in text


def test_one_picture_under_two_classes_is_a_label_conflict_not_a_duplicate(tmp_path: Path, capsys):
    """An icon theme's alias: status/edit.png is a symlink to actions/edit.png; a re-encoded copy of
    another icon sits in both folders too. Same-class copies stay plain duplicates."""
    root = tmp_path / "icons"
    write_class_tree(root, per_class=4, seed=5, classes=("actions", "status"))
    photo(7).save(root / "actions" / "edit.png")
    (root / "status" / "edit.png").symlink_to(Path("..") / "actions" / "edit.png")
    photo(8).save(root / "actions" / "save.png")
    photo(8).save(root / "status" / "save.jpg", quality=95)  # near-identical, under the other class
    shutil.copy(root / "actions" / "actions_0.png", root / "actions" / "again.png")  # same class
    report = imgcls.check_data(
        str(root), out=tmp_path / "r.json", overrides={"data.val_split": 0.0, "data.test_split": 0.0}
    )
    kinds = {f["kind"]: f for f in report["findings"]}
    conflicts = {
        frozenset(Path(p).name for p in (r["path"], r["other"])) for r in kinds["label-conflict"]["items"]
    }
    assert conflicts == {frozenset({"edit.png"}), frozenset({"save.png", "save.jpg"})}
    assert all("actions" in r["reason"] and "status" in r["reason"] for r in kinds["label-conflict"]["items"])
    assert kinds["label-conflict"]["severity"] == "warning"
    duplicates = [{Path(r["path"]).name, Path(r["other"]).name} for r in kinds["duplicate"]["items"]]
    assert duplicates == [{"actions_0.png", "again.png"}]
    assert (
        cli.main(["data", "check", str(root), "--out", str(tmp_path / "c.json"), "--set", "data.val_split=0"])
        == 0
    )  # warnings only
    assert "the same picture filed under two classes" in capsys.readouterr().out
