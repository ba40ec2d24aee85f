"""Datasets by name: built-ins (torchvision, scikit-learn), class folders and CSV manifests.

Every source becomes a `DataBundle` of train/val/test `Split`s sharing one class list. A split holds
either decoded uint8 images (N, C, H, W) or file paths to decode later; labels always index `classes`,
which come from the training split and never shift.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import unicodedata
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from imgcls.config import DataConfig
from imgcls.data.types import DataBundle, DataError, Split
from imgcls.registry import Registry, RegistryError

log = logging.getLogger("imgcls")
DATASETS = Registry("dataset")
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def open_dataset(cfg: DataConfig) -> DataBundle:
    """Resolves `cfg.name` (built-in, folder, CSV, Hugging Face dataset or tar shards) and carves val/test splits as configured.

    Example:
        >>> bundle = open_dataset(DataConfig(name="digits"))
        >>> len(bundle.classes)
        10
    """
    name = cfg.name
    bundle = DATASETS.build(name) if name in DATASETS else _open_source(name, cfg)
    if cfg.task == "multilabel" and not bundle.multilabel:
        raise DataError(
            f"data.task=multilabel needs a CSV manifest whose label cells list each image's labels "
            f"(e.g. dog{cfg.label_sep}cat) or that has one row per (image, label); {name} is not one"
        )
    warn_confusable(bundle.classes)
    return carve_splits(bundle, cfg)


def _open_source(name: str, cfg: DataConfig) -> DataBundle:
    """A Hugging Face dataset, tar shards, a class-folder tree or a CSV manifest, by what `name` is."""
    from imgcls.data import folder, hf, shards

    path = Path(name).expanduser()
    if hf.is_hf(name):
        return hf.from_hf(name, cfg)
    if shards.is_shards(name):
        return shards.from_shards(name, None if cfg.cache == "off" else data_root() / "cache" / "shards")
    if path.is_dir():
        return folder.from_folder(path, cfg)
    if path.is_file() and path.suffix.lower() == ".csv":
        return folder.from_csv(path, cfg)
    if path.exists():
        raise DataError(
            f"{name}: expected a folder of class folders, a .csv manifest, .parquet or .tar shards"
        )
    try:
        DATASETS.get(name)
    except RegistryError as e:
        raise DataError(
            f"data {name!r} is neither an existing folder/CSV/shard set, an hf: dataset nor a built-in: {e}"
        ) from None
    raise AssertionError("unreachable: a registered name is built above")


def confusable_groups(names: list[str]) -> list[list[str]]:
    """Class names a person or a case-insensitive filesystem could take for one another: equal once case,
    surrounding and repeated white space, and Unicode form (NFKC: composed accents, full-width letters)
    are set aside."""
    groups: dict[str, list[str]] = {}
    for name in names:
        key = " ".join(unicodedata.normalize("NFKC", name).casefold().split())
        groups.setdefault(key, []).append(name)
    return [group for group in groups.values() if len(group) > 1]


def warn_confusable(names: list[str]) -> None:
    for group in confusable_groups(names):
        log.warning(
            "classes %s differ only by case, white space or Unicode form: they are kept apart, "
            "but may be meant as one (rename or merge them)",
            " / ".join(map(ascii, group)),
        )


def carve_splits(bundle: DataBundle, cfg: DataConfig) -> DataBundle:
    """Adds a stratified, seeded val split (and test, for single trees) where the source has none.

    For the user's files, identical and near-identical images are carved as one group (they land in the
    same split), so imgcls never makes the train/test leak its own check would then refuse.
    """
    carve_test = bundle.test is None and cfg.test_split > 0 and bundle.single_tree
    carve_val = bundle.val is None and cfg.val_split > 0
    groups = None
    if carve_test or carve_val:
        bundle, groups = _duplicate_groups(bundle)
    val_fraction = cfg.val_split
    if carve_test:
        keep, take = stratified_split(bundle.train.labels, cfg.test_split, seed=1, groups=groups)
        bundle = replace(bundle, train=bundle.train.subset(keep), test=bundle.train.subset(take))
        groups = groups[keep] if groups is not None else None
        val_fraction = cfg.val_split / (1 - cfg.test_split)  # both fractions are of the whole tree
    if carve_val:
        keep, take = stratified_split(bundle.train.labels, val_fraction, seed=0, groups=groups)
        bundle = replace(
            bundle, train=bundle.train.subset(keep), val=bundle.train.subset(take), val_carved=True
        )
    if len(bundle.train) == 0:
        raise DataError(f"dataset {bundle.name!r} has no training images")
    return bundle


def _duplicate_groups(bundle: DataBundle) -> tuple[DataBundle, np.ndarray | None]:
    """Duplicate groups of a file dataset's training images (built-ins are curated: None). Every file
    has been opened for them, so the bundle learns its channels too (1 when every readable image is
    grayscale), which spares training a second pass over the files."""
    if bundle.train.paths is None or bundle.train.images is not None or len(bundle.train) < 2:
        return bundle, None
    from imgcls.data.doctor.checks import duplicate_groups, split_facts

    facts = split_facts(bundle.train)
    groups, shared = duplicate_groups(bundle.train, facts)
    if shared:
        log.info("carving splits: %d group(s) of identical or near-identical images kept together", shared)
    readable = [f for f in facts if f.error is None]
    channels = 1 if readable and all(f.gray for f in readable) else 3
    return replace(bundle, channels=bundle.channels or channels), groups


def stratified_split(
    labels: torch.Tensor, fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Takes `fraction` of each class (rounded, at least 1 where a class has 2+) into the second index.

    With `groups` (an id per image), a group is taken or kept whole; it counts for the class of its
    first image. Without, every image is its own group.
    """
    if labels.ndim == 2:
        return iterative_split(labels.numpy() > 0, fraction, seed, groups)
    rng = np.random.default_rng(seed)
    labels_np = labels.numpy()
    groups = np.arange(len(labels_np)) if groups is None else np.asarray(groups)
    _, first = np.unique(groups, return_index=True)
    first = np.sort(first)  # each group's first image, in index order
    sizes = dict(zip(*np.unique(groups, return_counts=True)))
    taken_groups = []
    for cls in np.unique(labels_np):
        cls_groups = groups[first[labels_np[first] == cls]]
        rng.shuffle(cls_groups)
        total = sum(sizes[g] for g in cls_groups)
        n_take = int(round(total * fraction))
        n_take = min(max(n_take, 1), total - 1) if total >= 2 else 0
        taken = 0
        for g in cls_groups:
            if taken >= n_take:
                break
            taken_groups.append(g)
            taken += sizes[g]
    take = np.isin(groups, np.asarray(taken_groups, dtype=groups.dtype))
    return np.flatnonzero(~take), np.flatnonzero(take)


