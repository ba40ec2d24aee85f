"""`imgcls.evaluate` and `imgcls.report`: a run's model measured on a split, and the files a person reads."""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgcls.api import decisions
from imgcls.api.runs import run_config
from imgcls.config import Config, ConfigError, DataConfig, parse_abstain
from imgcls.data.datasets import open_dataset
from imgcls.data.decode import ImageDecodeError, open_image
from imgcls.data.loader import build_loader, prepare
from imgcls.data.transforms import to_square
from imgcls.data.types import DataBundle, DataError, Split
from imgcls.engine.calibrate import fit_temperature
from imgcls.engine.evaluate import predict_split
from imgcls.inference import explain
from imgcls.inference.predict import Predictor
from imgcls.metrics import calibration, evaluation_report, mean_average_precision, multilabel_report
from imgcls.models import Classifier, ModelMeta
from imgcls.models.checkpoint import update_meta
from imgcls.reporting import (
    markdown_summary,
    multilabel,
    plot_confusion,
    print_table,
    render_html,
    thumbnail_uri,
)
from imgcls.utils import dist, run_files
from imgcls.utils.env import autocast_dtype, select_device, versions
from imgcls.utils.io import write_json, write_text

log = logging.getLogger("imgcls")


def evaluate(
    run_dir: str | Path,
    data: str | None = None,
    split: str = "test",
    *,
    batch_size: int | None = None,
    device: str = "auto",
    show: bool = True,
    tta: str | None = None,
    calibrate: bool = False,
    abstain: str | None = None,
    ood: str | None = None,
) -> dict[str, Any]:
    """Evaluates a run's best model on a split of `data` (default: the data it was trained on).

    Writes eval.json (test split) or eval-<split>.json, report.md, report.html and the confusion-matrix
    PNG into the run folder. `tta="flip"|"off"` evaluates with/without mirrored test-time augmentation and
    reports both; `calibrate` fits temperature scaling on the validation split, stores the temperature
    with the model (model.json) and reports the calibration error before and after. `abstain` ("0.99",
    "precision=0.99" or "coverage=0.9") calibrates too, then chooses on the validation split the confidence
    below which the model answers "I don't know", and stores it. `ood` (a folder, manifest or dataset of
    images of none of the classes) adds the AUROC of telling them from the split's images by confidence.
    Under torchrun each process evaluates a contiguous shard and rank 0 writes the gathered result.

    Example:
        >>> imgcls.evaluate("runs/my-run", split="test", calibrate=True)["ece"]     # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    if abstain is not None:
        parse_abstain(abstain, "--abstain")  # a malformed target fails before the model and data load
    torch_device = select_device(device, local_rank=dist.local_rank())
    dist.init(torch_device)
    predictor = Predictor.from_run(run_dir, device=str(torch_device))
    cfg = run_config(run_dir, data)
    data_cfg = replace(
        cfg.data, name=data or cfg.data.name, cache="auto" if cfg.data.cache == "off" else cfg.data.cache
    )
    if batch_size:
        data_cfg = replace(data_cfg, eval_batch_size=batch_size)
    meta = predictor.meta
    with dist.main_first():
        bundle = open_dataset(data_cfg).with_classes(meta.classes)
        bundle = prepare(bundle, data_cfg, meta.input_size, meta.in_chans)

    def logits_of(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return _logits(predictor, bundle.split(name), data_cfg, cfg)

    extra = _rechoose(predictor, logits_of, split, tta=tta, calibrate=calibrate, abstain=abstain)
    if dist.is_main() and (calibrate or tta is not None or abstain is not None):
        update_meta(
            run_dir,
            {k: getattr(meta, k) for k in ("tta", "temperature", "abstain_threshold", "abstain_rule")},
        )
    evaluated = logits_of(split)
    if ood is not None:
        extra["ood"] = decisions.out_of_distribution(
            meta,
            ood,
            evaluated[0],
            lambda split: _logits(predictor, _prepared(split, data_cfg, meta), data_cfg, cfg)[0],
        )
    result = evaluate_and_write(
        predictor.model,
        None,
        meta.classes,
        run_dir,
        split,
        cfg,
        data=bundle.split(split),
        logits_labels=evaluated,
        extra=extra,
    )
    if show and dist.is_main():
        show_table(result, f"{run_dir.name}: {split} split of {data_cfg.name}")
    return result


def _rechoose(
    predictor: Predictor,
    logits_of: Callable[[str], tuple[torch.Tensor, torch.Tensor]],
    split: str,
    *,
    tta: str | None,
    calibrate: bool,
    abstain: str | None,
) -> dict[str, Any]:
    """What `evaluate` is asked to choose again for the model (TTA, temperature, abstention), set on its
    meta; returns what the report shows of it."""
    meta, extra = predictor.meta, {}
    if meta.multilabel and (calibrate or abstain is not None):
        raise ConfigError(
            "--calibrate and --abstain fit a softmax temperature; a multi-label model's labels are decided by "
            "thresholds tuned on the validation split when it trained (train.threshold_precision sets their goal)"
        )
    if tta is not None:  # both ways, so the report shows what the augmentation is worth
        extra["tta"] = _tta_accuracies(predictor, lambda: logits_of(split), tta)
        meta.tta = tta
    if calibrate or abstain is not None:
        meta.temperature = 1.0  # the logits to fit on are the raw ones
        val = logits_of("val")
        extra |= _calibrate(predictor, val, logits_of(split))
        if abstain is not None:
            decisions.choose_abstention(meta, val[0] / meta.temperature, val[1], abstain)
    return extra


def _logits(
    predictor: Predictor, split: Split, data_cfg: DataConfig, cfg: Config
) -> tuple[torch.Tensor, torch.Tensor]:
    meta = predictor.meta
    loader = build_loader(
        split,
        data_cfg,
        size=meta.input_size,
        channels=meta.in_chans,
        device=predictor.device,
        train=False,
        rank=dist.rank(),
        world=dist.world_size(),
    )
    return predict_split(predictor.model, loader, amp_dtype=autocast_dtype(predictor.device, cfg.train.amp))


def _prepared(split: Split, data_cfg: DataConfig, meta: ModelMeta) -> Split:
    """A split of files decoded (where they fit in RAM) at the model's size; unreadable files skipped."""
    bundle = DataBundle("images", ["?"], split)
    return prepare(bundle, replace(data_cfg, strict=False), meta.input_size, meta.in_chans).train


