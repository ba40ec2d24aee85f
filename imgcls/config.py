"""One typed, frozen configuration: dataclass defaults, then a YAML file, then dotted overrides.

Unknown keys fail with suggestions and values are checked against the field types, so a typo never
silently trains the wrong thing. No torch import here: the CLI can validate a config instantly.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from imgcls.errors import ImgclsError

LAUNCH_KEY = "launch"


TTA_MODES = ("off", "flip", "shift", "flip-shift")  # train.tta's values besides auto (see Classifier._views)


class ConfigError(ImgclsError, ValueError):
    """A bad config key or value; the message names the key and what is allowed."""


@dataclass(frozen=True)
class DataConfig:
    name: str = "fashion-mnist"  # built-in name, folder, CSV manifest, hf:DATASET, Parquet, or .tar shards
    val_split: float = 0.1  # carved (stratified, seeded) from train when the data has no val split
    # carved validation images a run would not use (a time budget with a test split): train on them, or keep
    unused_val: Literal["train", "keep"] = "train"
    test_split: float = 0.1  # carved from a single class-folder tree that has no test split
    image_size: int | None = None  # None: the dataset's native size, else the model's default
    channels: int | None = None  # None: 1 for all-grayscale data, else 3
    batch_size: int = 128
    eval_batch_size: int = 1024
    # auto: by run length (none, flip, crop-flip; see planning.AUGMENT); no flips for digits
    augment: Literal["auto", "none", "flip", "crop", "crop-flip"] = "auto"
    cutout: int = 0  # side (px) of a square zeroed at a random place in each training image; 0: off
    mixup: float = 0.0  # Beta(alpha, alpha) mixing of image pairs and their labels; 0: off
    cutmix: float = 0.0  # like mixup, pasting a box of one image into another; with mixup: either, 50/50
    cache: Literal["auto", "ram", "off"] = "auto"  # ram: decoded uint8 tensor; off: stream from disk
    workers: int | None = None  # DataLoader workers for the streaming path; None: auto
    strict: bool = False  # unreadable images are an error instead of a counted skip
    sampler: Literal["shuffle", "balanced"] = "shuffle"  # balanced: every class drawn equally often
    check: bool = True  # before training on files: stop when identical images sit in two splits (leakage)
    image_column: str | None = None  # Hugging Face datasets: the image column; None: the first Image feature
    label_column: str | None = None  # ... the label column; None: the first ClassLabel, else label/class/...
    # multilabel: each image has a set of labels (a CSV manifest); auto: multilabel when a manifest's label
    # cell holds label_sep or an image has rows with different labels (said in the log)
    task: Literal["auto", "multiclass", "multilabel"] = "auto"
    label_sep: str = ";"  # separates the labels of one image in a manifest's label cell

    def validate(self) -> None:
        _check(0 <= self.val_split < 1, "data.val_split", "must be in [0, 1)")
        _check(0 <= self.test_split < 1, "data.test_split", "must be in [0, 1)")
        _check(self.val_split + self.test_split < 1, "data.val_split", "plus data.test_split must be < 1")
        _check(self.image_size is None or self.image_size >= 4, "data.image_size", "must be >= 4")
        _check(self.channels in (None, 1, 3), "data.channels", "must be 1 or 3")
        _check(self.batch_size >= 1 and self.eval_batch_size >= 1, "data.batch_size", "must be >= 1")
        _check(self.workers is None or self.workers >= 0, "data.workers", "must be >= 0")
        _check(bool(self.label_sep.strip()), "data.label_sep", "must be a character such as ; or |")
        _check(
            self.cutout >= 0 and self.mixup >= 0 and self.cutmix >= 0,
            "data.cutout/mixup/cutmix",
            "must be >= 0",
        )


@dataclass(frozen=True)
class ModelConfig:
    name: str = "smallnet"
    pretrained: bool = False  # the architecture's published ImageNet weights (torchvision / timm)
    weights: str | None = (
        None  # a local .pth/.safetensors (torchvision or timm state dict) or an imgcls run folder
    )
    freeze: str = (
        "auto"  # after the head-only phase: auto/none (train all), N (first N of 4 groups stay), backbone
    )
    drop_rate: float = 0.0
    width: int | None = None  # smallnet's base width; None: sized to the run's length (see README)
    small_stem: bool = False  # ResNets: 3x3 stride-1 stem without max-pool, for 28-64 px images
    dirac_init: bool = False  # from scratch: each conv's first filters start as the identity (airbench)

    def validate(self) -> None:
        _check(0 <= self.drop_rate < 1, "model.drop_rate", "must be in [0, 1)")
        _check(self.width is None or self.width >= 1, "model.width", "must be >= 1")
        _check(
            self.freeze in ("auto", "none", "backbone") or (self.freeze.isdigit() and int(self.freeze) <= 4),
            "model.freeze",
            "must be auto, none, backbone or a number of layer groups 0-4",
        )


@dataclass(frozen=True)
class OptimConfig:
    # auto: sgd from scratch, adamw when fine-tuning; muon: Muon for the conv filters, sgd for the rest
    name: Literal["auto", "sgd", "adamw", "muon"] = "auto"
    # None: the recipe's (sgd from scratch 0.1, or the model's own, e.g. tutorial-cnn 0.05; sgd fine-tuning
    # 0.01; adamw 3e-3); auto: an LR range test picks it
    lr: float | Literal["auto"] | None = None
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float | None = None  # None: 5e-4 (sgd), 0.01 (adamw)
    backbone_lr_ratio: float = 0.1  # fine-tuning: the first layer group's lr relative to the head's
    schedule: Literal["cosine", "onecycle", "step", "constant"] = "onecycle"
    warmup_epochs: float = 1.0  # linear warm-up (cosine/step/constant); onecycle sets its own
    step_epochs: int = 30  # step schedule: multiply the lr by step_gamma every step_epochs
    step_gamma: float = 0.1
    muon_lr: float = 0.06  # optim.name=muon: the conv filters' lr (each bank's norm is held at sqrt(out))
    muon_momentum: float = 0.6  # airbench's; 0.9 lost 0.35 points
    bias_lr_scale: float = 1.0  # from scratch: biases and normalization parameters train at this x lr

    def validate(self) -> None:
        _check(self.bias_lr_scale > 0, "optim.bias_lr_scale", "must be > 0")
        _check(self.lr in (None, "auto") or self.lr > 0, "optim.lr", "must be > 0 or auto")
        _check(self.weight_decay is None or self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        _check(0 < self.backbone_lr_ratio <= 1, "optim.backbone_lr_ratio", "must be in (0, 1]")
        _check(0 <= self.momentum < 1, "optim.momentum", "must be in [0, 1)")
        _check(self.muon_lr > 0, "optim.muon_lr", "must be > 0")
        _check(0 <= self.muon_momentum < 1, "optim.muon_momentum", "must be in [0, 1)")
        _check(self.warmup_epochs >= 0, "optim.warmup_epochs", "must be >= 0")
        _check(self.step_epochs >= 1, "optim.step_epochs", "must be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    # None: DEFAULT_EPOCHS, or more where a small dataset gives fewer than MIN_STEPS optimizer steps in them
    epochs: int | None = None
    recipe: Literal["auto", "scratch", "finetune"] = (
        "auto"  # auto: finetune with pretrained weights/--weights
    )
    freeze_epochs: float = 1.0  # fine-tuning: epochs of head-only training before the backbone unfreezes
    patience: int = 0  # stop when validation accuracy has not improved for N epochs; 0: off
    time: str | None = None  # a time budget for the whole run ("90s", "5m", "1h"); replaces epochs
    label_smoothing: float = 0.1
    class_weights: Literal["none", "auto"] = "none"  # auto: inverse-frequency loss weights (imbalanced data)
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # auto: bf16 where the device supports it
    channels_last: bool = True
    compile: bool = False  # torch.compile the training forward (pays off on GPUs; slower on small CPU nets)
    grad_clip: float = 0.0  # max gradient norm; 0 disables clipping
    ema_decay: float = 0.0  # per-step decay of an exponential moving average of the weights; 0: off
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:1, mps
    threads: int | None = (
        None  # CPU threads; None: $OMP_NUM_THREADS, else the fastest count timed at the start
    )
    # test-time views: the mirror (flip), 1 px moves (shift) or both; auto: the moves training saw
    tta: Literal["auto", "off", "flip", "shift", "flip-shift"] = "auto"
    checkpoint_every: int = (
        0  # also save the training state every N optimizer steps (mid-epoch); 0: epochs only
    )
    deterministic: bool = (
        False  # deterministic kernels only (torch.use_deterministic_algorithms); slower on GPU
    )
    skip_nonfinite: bool = (
        False  # skip a step whose loss is NaN/inf (and count it) instead of stopping the run
    )
    sync_bn: bool = (
        False  # distributed runs: BatchNorm statistics over the global batch (SyncBatchNorm, GPUs)
    )
    # multi-label: each label's threshold reaches this precision on the validation split; None: best F1
    threshold_precision: float | None = None
    # answer "I don't know" below a calibrated confidence chosen on the validation split: "0.99" (or
    # "precision=0.99": that accuracy on the answered images) or "coverage=0.9" (answer 90% of images)
    abstain: str | None = None

    def validate(self) -> None:
        _check(self.epochs is None or self.epochs >= 1, "train.epochs", "must be >= 1")
        _check(self.freeze_epochs >= 0, "train.freeze_epochs", "must be >= 0")
        _check(self.patience >= 0, "train.patience", "must be >= 0")
        if self.time is not None:
            parse_duration(self.time)
        _check(0 <= self.label_smoothing < 1, "train.label_smoothing", "must be in [0, 1)")
        _check(self.grad_clip >= 0, "train.grad_clip", "must be >= 0")
        _check(0 <= self.ema_decay < 1, "train.ema_decay", "must be in [0, 1)")
        _check(self.threads is None or self.threads >= 1, "train.threads", "must be >= 1")
        _check(self.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0")
        if self.abstain is not None:
            parse_abstain(self.abstain)
        _check(
            self.threshold_precision is None or 0 < self.threshold_precision <= 1,
            "train.threshold_precision",
            "must be in (0, 1]",
        )
        dev = self.device.split(":")[0]
        _check(dev in ("auto", "cpu", "cuda", "mps"), "train.device", "must be auto, cpu, cuda[:N] or mps")


@dataclass(frozen=True)
class LogConfig:
    tensorboard: bool = False
    mlflow: bool = (
        False  # params, metrics and artifacts to MLflow (imgcls[mlflow]); store: $MLFLOW_TRACKING_URI
    )
    progress: bool = True


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    out: str | None = None  # run folder; None: runs/<dataset>-<model>-<time>

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Builds a validated Config from a (possibly partial) nested dict."""
        return _build(cls, values, prefix="")

    def replace(self, overrides: dict[str, Any]) -> Config:
        """Returns a copy with dotted overrides applied, e.g. {"optim.lr": 0.1}."""
        merged = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(merged, key, value)
        return Config.from_dict(merged)


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file at `path`, then dotted `overrides`.

    Example:
        >>> load(None, {"optim.lr": 0.05}).optim.lr
        0.05
    """
    values: dict[str, Any] = {}
    if path is not None:
        values = read_yaml(path)
        values.pop(LAUNCH_KEY, None)  # a run folder's record of how it was launched: informative only
    cfg = Config.from_dict(values)
    return cfg.replace(overrides or {})


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(values).__name__}")
    return values


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parses `key=value` strings; values are read as YAML scalars (0.1, true, null, text)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like section.key=value")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def save(cfg: Config, path: str | Path, launch: dict[str, Any] | None = None) -> None:
    """Writes the config as YAML; `launch` (world size, batch per rank...) is recorded under `launch:`."""
    values = cfg.to_dict() | ({LAUNCH_KEY: launch} if launch else {})
    Path(path).write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")


def parse_duration(text: str) -> float:
    """Seconds in "90", "90s", "5m", "1.5h".

    Example:
        >>> parse_duration("5m")
        300.0
    """
    raw = str(text).strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(raw[-1:])
    number = raw[:-1] if scale else raw
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        raise ConfigError(f"train.time must look like 90s, 5m or 1h, not {text!r}") from None
    if not seconds > 0:
        raise ConfigError(f"train.time must be positive, not {text!r}")
    return seconds


def parse_abstain(text: str, name: str = "train.abstain") -> tuple[str, float]:
    """("precision" | "coverage", target) from "0.99", "precision=0.99" or "coverage=0.9".

    Example:
        >>> parse_abstain("coverage=0.9")
        ('coverage', 0.9)
    """
    kind, _, value = str(text).strip().rpartition("=")
    kind = kind.strip().lower() or "precision"
    try:
        target = float(value)
    except ValueError:
        target = -1.0
    if kind not in ("precision", "coverage") or not 0 < target < 1:
        raise ConfigError(
            f"{name} must look like 0.99 (a precision), precision=0.99 or coverage=0.9, not {text!r}"
        )
    return kind, target


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {msg}")


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if not isinstance(child, dict):
            known = [k for k, v in node.items() if isinstance(v, dict)]
            raise ConfigError(_unknown(".".join(parts[: i + 1]), part, known))
        node = child
    node[parts[-1]] = value


def _unknown(key: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    return f"unknown config key {key!r}.{hint} Known here: {', '.join(sorted(known))}"


def _build(cls: type, values: Any, prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or 'root'} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(_unknown(prefix + str(key), str(key), names))
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, prefix + key + ".")
        else:
            kwargs[key] = _coerce(value, hint, prefix + key)
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        wanted = [
            f"one of {', '.join(map(str, get_args(o)))}"
            if get_origin(o) is Literal
            else getattr(o, "__name__", str(o))
            for o in options
            if o is not type(None)
        ]
        raise ConfigError(f"{key} must be {' or '.join(wanted)}, not {value!r}")
    if origin is Literal:
        choices = get_args(hint)
        if isinstance(value, bool):  # YAML 1.1 reads off/on/no/yes as booleans
            value = {False: "off", True: "on"}[value] if ("off" if not value else "on") in choices else value
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint_txt = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{key} must be one of {', '.join(map(str, choices))}, not {value!r}.{hint_txt}"
            )
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as text
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, (str, int, float, os.PathLike)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key} must be {getattr(hint, '__name__', hint)}, not {value!r}")
