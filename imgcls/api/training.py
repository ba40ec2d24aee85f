"""`imgcls.train` and `imgcls.lr_find`: data and model set up from a planned config, then the loop."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from imgcls import config as config_lib
from imgcls.api import decisions
from imgcls.api.evaluation import evaluate_and_write
from imgcls.api.planning import make_config, plan_run, time_plan
from imgcls.api.runs import resolve_config, shared_run_dir, stem
from imgcls.config import Config
from imgcls.data.datasets import open_dataset
from imgcls.data.doctor import leakage
from imgcls.data.loader import build_loader, channel_stats, class_weights, prepare
from imgcls.data.types import DataBundle, DataError, Split
from imgcls.engine import tracking
from imgcls.engine.callbacks import CSVLogger, EarlyStopping, ProgressLogger, TensorBoardLogger, Unfreeze
from imgcls.engine.lr_find import lr_range_test
from imgcls.engine.state import TrainState
from imgcls.engine.threads import choose_threads
from imgcls.engine.train import Plan, fit, head_phase, new_state
from imgcls.models import Classifier, build_model
from imgcls.models.base import dirac_init
from imgcls.models.checkpoint import load_weights
from imgcls.models.transfer import NUM_GROUPS
from imgcls.reporting import data_report_text, plot_curves, plot_lr_find
from imgcls.utils import dist, run_files
from imgcls.utils.env import (
    autocast_dtype,
    available_cores,
    process_age,
    seed_everything,
    select_device,
    set_deterministic,
    set_threads,
    threads_given,
)
from imgcls.utils.io import new_run_dir, write_json

log = logging.getLogger("imgcls")


@dataclass
class TrainResult:
    run_dir: Path
    test: dict[str, Any] | None  # the test-split evaluation, where the data has a test split
    history: list[dict[str, float]]
    elapsed_s: float


def train(
    cfg: Config | None = None,
    *,
    config: str | Path | None = None,
    resume: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    callbacks: Sequence[Any] = (),
    count_startup: bool = False,
    overwrite: bool = False,
    **shorthands: Any,
) -> TrainResult:
    """Trains a model, saves the run folder and evaluates it on the test split.

    Args:
        cfg: a full Config; or build one from `config` (YAML), `overrides` and shorthands.
        resume: a run folder to continue from its last checkpoint (its config.yaml is the base).
        callbacks: extra callbacks (see imgcls.engine.callbacks) besides the progress and CSV loggers.
        count_startup: a time budget also covers the process's start-up (the CLI sets this).
        overwrite: an existing run folder at `out` is emptied first (else a non-empty `out` is refused).

    Example:
        >>> result = imgcls.train(data="digits", model="tutorial-cnn", epochs=3)     # doctest: +SKIP
        >>> result.test["accuracy"]                                                  # doctest: +SKIP
    """
    start = time.perf_counter() - (process_age() if count_startup else 0.0)
    cfg = resolve_config(cfg, config, resume, overrides, shorthands)
    cfg, device, bundle, model = model_and_data(cfg)
    decisions.check(cfg, bundle)
    launch = launch_record(cfg)
    store = tracking.open_store(Path(cfg.out) if resume else None) if _tracks(cfg) else None
    # The folder is made once the data and model are known good: a failed start leaves none behind.
    run_dir = shared_run_dir(cfg, resume is not None, overwrite)
    cfg = cfg.replace({"out": str(run_dir)})
    _save_config(cfg, launch)
    _log_start(cfg, bundle, model, device, launch)

    loader_args = loader_settings(cfg, bundle, device)
    train_loader = build_loader(
        bundle.train, cfg.data, train=True, num_classes=len(bundle.classes), **loader_args
    )
    # A time-budgeted run validates once at its end; with a test split that pass selects nothing: skip it
    # (multi-label runs keep it: it tunes the thresholds).
    tunes = bundle.multilabel or cfg.train.abstain is not None  # a pass over val after training chooses
    validate = bundle.val is not None and (tunes or not (cfg.train.time and bundle.test is not None))
    val_loader = build_loader(bundle.val, cfg.data, train=False, **loader_args) if validate else None
    if cfg.optim.lr == "auto":  # the one setting decided by training itself: saved again once known
        cfg = cfg.replace({"optim.lr": _find_lr(cfg, model, train_loader, run_dir)})
        _save_config(cfg, launch)
    state = new_state(model, cfg, timed=cfg.train.time is not None)
    eval_splits = [s for s in (bundle.val if validate else None, bundle.test) if s is not None]
    if tunes and validate:
        eval_splits.append(bundle.val)  # once more after training: the pass that tunes thresholds
    plan = time_plan(cfg, start, model, len(train_loader), eval_splits)
    if resume is not None:
        state.load(run_dir / run_files.STATE)
        log.info("resumed %s after epoch %d", run_dir, state.epoch)
    weights = _class_weights(cfg, bundle, device)
    tracker = tracking.MLflowLogger(cfg, run_dir, store) if store else None
    callbacks = [*recipe_callbacks(cfg), *([tracker] if tracker else []), *callbacks]
    try:
        state = _fit_logged(cfg, state, plan, train_loader, val_loader, callbacks, weights)
        if bundle.multilabel or cfg.train.abstain is not None:
            _load_best(model, Path(cfg.out))
            decisions.tune(cfg, model, val_loader)
        test = _test(cfg, model, bundle, loader_args) if bundle.test is not None else None
    except BaseException as e:
        if tracker:
            tracker.abort(interrupted=isinstance(e, KeyboardInterrupt))
        raise
    if tracker:
        tracker.finish(test)
    elapsed = time.perf_counter() - start
    log.info("done in %.1fs: %s", elapsed, run_dir)
    return TrainResult(run_dir, test, state.history, elapsed)


def _tracks(cfg: Config) -> bool:
    """log.mlflow, on the process that logs (rank 0); its store is checked before a run folder is made."""
    return cfg.log.mlflow and dist.is_main()


def _load_best(model: Classifier, run_dir: Path) -> None:
    if dist.is_main():
        load_weights(model, run_dir / run_files.WEIGHTS)
    dist.broadcast_module(model)  # other ranks (maybe on other machines) get rank 0's weights


def _test(cfg: Config, model: Classifier, bundle: DataBundle, loader_args: dict[str, Any]) -> dict[str, Any]:
    """The best checkpoint on the test split, as `imgcls eval` would evaluate it; writes eval.json and report."""
    run_dir = Path(cfg.out)
    _load_best(model, run_dir)
    test_loader = build_loader(bundle.test, cfg.data, train=False, **loader_args)
    return evaluate_and_write(model, test_loader, bundle.classes, run_dir, "test", cfg, data=bundle.test)


def lr_find(
    *,
    config: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    out: str | Path | None = None,
    **shorthands: Any,
) -> dict[str, Any]:
    """The LR range test for a data/model/recipe; saves lr_find.png + lr_find.json and returns the result.

    Example:
        >>> imgcls.lr_find(data="digits", model="smallnet")["suggestion"]            # doctest: +SKIP
    """
    cfg = make_config(config, {**(overrides or {}), "optim.lr": 1.0}, **shorthands)
    cfg, device, bundle, model = model_and_data(cfg)
    settings = loader_settings(cfg, bundle, device)
    loader = build_loader(bundle.train, cfg.data, train=True, num_classes=len(bundle.classes), **settings)
    result = dist.broadcast_object(lr_range_test(model, loader, cfg))
    out_dir = (
        Path(out) if out else new_run_dir("runs", f"lr-find-{stem(cfg.data.name)}-{stem(cfg.model.name)}")
    )
    result |= {"recipe": cfg.train.recipe, "optimizer": cfg.optim.name}
    if dist.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_lr_find(result, out_dir / run_files.LR_FIND_PLOT)
        write_json(out_dir / run_files.LR_FIND_JSON, result)
    return {**result, "out": str(out_dir)}


def model_and_data(cfg: Config) -> tuple[Config, torch.device, DataBundle, Classifier]:
    """Device, the data opened and checked, the planned config, the data prepared, and a new model."""
    device = setup(cfg)
    with dist.main_first():  # rank 0 fills the dataset caches; the others then read them
        bundle = open_checked(cfg)
        cfg, bundle = train_on_unused_val(cfg, bundle)
        cfg = plan_run(cfg, bundle)
        size, channels = cfg.data.image_size, cfg.data.channels
        prepared = prepare(bundle, cfg.data, size, channels)
        stats = channel_stats(bundle.train, prepared.train, size, channels)
    model = new_model(cfg, prepared.classes, stats, prepared.task).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    torch.manual_seed(cfg.train.seed + dist.rank())  # same initial weights everywhere; own dropout per rank
    fastest_threads_for(cfg, device, model)
    return cfg, device, prepared, model


def fastest_threads_for(cfg: Config, device: torch.device, model: Classifier) -> None:
    """On a CPU, unless a thread count was given: the count that trains fastest now (fewer than all cores
    when other processes keep some busy)."""
    cores = available_cores()
    if device.type == "cpu" and cores > 1 and dist.world_size() == 1 and not threads_given(cfg.train.threads):
        choose_threads(model, cfg, cfg.data.batch_size, cores)


def train_on_unused_val(cfg: Config, bundle: DataBundle) -> tuple[Config, DataBundle]:
    """A time-budgeted run with a test split validates nothing (see `train`): the validation images
    carved for it train too, and config.yaml says so (data.val_split: 0). Multi-label and abstaining
    runs keep theirs (they choose thresholds on it); a source's own val split is never merged; nor are they
    with data.unused_val=keep."""
    if not (
        cfg.train.time and bundle.val_carved and bundle.test is not None and cfg.data.unused_val == "train"
    ):
        return cfg, bundle
    if bundle.multilabel or cfg.train.abstain is not None:
        return cfg, bundle
    log.info("time budget with a test split: the %d carved validation images train too", len(bundle.val))
    merged = replace(bundle, train=Split.join([bundle.train, bundle.val]), val=None, val_carved=False)
    return cfg.replace({"data.val_split": 0.0}), merged


def open_checked(cfg: Config) -> DataBundle:
    """The dataset opened (nothing decoded yet); on user files, leakage between splits stops the run."""
    bundle = open_dataset(cfg.data)
    if cfg.data.check and bundle.train.images is None:  # built-ins are curated
        problems = leakage(bundle)
        if problems:
            report = {
                "dataset": bundle.name,
                "num_images": 0,
                "seconds": 0,
                "class_counts": {},
                "stats": {},
                "findings": [asdict(f) for f in problems],
            }
            raise DataError(
                f"the data check found problems that would spoil this run:\n{data_report_text(report)}\n"
                f"full report: imgcls data check {cfg.data.name}; train anyway: --set data.check=off"
            )
    return bundle


def new_model(cfg: Config, classes: list[str], stats: tuple, task: str = "multiclass") -> Classifier:
    """The planned architecture for these classes, with the run's TTA and normalization in its meta."""
    arch: dict[str, Any] = {"width": cfg.model.width} if cfg.model.width is not None else {}
    if cfg.model.small_stem:
        arch["small_stem"] = True
    model = build_model(
        cfg.model.name,
        num_classes=len(classes),
        in_chans=cfg.data.channels,
        input_size=cfg.data.image_size,
        pretrained=cfg.model.pretrained,
        weights=cfg.model.weights,
        drop_rate=cfg.model.drop_rate,
        **arch,
    )
    model.meta.classes = list(classes)
    model.meta.tta = cfg.train.tta
    model.meta.task, model.meta.label_sep = task, cfg.data.label_sep
    # Pretrained features expect the normalization they were learnt with; from scratch, the data's own.
    if not (cfg.model.pretrained or cfg.model.weights):
        model.set_normalization(*stats)
        if cfg.model.dirac_init:
            dirac_init(model.backbone)
    return model


