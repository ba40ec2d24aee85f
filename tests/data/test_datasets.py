"""Built-in datasets: scikit-learn digits, Fashion-MNIST from the Debian package, offline errors."""

from pathlib import Path

import pytest
import torch

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
