"""The public surface: train, evaluate, load. The CLI is a thin layer over these."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgcls import config as config_lib
from imgcls.config import Config, DataConfig
from imgcls.data.datasets import DataBundle, DataError, Split, open_dataset
from imgcls.data.decode import ImageDecodeError, open_image
from imgcls.data.doctor import check, leakage
from imgcls.data.loader import (
    ChannelStats,
    build_loader,
    channel_stats,
    class_weights,
    prepare,
    resolve_channels,
)
from imgcls.engine.calibrate import fit_temperature
from imgcls.engine.callbacks import CSVLogger, EarlyStopping, ProgressLogger, TensorBoardLogger, Unfreeze
from imgcls.engine.evaluate import predict_logits, predict_split
from imgcls.engine.lr_find import lr_range_test
from imgcls.engine.optim import resolve_optim
from imgcls.engine.state import META_FILE, STATE_FILE, WEIGHTS_FILE, CheckpointError, load_weights
from imgcls.engine.train import Plan, fit, head_phase, new_state
from imgcls.inference import samples
from imgcls.inference.export import ExportResult, quantize_int8
from imgcls.inference.export import export as export_model
from imgcls.inference.predict import ArtifactPredictor, PredictionWriter, Predictor, inputs_with_labels
from imgcls.metrics import calibration, evaluation_report
from imgcls.models import Classifier, build_model, default_input_size, default_scratch_lr
from imgcls.models.checkpoint import run_meta
from imgcls.models.transfer import NUM_GROUPS
from imgcls.reporting import (
    data_report_text,
    markdown_summary,
    plot_confusion,
    plot_curves,
    plot_lr_find,
    print_table,
    render_data_html,
    render_html,
    thumbnail_uri,
)
from imgcls.utils import dist
from imgcls.utils.env import (
    autocast_dtype,
    process_age,
    seed_everything,
    select_device,
    set_deterministic,
    set_threads,
    versions,
)
from imgcls.utils.io import new_run_dir, write_json, write_text

__all__ = ["train", "evaluate", "report", "load", "predict", "export", "serve", "lr_find", "check_data",
           "make_config", "TrainResult"]  # fmt: skip
log = logging.getLogger("imgcls")
SHORTHANDS = {
    "data": "data.name",
    "model": "model.name",
    "epochs": "train.epochs",
    "batch_size": "data.batch_size",
    "lr": "optim.lr",
    "out": "out",
    "time": "train.time",
}
DEFAULT_EPOCHS = 4
MIN_STEPS = 100  # optimizer steps a run with the default epoch count takes at least...
MAX_AUTO_EPOCHS = 30  # ...within this many epochs
FINISH_SECONDS = 2.5  # saving, plots and the report after the final evaluation
SMALLNET_WIDTH = {"short": 8, "medium": 16, "long": 32}


@dataclass
class TrainResult:
    run_dir: Path
    test: dict[str, Any] | None  # the test-split evaluation, where the data has a test split
    history: list[dict[str, float]]
    elapsed_s: float


def make_config(
    config: str | Path | None = None, overrides: dict[str, Any] | None = None, **shorthands: Any
) -> Config:
    """Defaults < YAML file < dotted overrides < shorthands (data=, model=, epochs=, batch_size=, lr=, out=).

    Example:
        >>> imgcls.make_config(data="digits", overrides={"train.epochs": 3}).train.epochs   # doctest: +SKIP
        3
    """
    unknown = set(shorthands) - SHORTHANDS.keys()
    if unknown:
        raise config_lib.ConfigError(
            f"unknown argument(s) {', '.join(sorted(unknown))}; use overrides={{'section.key': value}}"
        )
    merged = dict(overrides or {})
    merged |= {SHORTHANDS[k]: v for k, v in shorthands.items() if v is not None}
    return config_lib.load(config, merged)


def train(
    cfg: Config | None = None, *, config: str | Path | None = None, resume: str | Path | None = None,
    overrides: dict[str, Any] | None = None, callbacks: Sequence[Any] = (), count_startup: bool = False,
    overwrite: bool = False, **shorthands: Any,
) -> TrainResult:  # fmt: skip
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
    cfg = _resolve_config(cfg, config, resume, overrides, shorthands)
    cfg, device, bundle, model = _model_and_data(cfg)
    size, channels = model.meta.input_size, model.meta.in_chans
    launch = _launch_record(cfg)
    run_dir = _shared_run_dir(cfg, resume is not None, overwrite)
    cfg = cfg.replace({"out": str(run_dir)})
    if dist.is_main():
        config_lib.save(cfg, run_dir / "config.yaml", launch)
    log.info("run folder %s: %s on %s (%d classes, %dx%dx%d, %d train / %s val images) on %s",
             run_dir, cfg.model.name, cfg.data.name, len(bundle.classes), channels, size, size,
             len(bundle.train), len(bundle.val) if bundle.val else 0, device)  # fmt: skip
    if launch:
        log.info("distributed: %s", ", ".join(f"{k}={v}" for k, v in launch.items()))

    loader_args = _loader_args(cfg, bundle, model, device)
    train_loader = build_loader(
        bundle.train, cfg.data, train=True, num_classes=len(bundle.classes), **loader_args
    )
    # A time-budgeted run validates once at its end; with a test split that pass selects nothing: skip it.
    validate = bundle.val is not None and not (cfg.train.time and bundle.test is not None)
    val_loader = build_loader(bundle.val, cfg.data, train=False, **loader_args) if validate else None
    if cfg.optim.lr == "auto":
        cfg = cfg.replace({"optim.lr": _find_lr(cfg, model, train_loader, run_dir)})
        if dist.is_main():
            config_lib.save(cfg, run_dir / "config.yaml", launch)
    state = new_state(model, cfg, timed=cfg.train.time is not None)
    eval_splits = [s for s in (bundle.val if validate else None, bundle.test) if s is not None]
    plan = _plan(cfg, start, model, len(train_loader), eval_splits)
    if resume is not None:
        state.load(run_dir / STATE_FILE)
        log.info("resumed %s after epoch %d", run_dir, state.epoch)
    callbacks = [*_recipe_callbacks(cfg), *callbacks]
    weights = None
    if cfg.train.class_weights == "auto":
        weights = class_weights(bundle.train.labels, len(bundle.classes)).to(device)
        log.info(
            "class weights: %s", ", ".join(f"{c} {w:.2f}" for c, w in zip(bundle.classes, weights.tolist()))
        )
    state = _fit_logged(cfg, state, plan, train_loader, val_loader, run_dir, callbacks, weights)

    test = None
    if bundle.test is not None:
        if dist.is_main():  # evaluate the best checkpoint, as `imgcls eval` would
            load_weights(model, run_dir / WEIGHTS_FILE)
        dist.broadcast_module(model)  # other ranks (maybe on other machines) get rank 0's weights
        test_loader = build_loader(bundle.test, cfg.data, train=False, **loader_args)
        test = _evaluate_and_write(model, test_loader, bundle.classes, run_dir, "test", cfg, data=bundle.test)
    elapsed = time.perf_counter() - start
    log.info("done in %.1fs: %s", elapsed, run_dir)
    return TrainResult(run_dir, test, state.history, elapsed)


def _model_and_data(cfg: Config) -> tuple[Config, torch.device, DataBundle, Classifier]:
    """Device, data (decoded, split) and a new model; `cfg` comes back with its auto settings resolved."""
    device = _setup(cfg)
    with dist.main_first():  # rank 0 fills the dataset caches; the others then read them
        bundle, size, channels, stats = _load_data(cfg.data, cfg.model.name)
    cfg = resolve_epochs(size_to_run(resolve_recipe(cfg), bundle.flip_ok), len(bundle.train))
    model = _new_model(cfg, bundle, size, channels, stats).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    torch.manual_seed(cfg.train.seed + dist.rank())  # same initial weights everywhere; own dropout per rank
    return cfg, device, bundle, model


def _loader_args(cfg: Config, bundle: DataBundle, model: Classifier, device: torch.device) -> dict[str, Any]:
    return {
        "size": model.meta.input_size,
        "channels": model.meta.in_chans,
        "device": device,
        "flip": bundle.flip_ok,
        "seed": cfg.train.seed,
        "rank": dist.rank(),
        "world": dist.world_size(),
    }


def lr_find(
    *, config: str | Path | None = None, overrides: dict[str, Any] | None = None, out: str | Path | None = None,
    **shorthands: Any,
) -> dict[str, Any]:  # fmt: skip
    """The LR range test for a data/model/recipe; saves lr_find.png + lr_find.json and returns the result.

    Example:
        >>> imgcls.lr_find(data="digits", model="smallnet")["suggestion"]            # doctest: +SKIP
    """
    cfg = make_config(config, {**(overrides or {}), "optim.lr": 1.0}, **shorthands)
    cfg, device, bundle, model = _model_and_data(cfg)
    loader = build_loader(
        bundle.train,
        cfg.data,
        train=True,
        num_classes=len(bundle.classes),
        **_loader_args(cfg, bundle, model, device),
    )
    result = dist.broadcast_object(lr_range_test(model, loader, cfg))
    out_dir = (
        Path(out) if out else new_run_dir("runs", f"lr-find-{_stem(cfg.data.name)}-{_stem(cfg.model.name)}")
    )
    if dist.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_lr_find(result, out_dir / "lr_find.png")
        write_json(
            out_dir / "lr_find.json", {**result, "recipe": cfg.train.recipe, "optimizer": cfg.optim.name}
        )
    return {**result, "out": str(out_dir), "recipe": cfg.train.recipe, "optimizer": cfg.optim.name}


def check_data(
    data: str, *, out: str | Path | None = "data-check.json", config: str | Path | None = None,
    overrides: dict[str, Any] | None = None, near: bool = True, html: str | Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The data doctor on a folder, CSV manifest or built-in; writes the JSON report to `out` (and a page
    with thumbnails to `html`).

    Example:
        >>> imgcls.check_data("my_folder")["ok"]                                     # doctest: +SKIP
    """
    cfg = make_config(config, overrides, data=data)
    bundle = open_dataset(cfg.data)
    report = check(bundle, near=near).to_dict()
    if out:
        write_json(out, report)
    if html:
        write_text(html, render_data_html(report, _finding_thumbnails(report, bundle)))
    return report


