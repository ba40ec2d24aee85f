"""Hugging Face datasets: local saved datasets, Parquet and imagefolders read through imgcls's own decoder."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls import cli
from imgcls.config import DataConfig
from imgcls.data.datasets import open_dataset
from imgcls.data.decode import open_image
from imgcls.data.hf import Row
from imgcls.data.loader import prepare
from tests.sources import HF_CLASSES, hf_dataset, parquet_file, png_rows, saved_dataset


def test_a_saved_dataset_keeps_its_splits_its_class_names_and_its_pixels(tmp_path: Path):
    saved = saved_dataset(tmp_path / "saved", train=10, test=3)
    bundle = open_dataset(DataConfig(name=str(saved)))
    assert bundle.classes == HF_CLASSES  # the ClassLabel's order, not sorted
    assert len(bundle.test) == 9 and len(bundle.train) + len(bundle.val) == 30  # test kept, val carved
    images, labels = png_rows(3, seed=1)
    first = bundle.test.paths[0]
    assert isinstance(first, Row) and str(first).endswith("/test[0]")
    assert first.read_bytes() == images[0] and int(bundle.test.labels[0]) == labels[0]
    assert np.array_equal(np.asarray(open_image(first, 3)), np.asarray(Image.open(io.BytesIO(images[0]))))


def test_parquet_files_and_named_columns_are_found(tmp_path: Path):
    single = parquet_file(tmp_path / "one.parquet", per_class=6)
    bundle = open_dataset(DataConfig(name=str(single)))
    assert bundle.single_tree and len(bundle.test) == 3  # one split only: val and test carved as today
    assert bundle.classes == HF_CLASSES

    # Text labels in a column called "category", two image columns: "picture" first, "thumbnail" chosen.
    import datasets

    images, labels = png_rows(4, seed=0)
    cells = [{"bytes": b, "path": None} for b in images]
    features = {
        "picture": datasets.Image(),
        "thumbnail": datasets.Image(),
        "category": datasets.Value("string"),
    }
    rows = {"picture": cells, "thumbnail": cells, "category": [HF_CLASSES[i] for i in labels]}
    datasets.Dataset.from_dict(rows, features=datasets.Features(features)).to_parquet(
        str(tmp_path / "named.parquet")
    )
    found = open_dataset(DataConfig(name=f"hf:{tmp_path / 'named.parquet'}", image_column="thumbnail"))
    assert found.classes == sorted(HF_CLASSES)  # plain text labels: sorted, as for a CSV
    assert isinstance(found.train.paths[0], Row) and found.train.paths[0].rows.column == "thumbnail"


def test_an_imagefolder_with_metadata_csv_reads_through_hf(tmp_path: Path):
    root = tmp_path / "imagefolder"
    images, labels = png_rows(5, seed=4)
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        lines = ["file_name,label"]
        for i, (data, label) in enumerate(zip(images, labels)):
            (root / split / f"{i}.png").write_bytes(data)
            lines.append(f"{i}.png,{HF_CLASSES[label]}")
        (root / split / "metadata.csv").write_text("\n".join(lines) + "\n")
    bundle = open_dataset(DataConfig(name=f"hf:{root}"))
    assert bundle.classes == sorted(HF_CLASSES) and len(bundle.test) == 15
    assert bundle.test.paths[0].read_bytes() in images  # the row points at its file: read from disk


def test_unlabelled_and_broken_rows_are_counted_skips(tmp_path: Path, caplog):
    import datasets

    ds = hf_dataset(5, 0)
    broken = {"image": {"bytes": b"not an image", "path": None}, "label": 0}
    unlabelled = {"image": ds.cast_column("image", datasets.Image(decode=False))[0]["image"], "label": -1}
    ds = ds.cast_column("image", datasets.Image(decode=False))
    ds = datasets.concatenate_datasets(
        [ds, datasets.Dataset.from_list([broken, unlabelled], features=ds.features)]
    )
    ds.to_parquet(str(tmp_path / "messy.parquet"))
    bundle = open_dataset(DataConfig(name=str(tmp_path / "messy.parquet"), val_split=0, test_split=0))
    assert bundle.skipped == [(f"{tmp_path / 'messy.parquet'}/train[16]", "no label")]
    prepared = prepare(bundle, DataConfig(), size=16, channels=3)
    assert len(prepared.train) == 15
    assert [why for _, why in prepared.skipped] == ["no label", "not an image file"]
    assert "skipped 2 unusable" in caplog.text


def test_no_label_column_or_unknown_column_is_one_error_line(tmp_path: Path, capsys):
    plain = hf_dataset(2, 0).remove_columns("label")
    plain.to_parquet(str(tmp_path / "nolabel.parquet"))
    capsys.readouterr()  # the test's own writing shows progress bars
    assert cli.main(["train", "--data", str(tmp_path / "nolabel.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no label column" in err and "data.label_column" in err
    assert "\n" not in err
    assert (
        cli.main(["train", "--data", str(tmp_path / "nolabel.parquet"), "--set", "data.image_column=photo"])
        == 2
    )
    assert "no column 'photo'" in capsys.readouterr().err
    labelled = tmp_path / "labelled.parquet"
    hf_dataset(2, 0).to_parquet(str(labelled))
    capsys.readouterr()
    for setting, says in (
        ("data.image_column=label", "does not hold images"),
        ("data.label_column=image", "holds images"),
    ):
        assert cli.main(["train", "--data", str(labelled), "--set", setting]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and says in err and "\n" not in err, setting


def test_a_hub_dataset_offline_and_not_cached_is_one_error_line(tmp_path: Path, monkeypatch, capsys):
    import datasets
    import huggingface_hub

    # HF_HUB_OFFLINE=1 with empty caches, set where the libraries read them once imported.
    for module in (datasets.config, huggingface_hub.constants):
        monkeypatch.setattr(module, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert cli.main(["train", "--data", "hf:nobody/no-such-dataset"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1].startswith("error: could not load hf:nobody/no-such-dataset")
        and "HF_DATASETS_OFFLINE" in err[-1]
    )
    assert not any("Traceback" in line for line in err)


def test_without_the_extra_one_error_line_names_it(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if `datasets` were not installed
    assert cli.main(["train", "--data", "hf:someone/something"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: Hugging Face datasets need(s) the hf extra: pip install 'imgcls[hf]'"


@pytest.mark.parametrize("source, cache", [("parquet", "ram"), ("saved", "off")])
def test_training_on_parquet_in_ram_and_on_a_saved_dataset_streamed(tmp_path: Path, source: str, cache: str):
    import imgcls

    if source == "parquet":
        data = str(parquet_file(tmp_path / "train.parquet", per_class=24))  # val and test carved
    else:
        data = str(saved_dataset(tmp_path / "saved", train=16, test=4))
    # The recipe's own settings, as the colour-folder runs use them (a fixed short run on ~50 images is noisy).
    over = {"log.progress": False, "data.batch_size": 8, "data.cache": cache, "data.workers": 0}
    result = imgcls.train(data=data, out=tmp_path / "run", overrides=over)
    assert result.test["accuracy"] >= 0.9  # the classes differ by colour: easy, if the rows were read right
    report = (result.run_dir / "report.html").read_text()
    assert "<html" in report and HF_CLASSES[0] in report
