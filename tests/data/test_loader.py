"""The in-memory fast path and the streaming path: same labels, same kind of batches."""

from pathlib import Path

import pytest
import torch

from imgcls.config import DataConfig
from imgcls.data.datasets import DataBundle, Split, open_dataset
from imgcls.data.loader import build_loader, prepare, resolve_channels
from imgcls.data.memory import BatchAugment, MemoryLoader
from tests.conftest import write_class_tree


def _collect(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_ram_and_stream_paths_give_identical_eval_batches(image_tree: Path):
    kw = {"size": 24, "channels": 3, "device": torch.device("cpu"), "train": False}
    ram_cfg = DataConfig(name=str(image_tree), cache="ram", eval_batch_size=5)
    ram = prepare(open_dataset(ram_cfg), ram_cfg, 24, 3)
    off_cfg = DataConfig(name=str(image_tree), cache="off", eval_batch_size=5, workers=0)
    off = prepare(open_dataset(off_cfg), off_cfg, 24, 3)
    assert ram.train.images is not None and off.train.images is None
    x1, y1 = _collect(build_loader(ram.train, ram_cfg, **kw))
    x2, y2 = _collect(build_loader(off.train, off_cfg, **kw))
    assert torch.equal(y1, y2)
    assert x1.dtype == x2.dtype == torch.float32 and x1.shape == x2.shape == (len(ram.train), 3, 24, 24)
    assert torch.allclose(x1, x2)


def test_train_batches_are_augmented_but_keep_labels(image_tree: Path):
    cfg = DataConfig(name=str(image_tree), batch_size=8, val_split=0.0, test_split=0.0)
    for cache in ("ram", "off"):
        c = DataConfig(**{**cfg.__dict__, "cache": cache, "workers": 0})
        bundle = prepare(open_dataset(c), c, 32, 3)
        loader = build_loader(
            bundle.train, c, size=32, channels=3, device=torch.device("cpu"), train=True, seed=1
        )
        loader.set_epoch(0)
        x, y = _collect(loader)
        assert x.shape[1:] == (3, 32, 32) and x.min() >= 0 and x.max() <= 1
        assert len(y) == 32  # 36 images, drop_last with batch 8
        # the class's colour channel is still the brightest: augmentation moved pixels, not labels
        assert torch.equal(x.mean((2, 3)).argmax(1), y)


def test_memory_loader_order_depends_only_on_seed_and_epoch():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 4, 4).contiguous()
    labels = torch.arange(10)

    def order(epoch: int, seed: int = 0) -> list[int]:
        loader = MemoryLoader(images, labels, 4, device=torch.device("cpu"), shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        return torch.cat([y for _, y in loader]).tolist()

    assert order(0) == order(0) and order(0) != order(1) and order(0) != order(0, seed=5)
    assert sorted(order(3)) == list(range(10))


def test_batch_augment_translates_and_flips():
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 3:5, 0] = 1.0  # a bar on the left edge
    out = BatchAugment(8, flip=True)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    right = out[..., 4:].sum((1, 2, 3)) > out[..., :4].sum((1, 2, 3))
    assert 0 < right.sum() < 64  # some flipped, some not
    assert not torch.equal(out, x)


def test_flip_augment_mirrors_without_moving():
    """data.augment=flip: some images mirrored, none translated."""
    images = torch.zeros(64, 1, 8, 8, dtype=torch.uint8)
    images[:, :, 3:5, 0] = 255  # a bar on the left edge
    cfg = DataConfig(name="x", batch_size=64, augment="flip")
    loader = build_loader(
        Split(torch.zeros(64, dtype=torch.long), images),
        cfg,
        size=8,
        channels=1,
        device=torch.device("cpu"),
        train=True,
    )
    (x, _), *_ = list(loader)
    left, right = (x[:, 0, 3:5, 0] == 1).all(1), (x[:, 0, 3:5, 7] == 1).all(1)
    assert (left ^ right).all() and 0 < right.sum() < 64  # each image: the bar at one edge, mirrored or not