def iterative_split(
    labels: np.ndarray, fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label stratification: iterative stratification (Sechidis, Tsoumakas and Vlahavas, 2011) of
    (N, C) 0/1 labels into two parts, the second holding `fraction` of the images and of each label.

    The rarest label still to place goes first: each of its images goes to the part that most lacks that
    label (ties: the part that most lacks images, then at random), and that part's needs shrink by all of
    the image's labels. Having no label counts as one more label, so negatives are shared out alike. With
    `groups`, a group moves whole, carrying the union of its images' labels.
    """
    rng = np.random.default_rng(seed)
    labels = np.concatenate([labels, ~labels.any(1, keepdims=True)], 1)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    ids, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    item_counts = np.zeros((len(ids), labels.shape[1]))  # each group's images per label
    np.add.at(item_counts, inverse, labels)
    item_labels = item_counts > 0
    shares = np.array([1 - fraction, fraction])
    need_images = shares * len(labels)
    need_labels = shares[:, None] * labels.sum(0)[None, :].astype(float)
    part = np.full(len(ids), -1)
    left = item_labels.copy()
    while left.any():
        counts = left.sum(0)
        rarest = np.flatnonzero(counts == counts[counts > 0].min())
        label = rng.choice(rarest)
        for item in rng.permutation(np.flatnonzero(left[:, label])):
            order = np.lexsort((rng.random(2), -need_images, -need_labels[:, label]))
            chosen = order[0]
            part[item] = chosen
            need_labels[chosen] -= item_counts[item]
            need_images[chosen] -= sizes[item]
            left[item] = False
    take = part[inverse] == 1
    if take.all() or not take.any():  # a tiny set: one image (group) each way where there are two
        take[:] = False
        if len(ids) >= 2 and fraction > 0:
            take[inverse == inverse[rng.integers(len(labels))]] = True
    return np.flatnonzero(~take), np.flatnonzero(take)


def data_root() -> Path:
    """Where built-in datasets are cached: $IMGCLS_DATA, else ~/.cache/imgcls."""
    return Path(os.environ.get("IMGCLS_DATA") or Path.home() / ".cache" / "imgcls").expanduser()


def cached(load: Callable[[], DataBundle], name: str) -> DataBundle:
    """A built-in dataset from its tensor cache ($IMGCLS_DATA/cache/NAME.safetensors), made on first use.

    Reading the cache takes a fraction of a second and needs neither torchvision nor scikit-learn,
    whose imports alone cost seconds of a short run.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import save_file

    from imgcls.utils.io import atomic_write

    path = data_root() / "cache" / f"{name}.safetensors"
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            return DataBundle(
                name,
                json.loads(meta["classes"]),
                Split(tensors["train_labels"], tensors["train_images"]),
                test=Split(tensors["test_labels"], tensors["test_images"]),
                channels=int(meta["channels"]),
                image_size=int(meta["image_size"]),
                flip_ok=meta["flip_ok"] == "true",
            )
        except (SafetensorError, OSError, KeyError, ValueError) as e:
            log.warning("ignoring unreadable dataset cache %s (%s); rebuilding it", path, e)
    bundle = load()
    tensors = {"train_images": bundle.train.images, "train_labels": bundle.train.labels}
    tensors |= {"test_images": bundle.test.images, "test_labels": bundle.test.labels}
    meta = {
        "classes": json.dumps(bundle.classes),
        "channels": str(bundle.channels),
        "image_size": str(bundle.image_size),
    }
    meta["flip_ok"] = "true" if bundle.flip_ok else "false"
    try:
        atomic_write(
            path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=meta)
        )
    except OSError as e:
        log.warning("could not write the dataset cache %s: %s", path, e)
    return bundle