def _finding_thumbnails(report: dict[str, Any], bundle: DataBundle) -> dict[str, str]:
    """Thumbnails of the images the findings list (the first 24 of each), keyed by path."""
    tensors = {f"{name}[{i}]": (getattr(bundle, name), i) for name in ("train", "val", "test")
               if getattr(bundle, name) is not None and getattr(bundle, name).images is not None
               for i in range(len(getattr(bundle, name)))}  # fmt: skip
    wanted = set()
    for finding in report["findings"]:
        for item in finding["items"][:24]:
            for path in item if isinstance(item, list) else [item]:
                wanted.add(
                    str(path).split(": ", 1)[1]
                    if str(path).startswith(("train: ", "val: ", "test: "))
                    else str(path)
                )
    thumbs = {}
    for path in wanted:
        if path in tensors:
            split, i = tensors[path]
            thumbs[path] = thumbnail_uri(split.images[i].permute(1, 2, 0).numpy(), side=48)
        elif Path(path).is_file():
            with contextlib.suppress(ImageDecodeError):
                thumbs[path] = thumbnail_uri(np.asarray(open_image(path, 3)), side=48)
    return thumbs


def _resolve_config(
    cfg: Config | None, config: str | Path | None, resume: str | Path | None,
    overrides: dict[str, Any] | None, shorthands: dict[str, Any],
) -> Config:  # fmt: skip
    """The run's config: a resumed run's own config.yaml (plus overrides), a given Config, or a new one."""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / STATE_FILE).is_file():
            raise CheckpointError(f"cannot resume: {run_dir} has no {STATE_FILE}")
        return make_config(run_dir / "config.yaml", overrides, **shorthands).replace({"out": str(run_dir)})
    return cfg if cfg is not None else make_config(config, overrides, **shorthands)