def loader_settings(cfg: Config, bundle: DataBundle, device: torch.device) -> dict[str, Any]:
    return {
        "size": cfg.data.image_size,
        "channels": cfg.data.channels,
        "device": device,
        "flip": bundle.flip_ok,
        "seed": cfg.train.seed,
        "rank": dist.rank(),
        "world": dist.world_size(),
    }


def setup(cfg: Config) -> torch.device:
    """Threads, determinism, seeds, the device and, under torchrun, the process group."""
    set_threads(cfg.train.threads)
    set_deterministic(cfg.train.deterministic)
    seed_everything(cfg.train.seed)
    device = select_device(cfg.train.device, local_rank=dist.local_rank())
    autocast_dtype(device, cfg.train.amp)  # fail now, not after loading data, on an impossible amp setting
    dist.init(device)
    return device


def launch_record(cfg: Config) -> dict[str, Any] | None:
    """World size and batch sizes of a distributed run, checked, for the log and config.yaml."""
    world = dist.world_size()
    if world == 1:
        return None
    if cfg.data.batch_size % world:
        raise config_lib.ConfigError(
            f"data.batch_size={cfg.data.batch_size} is the global batch and must divide among {world} processes"
        )
    return {
        "world_size": world,
        "backend": dist.backend(),
        "global_batch_size": cfg.data.batch_size,
        "batch_size_per_rank": cfg.data.batch_size // world,
        # The batch (and so the lr) is defined globally: the same config trains the same way on any world size.
        "lr_scaling": "none (data.batch_size and optim.lr are global)",
        "lr": cfg.optim.lr,
    }