def _torchvision_bundle(name: str, cls_name: str, flip_ok: bool = True) -> DataBundle:
    import torchvision

    dataset_cls = getattr(torchvision.datasets, cls_name)
    root = data_root()
    try:
        train, test = (dataset_cls(str(root), train=t, download=True) for t in (True, False))
    except (OSError, RuntimeError) as e:
        raise DataError(
            f"could not load {name}: {e.__class__.__name__}: {str(e).splitlines()[0]}. "
            f"It downloads into {root} (set $IMGCLS_DATA to change); connect to the internet once, "
            f"or copy the files of torchvision.datasets.{cls_name} there."
        ) from None

    def to_split(ds) -> Split:
        images = torch.as_tensor(np.asarray(ds.data))
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
        return Split(torch.as_tensor(np.asarray(ds.targets), dtype=torch.long), images.contiguous())

    tr = to_split(train)
    return DataBundle(
        name,
        list(train.classes),
        tr,
        test=to_split(test),
        channels=tr.images.shape[1],
        image_size=tr.images.shape[-1],
        flip_ok=flip_ok,
    )


@DATASETS.register("fashion-mnist")
def fashion_mnist() -> DataBundle:
    def load() -> DataBundle:
        _stage_system_fashion_mnist()
        return _torchvision_bundle("fashion-mnist", "FashionMNIST")

    return cached(load, "fashion-mnist")


@DATASETS.register("mnist")
def mnist() -> DataBundle:
    return cached(lambda: _torchvision_bundle("mnist", "MNIST", flip_ok=False), "mnist")


@DATASETS.register("cifar10")
def cifar10() -> DataBundle:
    return cached(lambda: _torchvision_bundle("cifar10", "CIFAR10"), "cifar10")


@DATASETS.register("cifar100")
def cifar100() -> DataBundle:
    return cached(lambda: _torchvision_bundle("cifar100", "CIFAR100"), "cifar100")


@DATASETS.register("digits")
def digits() -> DataBundle:
    """scikit-learn's 8x8 digits (1,797 images, shipped with the package): a stratified 80/20 test split."""
    return cached(_digits, "digits")


def _digits() -> DataBundle:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.as_tensor(np.round(d.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    labels = torch.as_tensor(d.target, dtype=torch.long)
    full = Split(labels, images)
    keep, take = stratified_split(labels, 0.2, seed=2)
    classes = [str(c) for c in d.target_names]
    return DataBundle(
        "digits", classes, full.subset(keep), test=full.subset(take), channels=1, image_size=8, flip_ok=False
    )


def _stage_system_fashion_mnist() -> None:
    """Unpacks the Debian package's IDX files into the cache where torchvision looks for them."""
    raw = data_root() / "FashionMNIST" / "raw"
    names = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]
    if all((raw / n).exists() for n in names) or not all(
        (SYSTEM_FASHION_MNIST / f"{n}.gz").exists() for n in names
    ):
        return
    raw.mkdir(parents=True, exist_ok=True)
    for n in names:
        tmp = raw / f".{n}.tmp"
        with gzip.open(SYSTEM_FASHION_MNIST / f"{n}.gz", "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, raw / n)