def _shared_run_dir(cfg: Config, resuming: bool, overwrite: bool) -> Path:
    """Rank 0 opens the run folder; every rank gets its path, or the same error (no rank left waiting)."""
    opened: tuple[str | None, str | None] = (None, None)
    if dist.is_main():
        try:
            opened = (str(_open_run_dir(cfg, resuming, overwrite)), None)
        except config_lib.ConfigError as e:
            opened = (None, str(e))
    path, error = dist.broadcast_object(opened)
    if error:
        raise config_lib.ConfigError(error)
    return Path(path)


def _open_run_dir(cfg: Config, resuming: bool, overwrite: bool) -> Path:
    """The run folder: new, resumed, or (with `overwrite`) an earlier run's folder emptied first.

    A non-empty folder is refused otherwise: stale artifacts (model.onnx, eval-val.json, state.pt) beside
    new weights would be served or resumed as if they belonged to this run.
    """
    if not cfg.out:
        return new_run_dir("runs", f"{_stem(cfg.data.name)}-{_stem(cfg.model.name)}")
    run_dir = Path(cfg.out)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        leftovers = sorted(p.name for p in run_dir.iterdir())
    except OSError as e:
        raise config_lib.ConfigError(f"cannot create the run folder {run_dir}: {e.strerror or e}") from None
    if resuming or not leftovers:
        return run_dir
    if not overwrite:
        raise config_lib.ConfigError(
            f"--out {run_dir} is not empty ({', '.join(leftovers[:4])}{', ...' if len(leftovers) > 4 else ''}); "
            "continue it with --resume, replace it with --overwrite, or choose another folder"
        )
    if "config.yaml" not in leftovers:  # never empty a folder imgcls did not make
        raise config_lib.ConfigError(f"--overwrite refused: {run_dir} is not an imgcls run folder (no config.yaml)")
    for path in run_dir.iterdir():
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    log.info("emptied the earlier run in %s (--overwrite)", run_dir)
    return run_dir


def _fit_logged(
    cfg: Config, state, plan: Plan, train_loader, val_loader, run_dir: Path, callbacks: Sequence[Any],
    class_weights: torch.Tensor | None = None,
):  # fmt: skip
    """`fit` with the standard loggers, a resume hint on Ctrl-C, and the curves plot at the end."""
    progress = ProgressLogger(cfg.log.progress)
    loggers: list[Any] = []
    if dist.is_main():  # the other ranks see the same (reduced) metrics: one writer is enough
        loggers += [progress, CSVLogger(run_dir / "metrics.csv")]
        if cfg.log.tensorboard:
            loggers.append(TensorBoardLogger(run_dir / "tensorboard"))
    try:
        state = fit(
            cfg, state, plan, train_loader, val_loader, run_dir, [*loggers, *callbacks], class_weights
        )
    except KeyboardInterrupt:
        progress.close()  # the live bar holds back what is logged while it runs: end it first
        if (run_dir / STATE_FILE).is_file():
            log.warning("interrupted in epoch %d; continue with: imgcls train --resume %s", state.epoch + 1, run_dir)
        else:
            log.warning("interrupted before the first checkpoint; nothing to resume in %s", run_dir)
        raise
    finally:
        progress.close()
    if state.history and dist.is_main():
        plot_curves(state.history, run_dir / "curves.png")
    return state


