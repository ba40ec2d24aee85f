"""Built-in datasets: scikit-learn digits, Fashion-MNIST from the Debian package, offline errors."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from imgcls.config import DataConfig
from imgcls.data import datasets
from imgcls.data.datasets import DataError, open_dataset

HAS_SYSTEM_FMNIST = (datasets.SYSTEM_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists()


def test_digits_offline_and_stratified():
    b = open_dataset(DataConfig(name="digits", val_split=0.1))
    assert b.classes == [str(i) for i in range(10)]
    assert b.train.images.dtype == torch.uint8 and b.train.images.shape[1:] == (1, 8, 8)
    assert len(b.train) + len(b.val) + len(b.test) == 1797
    assert set(torch.bincount(b.test.labels).tolist()) <= {35, 36, 37}
    assert not b.flip_ok


@pytest.mark.skipif(not HAS_SYSTEM_FMNIST, reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_the_system_copy_without_network():
    b = open_dataset(DataConfig(name="fashion-mnist"))
    assert len(b.train) + len(b.val) == 60000 and len(b.test) == 10000
    assert b.train.images.shape[1:] == (1, 28, 28)
    assert b.classes[0] == "T-shirt/top" and b.classes[9] == "Ankle boot"
    assert torch.bincount(b.test.labels).tolist() == [1000] * 10


def test_offline_without_a_copy_gives_one_clear_error(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(datasets, "SYSTEM_FASHION_MNIST", tmp_path / "absent")
    monkeypatch.setenv("IMGCLS_DATA", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr("torchvision.datasets.utils.urlopen", offline, raising=False)
    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(DataError, match=r"could not load fashion-mnist.*connect to the internet"):
        open_dataset(DataConfig(name="fashion-mnist"))


def test_carved_splits_keep_identical_and_near_identical_images_together(tmp_path: Path, caplog):
    """An icon theme: the same picture filed under two classes through symlinks, and re-encoded copies.
    imgcls carves val/test itself, so it must not create the leak its own check refuses."""
    import numpy as np

    import imgcls
    from tests.conftest import make_image

    rng = np.random.default_rng(0)
    root = tmp_path / "icons"
    for label, name in enumerate(("actions", "devices", "status")):
        (root / name).mkdir(parents=True)
        for i in range(30):
            make_image(label, rng).save(root / name / f"{name}-{i}.png")
    for i in range(12):  # aliases: one picture in two classes (what icon themes do with symlinks)
        (root / "status" / f"alias-{i}.png").symlink_to(root / "actions" / f"actions-{i}.png")
    for i in range(12, 24):  # near-identical: the same picture re-encoded as JPEG
        with Image.open(root / "devices" / f"devices-{i}.png") as im:
            im.save(root / "devices" / f"devices-{i}-copy.jpg", quality=95)
    with caplog.at_level("INFO", logger="imgcls"):
        bundle = open_dataset(DataConfig(name=str(root)))
    assert "24 group(s) of identical or near-identical images kept together" in caplog.text
    where = {}
    for split in ("train", "val", "test"):
        for path in bundle.split(split).paths:
            where[path.name] = split
    for i in range(12):
        assert where[f"alias-{i}.png"] == where[f"actions-{i}.png"]
    for i in range(12, 24):
        assert where[f"devices-{i}-copy.jpg"] == where[f"devices-{i}.png"]
    result = imgcls.train(
        data=str(root),
        model="tutorial-cnn",
        epochs=1,
        out=tmp_path / "run",
        overrides={"log.progress": False, "data.image_size": 16},
    )
    assert result.test is not None  # the leakage check found nothing to refuse


def test_carving_a_folder_learns_its_channels_from_the_files_it_opened(tmp_path: Path, image_tree: Path):
    for name in ("a", "b"):
        (tmp_path / "gray" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (12, 12), 40 * i + (name == "b") * 100).save(tmp_path / "gray" / name / f"{i}.png")
    assert open_dataset(DataConfig(name=str(tmp_path / "gray"))).channels == 1
    assert open_dataset(DataConfig(name=str(image_tree))).channels == 3  # RGB photos
    (tmp_path / "gray" / "a" / "broken.png").write_bytes(b"")  # an unreadable file changes nothing
    Image.new("RGB", (12, 12), (200, 10, 10)).save(tmp_path / "gray" / "b" / "colour.png")
    assert open_dataset(DataConfig(name=str(tmp_path / "gray"))).channels == 3