def recipe_callbacks(cfg: Config) -> list[Any]:
    """Fine-tuning's unfreezing and early stopping, as the config asks."""
    callbacks: list[Any] = []
    if cfg.train.recipe == "finetune":
        freeze = cfg.model.freeze
        keep = NUM_GROUPS if freeze == "backbone" else int(freeze) if freeze.isdigit() else 0
        callbacks.append(Unfreeze(head_phase(cfg, cfg.train.time is not None), keep))
    if cfg.train.patience:
        callbacks.append(EarlyStopping(cfg.train.patience))
    return callbacks


def _save_config(cfg: Config, launch: dict[str, Any] | None) -> None:
    if dist.is_main():
        config_lib.save(cfg, Path(cfg.out) / run_files.CONFIG, launch)


def _log_start(cfg: Config, bundle: DataBundle, model: Classifier, device: torch.device, launch) -> None:
    size, channels = cfg.data.image_size, cfg.data.channels
    log.info(
        "run folder %s: %s on %s (%d classes, %dx%dx%d, %d train / %s val images) on %s",
        cfg.out,
        cfg.model.name,
        cfg.data.name,
        len(bundle.classes),
        channels,
        size,
        size,
        len(bundle.train),
        len(bundle.val) if bundle.val else 0,
        device,
    )
    if launch:
        log.info("distributed: %s", ", ".join(f"{k}={v}" for k, v in launch.items()))