def evaluate(
    run_dir: str | Path, data: str | None = None, split: str = "test", *, batch_size: int | None = None,
    device: str = "auto", show: bool = True, tta: str | None = None, calibrate: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Evaluates a run's best model on a split of `data` (default: the data it was trained on).

    Writes eval.json (test split) or eval-<split>.json, report.md, report.html and the confusion-matrix
    PNG into the run folder. `tta="flip"|"off"` evaluates with/without mirrored test-time augmentation and
    reports both; `calibrate` fits temperature scaling on the validation split, stores the temperature
    with the model (model.json) and reports the calibration error before and after.
    Under torchrun each process evaluates a contiguous shard and rank 0 writes the gathered result.

    Example:
        >>> imgcls.evaluate("runs/my-run", split="test", calibrate=True)["ece"]     # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    torch_device = select_device(device, local_rank=dist.local_rank())
    dist.init(torch_device)
    predictor = Predictor.from_run(run_dir, device=str(torch_device))
    cfg = _run_config(run_dir, data)
    data_cfg = replace(
        cfg.data, name=data or cfg.data.name, cache="auto" if cfg.data.cache == "off" else cfg.data.cache
    )
    if batch_size:
        data_cfg = replace(data_cfg, eval_batch_size=batch_size)
    model, meta = predictor.model, predictor.meta
    with dist.main_first():
        bundle = _align_classes(open_dataset(data_cfg), meta.classes)
        bundle = prepare(bundle, data_cfg, meta.input_size, meta.in_chans)

    def logits_of(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        loader = build_loader(bundle.split(name), data_cfg, size=meta.input_size, channels=meta.in_chans,
                              device=predictor.device, train=False, rank=dist.rank(), world=dist.world_size())  # fmt: skip
        return predict_split(model, loader, amp_dtype=autocast_dtype(predictor.device, cfg.train.amp))

    extra: dict[str, Any] = {}
    if tta is not None:  # both ways, so the report shows what the augmentation is worth
        accuracies = {}
        for mode in ("off", "flip"):
            meta.tta = mode
            logits, labels = logits_of(split)
            accuracies[mode] = round(float((logits.argmax(1) == labels).float().mean()), 6)
        extra["tta"] = accuracies
        meta.tta = tta
    if calibrate:
        meta.temperature = 1.0
        val_logits, val_labels = logits_of("val")
        temperature = fit_temperature(val_logits, val_labels)
        raw_logits, labels = logits_of(split)
        extra |= {
            "temperature": temperature,
            "calibration_before": calibration(raw_logits.softmax(1), labels),
        }
        extra["calibration_after"] = calibration((raw_logits / temperature).softmax(1), labels)
        # The report's main calibration is the one before scaling, shown against the one after.
        extra |= {"calibration": extra["calibration_before"], "ece": extra["calibration_after"]["ece"]}
        meta.temperature = temperature
        if dist.is_main():
            _store_meta(run_dir, {"temperature": temperature, "tta": meta.tta})
        log.info("temperature %.3f fitted on the validation split: ECE %.4f -> %.4f", temperature,
                 extra["calibration_before"]["ece"], extra["calibration_after"]["ece"])  # fmt: skip
    elif tta is not None and dist.is_main():
        _store_meta(run_dir, {"tta": meta.tta})
    result = _evaluate_and_write(model, None, meta.classes, run_dir, split, cfg, data=bundle.split(split),
                                 logits_labels=logits_of(split), extra=extra)  # fmt: skip
    if show and dist.is_main():
        print_table(result, f"{run_dir.name}: {split} split of {data_cfg.name}")
    return result


def _store_meta(run_dir: Path, updates: dict[str, Any]) -> None:
    """Updates model.json in place (the weights are unchanged: temperature and TTA act in the forward)."""
    path = run_dir / META_FILE
    write_json(path, {**json.loads(path.read_text(encoding="utf-8")), **updates})


def predict(
    run_dir: str | Path, inputs: Sequence[str | Path], *, out: str | Path | None = None, top_k: int = 5,
    device: str = "auto", batch_size: int = 256, on_prediction=None, backend: str = "torch",
) -> dict[str, Any]:  # fmt: skip
    """Classifies files, folders (recursive), globs and CSV manifests in batches (decoding in threads).

    `backend`: torch (the run folder), or onnx/torchscript (its exported artifact, or an artifact path).
    Writes `out` (.csv or .jsonl) as it goes; calls `on_prediction(pred)` per image (the CLI prints);
    returns counts, the skipped files and, where true labels are known (class folders, a CSV label
    column), the accuracy.

    Example:
        >>> imgcls.predict("runs/my-run", ["photos/"], out="predictions.csv")["count"]   # doctest: +SKIP
    """
    predictor = _predictor(run_dir, device, backend)
    files, labels, skipped = inputs_with_labels(inputs, predictor.classes)
    writer = PredictionWriter(out) if out else None
    count = correct = labelled = 0
    try:
        with _progress_bar(len(files)) as advance:
            for preds, bad in predictor.predict_stream(files, top_k=top_k, batch_size=batch_size):
                skipped += bad
                for pred in preds:
                    truth = labels.get(Path(pred["path"]))
                    if writer:
                        writer.write(pred, truth)
                    if on_prediction:
                        on_prediction(pred)
                    count += 1
                    if truth is not None:
                        labelled += 1
                        correct += pred["label"] == truth
                advance(len(preds) + len(bad))
    finally:
        if writer:
            writer.close()
    if skipped:
        log.warning("skipped %d path(s):\n%s", len(skipped), "\n".join(f"  {p}: {why}" for p, why in skipped))
    summary = {"count": count, "skipped": skipped, "labelled": labelled}
    if labelled:
        summary["accuracy"] = round(correct / labelled, 6)
        log.info("accuracy %.4f on %d labelled images", summary["accuracy"], labelled)
    return summary


def _predictor(run_dir: str | Path, device: str, backend: str) -> Predictor:
    """PyTorch from the run folder, or the exported artifact (`imgcls export`) for onnx/torchscript."""
    if backend == "torch":
        return Predictor.from_run(run_dir, device=device)
    path = Path(run_dir)
    if path.is_dir():
        path = path / ("model.onnx" if backend == "onnx" else "model.torchscript.pt")
    if not path.is_file():
        raise config_lib.ConfigError(
            f"no exported model at {path}; run: imgcls export {run_dir} --format {backend}"
        )
    return ArtifactPredictor(path)


@contextmanager
def _progress_bar(total: int):
    """A rich progress bar on a terminal (stderr), nothing elsewhere; yields advance(n)."""
    if not sys.stderr.isatty() or total < 2:
        yield lambda n: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as progress:
        task = progress.add_task("predicting", total=total)
        yield lambda n: progress.advance(task, n)


def export(
    run_dir: str | Path, fmt: str = "onnx", *, out: str | Path | None = None, layout: str = "nhwc",
    check_limit: int = 500, check_images: str | Path | None = None, int8: bool = False,
) -> ExportResult:  # fmt: skip
    """Exports a run's model with its preprocessing in the graph and checks it against `imgcls predict`.

    The check feeds the artifact raw images of many shapes: up to `check_limit` images of `check_images`
    (a folder), else of the run's validation split (else test, else train) resized to photo-like shapes,
    else, when the run's data is gone, synthetic images (said in the log and in `result.check_source`);
    always also a 4000x3000, a tiny and two extreme-aspect images. Raises ExportError on disagreement.
    `int8` needs the run's data: its training images calibrate the quantization.

    Example:
        >>> imgcls.export("runs/my-run", "onnx").agreement                           # doctest: +SKIP
        1.0
    """
    run_dir = Path(run_dir)
    if int8 and fmt != "onnx":
        raise config_lib.ConfigError("--int8 needs --format onnx (onnxruntime static quantization)")
    predictor = Predictor.from_run(run_dir, device="cpu")
    meta = predictor.meta
    bundle = _run_data(run_dir, meta.classes)
    if check_images is not None:
        images, source = samples.folder_sample(check_images, check_limit, meta.in_chans), str(check_images)
        if not images:
            raise DataError(f"--check-images {check_images}: no readable images there")
    elif bundle is not None:
        split_name = next(s for s in ("val", "test", "train") if getattr(bundle, s) is not None)
        images, _ = samples.split_sample(bundle.split(split_name), check_limit, meta.in_chans)
        source = f"{split_name} split of {bundle.name}"
    else:
        images, source = samples.synthetic(meta.in_chans), "synthetic images only"
        log.warning("the run's data is not available: the export is checked on synthetic images only; "
                    "pass --check-images DIR to check it on real ones")  # fmt: skip
    out = Path(out) if out else run_dir / ("model.onnx" if fmt == "onnx" else "model.torchscript.pt")
    result = export_model(predictor.model, out, fmt, layout, [*images, *samples.extremes(meta.in_chans)])
    result.check_source = source
    if int8:
        result.int8 = _quantize(out, bundle, meta, layout, check_limit)
    log.info("exported %s: top-1 agreement with PyTorch %.4f%%, max probability difference %.2e on %d images (%s)",
             out, 100 * result.agreement, result.max_prob_diff, result.checked, source)  # fmt: skip
    return result


def _run_data(run_dir: Path, classes: list[str]) -> DataBundle | None:
    """The run's dataset (file lists or built-in tensors, nothing decoded), or None where it is gone."""
    try:
        cfg = _run_config(run_dir)
        return _align_classes(open_dataset(replace(cfg.data, strict=False)), classes)
    except (DataError, CheckpointError, config_lib.ConfigError) as e:
        log.info("run data unavailable: %s", e)
        return None


def _quantize(out: Path, bundle: DataBundle | None, meta, layout: str, limit: int) -> dict[str, Any]:
    """int8 calibrated on a sample of training images, its accuracy measured on held-out ones."""
    if bundle is None:
        raise DataError("--int8 calibrates on the run's training images, which are not available here")
    held_out = bundle.val or bundle.test or bundle.train
    calibration, _ = samples.split_sample(bundle.train, 512, meta.in_chans, seed=1)
    check, labels = samples.split_sample(held_out, limit, meta.in_chans)
    q = quantize_int8(out, out.with_suffix(".int8.onnx"), samples.squares(calibration, meta.input_size),
                      samples.squares(check, meta.input_size), labels, layout)  # fmt: skip
    log.info("int8: accuracy %.4f -> %.4f, top-1 agreement %.4f, %s -> %s images/s (%.2fx)", q["accuracy_fp32"],
             q["accuracy_int8"], q["top1_agreement"], q["images_per_s_fp32"], q["images_per_s_int8"], q["speedup"])  # fmt: skip
    return q


def serve(
    run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
    batch_window_ms: float = 5.0, max_bytes: int = 10 << 20,
) -> None:  # fmt: skip
    """Serves a run's model over HTTP (FastAPI + uvicorn) until interrupted; loopback only by default.

    Example:
        >>> imgcls.serve("runs/my-run", port=8000)                                   # doctest: +SKIP
    """
    import uvicorn

    from imgcls.inference.serve import ServeConfig, create_app

    app = create_app(
        Predictor.from_run(run_dir, device=device),
        ServeConfig(max_bytes=max_bytes, batch_window_ms=batch_window_ms),
    )
    log.info("serving %s on http://%s:%d (page: /, API docs: /docs)", run_dir, host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def load(run_dir: str | Path, device: str = "auto") -> Predictor:
    """The trained model of a run folder, ready to predict on paths, PIL images or tensors.

    Example:
        >>> imgcls.load("runs/my-run").predict(["cat.jpg"])[0]["label"]              # doctest: +SKIP
    """
    return Predictor.from_run(run_dir, device=device)


def _setup(cfg: Config) -> torch.device:
    """Threads, determinism, seeds, the device and, under torchrun, the process group."""
    set_threads(cfg.train.threads)
    set_deterministic(cfg.train.deterministic)
    seed_everything(cfg.train.seed)
    device = select_device(cfg.train.device, local_rank=dist.local_rank())
    autocast_dtype(device, cfg.train.amp)  # fail now, not after loading data, on an impossible amp setting
    dist.init(device)
    return device


def _launch_record(cfg: Config) -> dict[str, Any] | None:
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


def run_length(cfg: Config) -> str:
    """short (<= 5 epochs or 90 s), medium (<= 15 epochs or 8 min) or long."""
    if cfg.train.time is not None:
        seconds = config_lib.parse_duration(cfg.train.time)
        return "short" if seconds <= 90 else "medium" if seconds <= 480 else "long"
    epochs = cfg.train.epochs or DEFAULT_EPOCHS
    return "short" if epochs <= 5 else "medium" if epochs <= 15 else "long"


def resolve_epochs(cfg: Config, num_train: int) -> Config:
    """`train.epochs` unset: DEFAULT_EPOCHS, or as many (up to MAX_AUTO_EPOCHS) as give MIN_STEPS optimizer
    steps. A run of a few dozen steps leaves BatchNorm's running statistics behind the weights, and
    evaluation then misjudges a model that has learnt (a 72-image folder: 32 steps in 4 epochs)."""
    if cfg.train.epochs is not None:
        return cfg
    steps = max(1, math.ceil(num_train / cfg.data.batch_size))
    epochs = max(DEFAULT_EPOCHS, min(MAX_AUTO_EPOCHS, math.ceil(MIN_STEPS / steps)))
    if epochs > DEFAULT_EPOCHS and cfg.train.time is None:
        log.info("a small dataset (%d steps per epoch): %d epochs, for at least %d optimizer steps (set --epochs to choose)",
                 steps, epochs, min(MIN_STEPS, MAX_AUTO_EPOCHS * steps))  # fmt: skip
    return cfg.replace({"train.epochs": epochs})


def resolve_recipe(cfg: Config) -> Config:
    """Resolves the recipe and the optimizer defaults that follow from it.

    Starting from pretrained weights (`model.pretrained`, `model.weights`) means fine-tuning: AdamW at
    3e-3 with weight decay 0.01, a head-only phase, then discriminative learning rates. From scratch:
    SGD (nesterov) at 0.1 with weight decay 5e-4. Explicit settings always win.
    """
    updates: dict[str, Any] = {}
    recipe = cfg.train.recipe
    if recipe == "auto":
        recipe = "finetune" if cfg.model.pretrained or cfg.model.weights else "scratch"
        updates["train.recipe"] = recipe
    optim = resolve_optim(cfg.optim, finetune=recipe == "finetune", scratch_lr=default_scratch_lr(cfg.model.name))
    updates |= {"optim.name": optim.name, "optim.lr": optim.lr, "optim.weight_decay": optim.weight_decay}
    if (
        cfg.model.weights and cfg.model.width is None
    ):  # another imgcls run's weights: its architecture options
        meta = run_meta(cfg.model.weights) or {}
        if meta.get("name") == cfg.model.name and "width" in meta.get("arch", {}):
            updates["model.width"] = meta["arch"]["width"]
    return cfg.replace(updates)


def _recipe_callbacks(cfg: Config) -> list[Any]:
    callbacks: list[Any] = []
    if cfg.train.recipe == "finetune":
        freeze = cfg.model.freeze
        keep = NUM_GROUPS if freeze == "backbone" else int(freeze) if freeze.isdigit() else 0
        callbacks.append(Unfreeze(head_phase(cfg, cfg.train.time is not None), keep))
    if cfg.train.patience:
        callbacks.append(EarlyStopping(cfg.train.patience))
    return callbacks


def _find_lr(cfg: Config, model: Classifier, train_loader, run_dir: Path) -> float:
    """`optim.lr=auto`: the LR range test's suggestion, with its plot saved in the run folder."""
    result = dist.broadcast_object(lr_range_test(model, train_loader, cfg))  # every rank uses rank 0's
    if dist.is_main():
        plot_lr_find(result, run_dir / "lr_find.png")
        write_json(run_dir / "lr_find.json", result)
    log.info(
        "optim.lr=auto: the LR range test suggests %.3g (plot: %s)",
        result["suggestion"],
        run_dir / "lr_find.png",
    )
    return float(result["suggestion"])


def size_to_run(cfg: Config, flip_ok: bool) -> Config:
    """Resolves the `auto` settings that depend on the run's length: smallnet's width and augmentation.

    Short runs learn most per second with a narrow net and no augmentation (a few passes over the
    data do not overfit); long runs can afford width, and need augmentation.
    """
    length = run_length(cfg)
    updates: dict[str, Any] = {}
    if cfg.model.name == "smallnet" and cfg.model.width is None:
        updates["model.width"] = SMALLNET_WIDTH[length]
    if cfg.data.augment == "auto":
        updates["data.augment"] = "none" if length == "short" else ("crop-flip" if flip_ok else "crop")
    return cfg.replace(updates)


def _plan(
    cfg: Config, start: float, model: Classifier, steps_per_epoch: int, eval_splits: list[Split]
) -> Plan:
    """Epochs, or the seconds of training a time budget leaves after set-up and the final evaluation."""
    if cfg.train.time is None:
        return Plan(cfg.train.epochs, steps_per_epoch)
    budget = config_lib.parse_duration(cfg.train.time)
    reserve = estimate_eval_seconds(model, sum(len(s) for s in eval_splits), cfg) + FINISH_SECONDS
    left = budget - (time.perf_counter() - start) - reserve
    if left <= 0:
        raise config_lib.ConfigError(
            f"train.time={cfg.train.time} leaves no time to train: set-up took {time.perf_counter() - start:.1f}s "
            f"and the final evaluation needs about {reserve:.1f}s"
        )
    log.info("time budget %s: %.1fs of training, %.1fs kept for evaluation", cfg.train.time, left, reserve)
    return Plan(cfg.train.epochs, steps_per_epoch, budget_s=left)


def estimate_eval_seconds(model: Classifier, num_images: int, cfg: Config) -> float:
    """Times a forward pass of one evaluation batch (it also warms up the kernels) and scales it up."""
    if not num_images:
        return 0.0
    device = next(model.parameters()).device
    n = min(num_images, cfg.data.eval_batch_size, 512)
    x = torch.rand(n, model.meta.in_chans, model.meta.input_size, model.meta.input_size, device=device)
    if cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    fake = [(x, torch.zeros(n, dtype=torch.long, device=device))]
    amp_dtype = autocast_dtype(device, cfg.train.amp)
    for _ in range(2):  # warm-up: the first calls build the kernels
        predict_logits(model, fake, amp_dtype=amp_dtype, channels_last=False)
    t = time.perf_counter()
    predict_logits(model, fake, amp_dtype=amp_dtype, channels_last=False)
    return (time.perf_counter() - t) * num_images / n * 1.2


def _load_data(cfg: DataConfig, model_name: str) -> tuple[DataBundle, int, int, ChannelStats]:
    """The data, opened, checked for leaks and prepared; its size, channels and per-channel mean/std."""
    bundle = open_dataset(cfg)
    if cfg.check and bundle.train.images is None:  # user files (built-ins are curated): leakage stops a run
        problems = leakage(bundle)
        if problems:
            text = data_report_text({"dataset": bundle.name, "num_images": 0, "seconds": 0, "class_counts": {},
                                     "stats": {}, "findings": [asdict(f) for f in problems]})  # fmt: skip
            raise DataError(
                f"the data check found problems that would spoil this run:\n{text}\n"
                f"full report: imgcls data check {cfg.name}; train anyway: --set data.check=off"
            )
    channels = resolve_channels(bundle, cfg)
    size = cfg.image_size or bundle.image_size or default_input_size(model_name)
    prepared = prepare(bundle, cfg, size, channels)
    return prepared, size, channels, channel_stats(bundle.train, prepared.train, size, channels)


def _new_model(cfg: Config, bundle: DataBundle, size: int, channels: int, stats: ChannelStats) -> Classifier:
    arch: dict[str, Any] = {"width": cfg.model.width} if cfg.model.width is not None else {}
    if cfg.model.small_stem:
        arch["small_stem"] = True
    model = build_model(
        cfg.model.name, num_classes=len(bundle.classes), in_chans=channels, input_size=size,
        pretrained=cfg.model.pretrained, weights=cfg.model.weights, drop_rate=cfg.model.drop_rate, **arch,
    )  # fmt: skip

    model.meta.classes = list(bundle.classes)
    # Mirrored test images help only a model that was trained on mirrored images.
    model.meta.tta = (
        cfg.train.tta if cfg.train.tta != "auto" else ("flip" if cfg.data.augment == "crop-flip" else "off")
    )
    # Pretrained features expect the normalization they were learnt with; from scratch, the data's own.
    if not (cfg.model.pretrained or cfg.model.weights):
        model.set_normalization(*stats)
    return model


def _evaluate_and_write(
    model: Classifier, loader, classes: list[str], run_dir: Path, split: str, cfg: Config,
    data: Split | None = None, logits_labels: tuple[torch.Tensor, torch.Tensor] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Metrics of `model` on a split (or of given logits), written as eval.json, report.md and report.html."""
    device = next(model.parameters()).device
    if logits_labels is None:
        logits_labels = predict_split(
            model,
            loader,
            amp_dtype=autocast_dtype(device, cfg.train.amp),
            channels_last=cfg.train.channels_last,
        )
    logits, labels = logits_labels
    if not len(labels):
        raise DataError(f"the {split} split has no usable images")
    result = {
        "split": split,
        "data": cfg.data.name,
        "model": model.meta.name,
        **evaluation_report(logits, labels, classes),
    }
    result |= extra or {}
    if not dist.is_main():
        return result
    result["meta"] = _provenance(model, cfg, run_dir)
    if data is not None:
        for rows in result["samples"].values():
            for row in rows:
                row["path"] = str(data.paths[row["index"]]) if data.paths else f"{split}[{row['index']}]"
                row["thumbnail"] = thumbnail_uri(_pixels(data, row["index"], model.meta.in_chans))
    suffix = "" if split == "test" else f"-{split}"
    write_json(run_dir / f"eval{suffix}.json", result)
    plot_confusion(result["confusion_matrix"], classes, run_dir / f"confusion_matrix{suffix}.png",
                   f"{split} split: confusion (row-normalized)")  # fmt: skip
    write_text(
        run_dir / f"report{suffix}.md",
        markdown_summary(result, f"{model.meta.name} on {cfg.data.name} ({split} split)"),
    )
    write_text(run_dir / f"report{suffix}.html", render_html(result, _history(run_dir)))
    log.info("%s accuracy %.4f (%d images)%s; report: %s", split, result["accuracy"], result["num_samples"],
             f", top-5 {result['top5_accuracy']:.4f}" if "top5_accuracy" in result else "",
             run_dir / f"report{suffix}.html")  # fmt: skip
    return result


def report(run_dir: str | Path, split: str = "test") -> Path:
    """Re-renders report.html from the run's eval.json and metrics.csv (no model, no data needed).

    Example:
        >>> imgcls.report("runs/my-run")                                             # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    suffix = "" if split == "test" else f"-{split}"
    path = run_dir / f"eval{suffix}.json"
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{run_dir} has no {path.name}; run: imgcls eval {run_dir}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is corrupt: {e}") from None
    out = run_dir / f"report{suffix}.html"
    write_text(out, render_html(result, _history(run_dir)))
    return out


def _provenance(model: Classifier, cfg: Config, run_dir: Path) -> dict[str, Any]:
    v = versions()
    return {"model": model.meta.name, "dataset": cfg.data.name, "checkpoint": str(run_dir / WEIGHTS_FILE),
            "date": time.strftime("%Y-%m-%d %H:%M"), "imgcls": v["imgcls"], "torch": v["torch"]}  # fmt: skip


def _history(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def _pixels(data: Split, index: int, channels: int):
    """One image of a split as an (H, W, C) uint8 array, for the report's gallery."""
    if data.images is not None:
        return data.images[index].permute(1, 2, 0).numpy()
    try:
        return np.asarray(open_image(data.paths[index], channels))
    except ImageDecodeError:
        return np.zeros((8, 8), dtype=np.uint8)


def _align_classes(bundle: DataBundle, classes: list[str]) -> DataBundle:
    """Re-indexes a dataset's labels to a trained model's classes, by name."""
    if bundle.classes == classes:
        return bundle
    index = {c: i for i, c in enumerate(classes)}

    def remap(split: Split | None) -> Split | None:
        if split is None:
            return None
        names = [bundle.classes[i] for i in split.labels.tolist()]
        unknown = sorted(set(names) - index.keys())
        if unknown:
            raise DataError(f"the data has classes the model was not trained on: {', '.join(unknown[:10])}")
        return Split(torch.tensor([index[n] for n in names], dtype=torch.long), split.images, split.paths)

    return replace(
        bundle,
        classes=list(classes),
        train=remap(bundle.train),
        val=remap(bundle.val),
        test=remap(bundle.test),
    )


def _run_config(run_dir: Path, data: str | None = None) -> Config:
    """The run's config.yaml; without one, only a run told which data to use can go on (never a guess)."""
    path = run_dir / "config.yaml"
    if path.is_file():
        return config_lib.load(path)
    if data is None:
        raise CheckpointError(f"{run_dir} has no config.yaml, so the data it was trained on is unknown; "
                              "name the data with --data")  # fmt: skip
    return config_lib.load(None, {"data.name": data})


def _stem(name: str) -> str:
    return Path(name.rstrip("/")).stem.replace("/", "-") or "data"