def _tta_accuracies(predictor: Predictor, logits_labels, chosen: str) -> dict[str, float]:
    """Accuracy (multi-label: macro mAP) without test-time views and with the chosen ones."""
    accuracies = {}
    for mode in dict.fromkeys(("off", chosen)):
        predictor.meta.tta = mode
        logits, labels = logits_labels()
        accuracies[mode] = (
            mean_average_precision(logits.sigmoid(), labels)
            if predictor.meta.multilabel
            else round(float((logits.argmax(1) == labels).float().mean()), 6)
        )
    return accuracies


def _calibrate(predictor: Predictor, val: tuple, evaluated: tuple) -> dict[str, Any]:
    """Temperature scaling fitted on the validation logits; the calibration before and after on `evaluated`."""
    temperature = fit_temperature(*val)
    raw_logits, labels = evaluated
    before = calibration(raw_logits.softmax(1), labels)
    after = calibration((raw_logits / temperature).softmax(1), labels)
    predictor.meta.temperature = temperature
    log.info(
        "temperature %.3f fitted on the validation split: ECE %.4f -> %.4f",
        temperature,
        before["ece"],
        after["ece"],
    )
    # The report's main calibration is the one before scaling, shown against the one after.
    return {
        "temperature": temperature,
        "calibration_before": before,
        "calibration_after": after,
        "calibration": before,
        "ece": after["ece"],
    }