def _class_weights(cfg: Config, bundle: DataBundle, device: torch.device) -> torch.Tensor | None:
    if cfg.train.class_weights != "auto":
        return None
    weights = class_weights(bundle.train.labels, len(bundle.classes)).to(device)
    kind = "positive weights" if bundle.multilabel else "class weights"
    log.info("%s: %s", kind, ", ".join(f"{c} {w:.2f}" for c, w in zip(bundle.classes, weights.tolist())))
    return weights


def _fit_logged(
    cfg: Config,
    state: TrainState,
    plan: Plan,
    train_loader,
    val_loader,
    callbacks: Sequence[Any],
    class_weights: torch.Tensor | None = None,
) -> TrainState:
    """`fit` with the standard loggers, a resume hint on Ctrl-C, and the curves plot at the end."""
    run_dir = Path(cfg.out)
    progress = ProgressLogger(cfg.log.progress)
    loggers: list[Any] = []
    if dist.is_main():  # the other ranks see the same (reduced) metrics: one writer is enough
        loggers += [progress, CSVLogger(run_dir / run_files.METRICS)]
        if cfg.log.tensorboard:
            loggers.append(TensorBoardLogger(run_dir / run_files.TENSORBOARD))
    try:
        state = fit(
            cfg, state, plan, train_loader, val_loader, run_dir, [*loggers, *callbacks], class_weights
        )
    except KeyboardInterrupt:
        progress.close()  # the live bar holds back what is logged while it runs: end it first
        if (run_dir / run_files.STATE).is_file():
            log.warning(
                "interrupted in epoch %d; continue with: imgcls train --resume %s", state.epoch + 1, run_dir
            )
        else:
            log.warning("interrupted before the first checkpoint; nothing to resume in %s", run_dir)
        raise
    finally:
        progress.close()
    if state.history and dist.is_main():
        plot_curves(state.history, run_dir / run_files.CURVES)
    return state


def _find_lr(cfg: Config, model: Classifier, train_loader, run_dir: Path) -> float:
    """`optim.lr=auto`: the LR range test's suggestion, with its plot saved in the run folder."""
    result = dist.broadcast_object(lr_range_test(model, train_loader, cfg))  # every rank uses rank 0's
    if dist.is_main():
        plot_lr_find(result, run_dir / run_files.LR_FIND_PLOT)
        write_json(run_dir / run_files.LR_FIND_JSON, result)
    log.info(
        "optim.lr=auto: the LR range test suggests %.3g (plot: %s)",
        result["suggestion"],
        run_dir / run_files.LR_FIND_PLOT,
    )
    return float(result["suggestion"])