def test_channels_follow_the_data(image_tree: Path, tmp_path: Path):
    assert resolve_channels(open_dataset(DataConfig(name=str(image_tree))), DataConfig()) == 3
    gray = tmp_path / "gray"
    for name in ("a", "b"):
        (gray / name).mkdir(parents=True)
        for i in range(3):
            from PIL import Image

            Image.new("L", (10, 10), 30 * i).save(gray / name / f"{i}.png")
    assert resolve_channels(open_dataset(DataConfig(name=str(gray))), DataConfig()) == 1
    assert resolve_channels(open_dataset(DataConfig(name=str(gray))), DataConfig(channels=3)) == 3


def test_corrupt_files_are_skipped_with_one_warning_naming_each(image_tree: Path, caplog):
    (image_tree / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (image_tree / "cross" / "empty.jpg").write_bytes(b"")
    cfg = DataConfig(name=str(image_tree), cache="ram")
    bundle = prepare(open_dataset(cfg), cfg, 32, 3)
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 36
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "skipped 2" in warnings[0] and "broken.png" in warnings[0] and "empty.jpg" in warnings[0]


def test_strict_turns_skips_into_an_error(image_tree: Path):
    import pytest

    from imgcls.data.datasets import DataError

    (image_tree / "circle" / "broken.png").write_bytes(b"garbage")
    cfg = DataConfig(name=str(image_tree), strict=True)
    with pytest.raises(DataError, match="broken.png"):
        prepare(open_dataset(cfg), cfg, 32, 3)


def test_tensor_splits_adapt_size_and_channels():
    images = torch.randint(0, 255, (4, 1, 8, 8), dtype=torch.uint8)
    bundle = DataBundle("t", ["a", "b"], Split(torch.tensor([0, 1, 0, 1]), images), channels=1, image_size=8)
    out = prepare(bundle, DataConfig(), 16, 3)
    assert out.train.images.shape == (4, 3, 16, 16) and out.train.images.dtype == torch.uint8


def _variants(image: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """Every translation (reflect-padded crop) of `image`, and of its mirror."""
    out = []
    for source in (image, image.flip(-1)):
        padded = torch.nn.functional.pad(source[None].float(), (pad,) * 4, mode="reflect")[0]
        h, w = image.shape[-2:]
        out += [padded[:, dy : dy + h, dx : dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    return out


def test_fast_and_streaming_augmentations_are_equivalent():
    """Both paths draw from the same set of transformed images: reflect-padded shifts and mirrors."""
    from imgcls.data.transforms import crop_padding, train_augment

    torch.manual_seed(0)
    image = torch.randint(0, 256, (1, 14, 14), dtype=torch.uint8)
    pad = crop_padding(14)
    allowed = _variants(image, pad)
    batch = image.float().div(255).expand(40, 1, 14, 14).contiguous()
    fast = BatchAugment(14, flip=True)(batch, torch.Generator().manual_seed(0)) * 255
    stream = torch.stack([train_augment(14, flip=True)(image).float() for _ in range(40)])
    for outputs in (fast, stream):
        matches = [
            next(i for i, v in enumerate(allowed) if torch.allclose(out, v, atol=1e-3)) for out in outputs
        ]
        assert len(set(matches)) > 5  # random: many different shifts/flips
        assert any(i >= len(allowed) // 2 for i in matches) and any(i < len(allowed) // 2 for i in matches)


def test_builtin_datasets_are_cached_as_safetensors(tmp_path, monkeypatch):
    from imgcls.data import datasets

    monkeypatch.setenv("IMGCLS_DATA", str(tmp_path))
    first = datasets.digits()
    assert (tmp_path / "cache" / "digits.safetensors").is_file()
    monkeypatch.setattr(datasets, "_digits", lambda: (_ for _ in ()).throw(AssertionError("cache not used")))
    second = datasets.digits()
    assert second.classes == first.classes and torch.equal(second.train.images, first.train.images)
    assert torch.equal(second.test.labels, first.test.labels) and second.flip_ok is False
    (tmp_path / "cache" / "digits.safetensors").write_bytes(b"corrupt")
    monkeypatch.setattr(datasets, "_digits", lambda: first)
    assert datasets.digits().classes == first.classes  # a corrupt cache is rebuilt, not fatal


def test_decoded_folders_are_cached_and_invalidated(image_tree: Path, tmp_path, monkeypatch):
    from imgcls.data import memory

    monkeypatch.setenv("IMGCLS_DATA", str(tmp_path / "cache-root"))
    cfg = DataConfig(name=str(image_tree), cache="ram")
    first = prepare(open_dataset(cfg), cfg, 16, 3)
    assert list((tmp_path / "cache-root" / "cache" / "decoded").glob("*.safetensors"))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(memory, "decode_files", no_decoding)
    second = prepare(open_dataset(cfg), cfg, 16, 3)
    assert torch.equal(first.train.images, second.train.images) and first.train.paths == second.train.paths
    (image_tree / "circle" / "circle_0.png").write_bytes(b"now corrupt")  # a changed file: decode afresh
    import pytest

    with pytest.raises(AssertionError, match="decoded again"):
        prepare(open_dataset(cfg), cfg, 16, 3)


def test_the_decode_cache_sees_an_edit_that_keeps_size_and_mtime(tmp_path, monkeypatch):
    import os

    import numpy as np

    from tests.conftest import make_image

    monkeypatch.setenv("IMGCLS_DATA", str(tmp_path / "cache-root"))
    write_class_tree(tmp_path / "tree", per_class=3, ext=".bmp")  # uncompressed: same size for any picture
    cfg = DataConfig(name=str(tmp_path / "tree"), cache="ram", val_split=0, test_split=0)
    first = prepare(open_dataset(cfg), cfg, 16, 3)
    victim = tmp_path / "tree" / "circle" / "circle_0.bmp"
    before = victim.stat()
    make_image(2, np.random.default_rng(99)).save(victim)  # another picture, the same number of bytes
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `cp -p` or `touch -r` leave it
    assert victim.stat().st_size == before.st_size and victim.stat().st_mtime_ns == before.st_mtime_ns
    second = prepare(open_dataset(cfg), cfg, 16, 3)
    index = first.train.paths.index(victim)
    assert not torch.equal(first.train.images[index], second.train.images[index])


def test_cutout_zeroes_a_square_per_image():
    x = torch.ones(16, 1, 12, 12)
    out = BatchAugment(12, flip=False, cutout=4, crop=False)(x, torch.Generator().manual_seed(0))
    zeros = (out == 0).sum((1, 2, 3))
    assert (zeros > 0).all() and (zeros <= 16).all()  # at most 4x4, fewer where it leaves the image


def test_mixup_and_cutmix_give_soft_labels_that_sum_to_one():
    from imgcls.data.memory import BatchMix

    x = torch.rand(8, 1, 10, 10)
    y = torch.arange(8) % 4
    for mix in (BatchMix(4, mixup=0.4), BatchMix(4, cutmix=1.0), BatchMix(4, mixup=0.2, cutmix=1.0)):
        mx, my = mix(x, y, torch.Generator().manual_seed(1))
        assert mx.shape == x.shape and my.shape == (8, 4)
        assert torch.allclose(my.sum(1), torch.ones(8)) and (my >= 0).all()


def test_mixed_training_runs_end_to_end(tmp_path):
    import imgcls

    over = {
        "log.progress": False,
        "train.amp": "off",
        "data.mixup": 0.2,
        "data.cutmix": 1.0,
        "data.cutout": 2,
    }
    result = imgcls.train(
        data="digits",
        model="tutorial-cnn",
        epochs=2,
        out=tmp_path / "r",
        overrides={**over, "optim.lr": 0.05},
    )
    assert (
        result.test["num_samples"] == 359 and result.test["accuracy"] > 0.5
    )  # it still learns (chance: 0.1)


def test_a_mid_epoch_start_gives_the_rest_of_the_same_epoch(image_tree: Path):
    """Resuming at batch k yields exactly batches k.. of the uninterrupted epoch, augmentation included."""
    for cache, workers in (("ram", 0), ("off", 0), ("off", 2)):
        cfg = DataConfig(
            name=str(image_tree),
            batch_size=8,
            val_split=0.0,
            test_split=0.0,
            cache=cache,
            workers=workers,
            augment="crop-flip",
            cutout=6,
            mixup=0.3,
        )
        bundle = prepare(open_dataset(cfg), cfg, 32, 3)
        loader = build_loader(
            bundle.train,
            cfg,
            size=32,
            channels=3,
            device=torch.device("cpu"),
            train=True,
            seed=3,
            num_classes=3,
        )
        loader.set_epoch(2)
        full = list(loader)
        loader.set_epoch(2, start_batch=2)
        rest = list(loader)
        assert len(full) == 4 and len(rest) == 2, cache
        for (xa, ya), (xb, yb) in zip(full[2:], rest):
            assert torch.equal(xa, xb) and torch.equal(ya, yb), (cache, workers)


def test_balanced_sampling_draws_every_class_equally():
    from imgcls.data.loader import balanced_weights, class_weights
    from imgcls.data.memory import epoch_batches

    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    batches = epoch_batches(
        1000, 100, shuffle=True, drop_last=True, seed=0, epoch=0, weights=balanced_weights(labels)
    )
    drawn = torch.bincount(labels[torch.cat(batches)], minlength=3).float() / 1000
    assert torch.allclose(drawn, torch.full((3,), 1 / 3), atol=0.05)
    weights = class_weights(labels, 4)  # class 3 has no images
    assert weights[3] == 0 and weights[2] / weights[0] == pytest.approx(90)
    assert (weights * torch.bincount(labels, minlength=4)).sum() == pytest.approx(1000)  # total weight kept


def test_imbalance_options_train_end_to_end(tmp_path, caplog):
    import imgcls

    root = tmp_path / "imb"
    for name, n in (("many", 30), ("few", 4)):
        write_class_tree(root, per_class=n, classes=(name,), seed=len(name))
    over = {
        "log.progress": False,
        "train.class_weights": "auto",
        "data.sampler": "balanced",
        "data.batch_size": 8,
    }
    with caplog.at_level("INFO", logger="imgcls"):
        result = imgcls.train(
            data=str(root), model="tutorial-cnn", epochs=2, out=tmp_path / "r", overrides=over
        )
    assert set(result.test["per_class"]) == {"few", "many"}
    weights = dict(
        part.split() for part in caplog.text.split("class weights: ")[1].splitlines()[0].split(", ")
    )
    assert float(weights["few"]) > 5 * float(weights["many"])  # the rare class weighs more in the loss


def test_normalization_is_the_same_streamed_or_in_ram(image_tree: Path):
    """The mean/std a model is given come from the same images whether the data is decoded to RAM or streams."""
    import imgcls

    norms = {}
    for cache in ("ram", "off"):
        cfg = imgcls.make_config(
            data=str(image_tree), model="tutorial-cnn", overrides={"data.cache": cache, "data.image_size": 16}
        )
        _, _, bundle, model = imgcls.api.training.model_and_data(cfg)
        assert (bundle.train.images is not None) == (cache == "ram")
        norms[cache] = (model.meta.mean, model.meta.std)
    assert norms["ram"] == norms["off"]
    assert norms["ram"][0] != (0.485, 0.456, 0.406) and len(norms["ram"][1]) == 3  # measured, not ImageNet's