def evaluate_and_write(
    model: Classifier,
    loader,
    classes: list[str],
    run_dir: Path,
    split: str,
    cfg: Config,
    data: Split | None = None,
    logits_labels: tuple[torch.Tensor, torch.Tensor] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Metrics of `model` on a split (or of given logits), written as eval.json, report.md and report.html."""
    if logits_labels is None:
        amp_dtype = autocast_dtype(next(model.parameters()).device, cfg.train.amp)
        logits_labels = predict_split(
            model, loader, amp_dtype=amp_dtype, channels_last=cfg.train.channels_last
        )
    logits, labels = logits_labels
    if not len(labels):
        raise DataError(f"the {split} split has no usable images")
    result = {"split": split, "data": cfg.data.name, "model": model.meta.name}
    meta = model.meta
    if meta.multilabel:
        thresholds = meta.thresholds or [0.5] * meta.num_classes
        result |= multilabel_report(meta.probabilities(logits), labels, classes, thresholds)
    else:
        result |= evaluation_report(logits, labels, classes, meta.abstain_threshold)
    result |= extra or {}
    if not dist.is_main():
        return result
    result["meta"] = _provenance(model, cfg, run_dir)
    if data is not None:
        _add_gallery_images(result, data, split, model)
    _write_reports(result, classes, run_dir, split, f"{model.meta.name} on {cfg.data.name} ({split} split)")
    log.info("%s %s; report: %s", split, headline_text(result), run_dir / run_files.report_html(split))
    return result


def headline_text(result: dict[str, Any]) -> str:
    """The evaluation in a few words: accuracy (top-5), or for multi-label mAP and exact match."""
    if result.get("task") == "multilabel":
        return (
            f"mAP {result['map_macro']:.4f} (macro), exact match {result['exact_match']:.4f} "
            f"({result['num_samples']} images)"
        )
    top5 = f", top-5 {result['top5_accuracy']:.4f}" if "top5_accuracy" in result else ""
    return f"accuracy {result['accuracy']:.4f} ({result['num_samples']} images){top5}"


def _add_gallery_images(result: dict[str, Any], data: Split, split: str, model: Classifier) -> None:
    """Each sample the report shows (mistakes, doubts, confused pairs) gets its path, a thumbnail and, with the
    explain extra, its class-activation maps for the predicted and for the true class."""
    rows = [row for rows in result["samples"].values() for row in rows]
    for row in rows:
        row["path"] = str(data.paths[row["index"]]) if data.paths else f"{split}[{row['index']}]"
        row["thumbnail"] = thumbnail_uri(_pixels(data, row["index"], model.meta.in_chans))
    result["maps"] = _add_maps(rows, data, model) if rows else "none"


def _add_maps(rows: list[dict[str, Any]], data: Split, model: Classifier) -> str:
    """Grad-CAM overlays (JPEG thumbnails) for each row's predicted and true class; says what it did."""
    if not explain.available():
        return f"not shown: {explain.EXTRA}"
    if not model.cam_target:  # a timm model that declares no feature stages
        return f"not shown: {model.meta.name} declares no layer for class-activation maps"
    size, channels = model.meta.input_size, model.meta.in_chans
    views = torch.stack([_model_view(data, row["index"], size, channels) for row in rows])
    explainer = explain.Explainer(model)
    targets = {"cam_predicted": "predicted", "cam_true": "true"}
    if model.meta.multilabel:  # each row is an (image, label) pair: the map of that label
        targets = {"cam_predicted": "label"}
    for key, target in targets.items():
        indices = [
            model.meta.classes.index(row[target]) if model.meta.multilabel else row[target] for row in rows
        ]
        maps = explainer.maps(views, indices)
        for row, view, cam in zip(rows, views, maps):
            row[key] = thumbnail_uri(explain.overlay(view.permute(1, 2, 0).numpy(), cam, side=96), fmt="JPEG")
    return explainer.method


def _model_view(data: Split, index: int, size: int, channels: int) -> torch.Tensor:
    """One image as the model sees it: uint8 (C, size, size)."""
    if data.images is not None and data.images.shape[-1] == size:
        return data.images[index]
    try:
        image = data.images[index] if data.images is not None else open_image(data.paths[index], channels)
        return to_square(size)(image)
    except ImageDecodeError:
        return torch.zeros(channels, size, size, dtype=torch.uint8)


def _write_reports(result: dict[str, Any], classes: list[str], run_dir: Path, split: str, title: str) -> None:
    write_json(run_dir / run_files.eval_json(split), result)
    if result.get("task") == "multilabel":
        multilabel.plot_pr_curves(result, run_dir / run_files.pr_curves_png(split))
        write_text(run_dir / run_files.report_md(split), multilabel.markdown_summary(result, title, split))
        write_text(
            run_dir / run_files.report_html(split), render_report(result, _history(run_dir), run_dir, split)
        )
        return
    plot_confusion(
        result["confusion_matrix"],
        classes,
        run_dir / run_files.confusion_png(split),
        f"{split} split: confusion (row-normalized)",
    )
    write_text(run_dir / run_files.report_md(split), markdown_summary(result, title, split))
    write_text(
        run_dir / run_files.report_html(split), render_report(result, _history(run_dir), run_dir, split)
    )


def render_report(result: dict[str, Any], history: list[dict[str, float]], run_dir: Path, split: str) -> str:
    """The report page for a single-label or a multi-label evaluation (the run's confusion PNG reused)."""
    if result.get("task") == "multilabel":
        return multilabel.render_html(result, history, run_dir / run_files.CURVES)
    return render_html(result, history, run_dir / run_files.confusion_png(split), run_dir / run_files.CURVES)


def show_table(result: dict[str, Any], title: str) -> None:
    """The evaluation as a terminal table (on stderr)."""
    (multilabel.print_table if result.get("task") == "multilabel" else print_table)(result, title)


def report(run_dir: str | Path, split: str = "test") -> Path:
    """Re-renders report.html from the run's eval.json and metrics.csv (no model, no data needed).

    Example:
        >>> imgcls.report("runs/my-run")                                             # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    path = run_dir / run_files.eval_json(split)
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{run_dir} has no {path.name}; run: imgcls eval {run_dir}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is corrupt: {e}") from None
    out = run_dir / run_files.report_html(split)
    write_text(out, render_report(result, _history(run_dir), run_dir, split))
    return out


def _provenance(model: Classifier, cfg: Config, run_dir: Path) -> dict[str, Any]:
    v = versions()
    return {
        "model": model.meta.name,
        "dataset": cfg.data.name,
        "checkpoint": str(run_dir / run_files.WEIGHTS),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "imgcls": v["imgcls"],
        "torch": v["torch"],
    }


def _history(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / run_files.METRICS
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def _pixels(data: Split, index: int, channels: int) -> np.ndarray:
    """One image of a split as an (H, W, C) uint8 array, for the report's gallery."""
    if data.images is not None:
        return data.images[index].permute(1, 2, 0).numpy()
    try:
        return np.asarray(open_image(data.paths[index], channels))
    except ImageDecodeError:
        return np.zeros((8, 8), dtype=np.uint8)
