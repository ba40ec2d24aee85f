"""How a trained model decides, chosen on the validation split after training: multi-label thresholds, and
when to answer "I don't know" (abstention); and how well confidence tells unknown images apart."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgcls.config import Config, ConfigError, DataConfig, parse_abstain
from imgcls.data.datasets import open_dataset
from imgcls.data.types import DataBundle, DataError, Split
from imgcls.engine.calibrate import fit_temperature
from imgcls.engine.evaluate import predict_split
from imgcls.inference.inputs import expand_paths
from imgcls.metrics import abstention_summary, abstention_threshold, tune_thresholds
from imgcls.models import Classifier, ModelMeta
from imgcls.models.checkpoint import update_meta
from imgcls.utils import dist
from imgcls.utils.env import autocast_dtype

log = logging.getLogger("imgcls")


def check(cfg: Config, bundle: DataBundle) -> None:
    """Before training: what `tune` will need (refused now, not after the run)."""
    if cfg.train.abstain is None:
        return
    if bundle.multilabel:
        raise ConfigError(
            "train.abstain is for single-label data; a multi-label model's thresholds decide each label"
        )
    if bundle.val is None:
        raise ConfigError("train.abstain chooses its threshold on a validation split: set data.val_split > 0")


def tune(cfg: Config, model: Classifier, val_loader) -> None:
    """After training, on the best checkpoint (loaded into `model`): a multi-label model's thresholds, or with
    train.abstain the temperature and the abstention threshold; kept in model.json."""
    if model.meta.multilabel:
        _thresholds(cfg, model, val_loader)
    elif cfg.train.abstain is not None:
        _abstention(cfg, model, val_loader)


def _thresholds(cfg: Config, model: Classifier, val_loader) -> None:
    """Multi-label: each label's threshold from the best checkpoint's validation probabilities (best F1, or
    train.threshold_precision), kept in model.json for eval, predict, serve and export."""
    if val_loader is None:
        log.warning("no validation split to tune the labels' thresholds on: each label's threshold is 0.5")
        thresholds = [0.5] * model.meta.num_classes
    else:
        amp_dtype = autocast_dtype(next(model.parameters()).device, cfg.train.amp)
        logits, labels = predict_split(
            model, val_loader, amp_dtype=amp_dtype, channels_last=cfg.train.channels_last
        )
        thresholds = tune_thresholds(logits.sigmoid(), labels, cfg.train.threshold_precision)
        goal = f"precision {cfg.train.threshold_precision}" if cfg.train.threshold_precision else "best F1"
        shown = ", ".join(f"{c} {t:.3f}" for c, t in zip(model.meta.classes[:12], thresholds))
        log.info("label thresholds (%s on %d validation images): %s", goal, len(labels), shown)
    model.meta.thresholds = thresholds
    if dist.is_main():
        update_meta(cfg.out, {"thresholds": thresholds})


def _abstention(cfg: Config, model: Classifier, val_loader) -> None:
    """train.abstain: temperature scaling fitted on the best checkpoint's validation logits, then the
    confidence below which it answers "I don't know", both kept in model.json."""
    amp_dtype = autocast_dtype(next(model.parameters()).device, cfg.train.amp)
    logits, labels = predict_split(
        model, val_loader, amp_dtype=amp_dtype, channels_last=cfg.train.channels_last
    )
    model.meta.temperature = fit_temperature(logits, labels)
    choose_abstention(model.meta, logits / model.meta.temperature, labels, cfg.train.abstain)
    if dist.is_main():
        update_meta(
            cfg.out, {k: getattr(model.meta, k) for k in ("temperature", "abstain_threshold", "abstain_rule")}
        )


def choose_abstention(meta: ModelMeta, logits: torch.Tensor, labels: torch.Tensor, rule: str) -> None:
    """Sets `meta`'s abstention threshold from calibrated validation logits, for a target precision (the
    accuracy of the images answered) or coverage (the share answered); logs what it gives on validation."""
    kind, target = parse_abstain(rule)
    conf, hits = logits.softmax(1).max(1).values, logits.argmax(1) == labels
    if not len(labels):
        raise DataError("abstention needs a validation split to choose its threshold on")
    threshold = abstention_threshold(conf, hits, **{kind: target})
    meta.abstain_threshold, meta.abstain_rule = threshold, f"{kind} {target:g} on the validation split"
    got = abstention_summary(conf, hits, threshold)
    log.info(
        "abstention (%s): threshold %.4f answers %.1f%% of the validation images at accuracy %.4f",
        meta.abstain_rule,
        threshold,
        100 * got["coverage"],
        got["accuracy_answered"] or 0.0,
    )


def out_of_distribution(
    meta: ModelMeta, data: str, in_logits: torch.Tensor, logits_of: Callable[[Split], torch.Tensor]
) -> dict[str, Any]:
    """How well the confidence tells the evaluated images (`in_logits`) from `data`, images of none of the
    classes: the AUROC, and with abstention, the share of each that the model declines."""
    from sklearn.metrics import roc_auc_score

    out_logits = logits_of(_ood_split(data))
    if not len(out_logits):
        raise DataError(f"--ood {data}: no readable images there")
    conf_in, conf_out = in_logits.softmax(1).max(1).values, out_logits.softmax(1).max(1).values
    scores = torch.cat([conf_in, conf_out]).numpy()
    truth = np.r_[np.ones(len(conf_in)), np.zeros(len(conf_out))]
    result = {"data": data, "images": len(conf_out), "auroc": round(float(roc_auc_score(truth, scores)), 6)}
    if meta.abstain_threshold is not None:
        result["abstained_ood"] = round(float((conf_out < meta.abstain_threshold).float().mean()), 6)
        result["abstained_in"] = round(float((conf_in < meta.abstain_threshold).float().mean()), 6)
    log.info("out-of-distribution %s (%d images): AUROC %.4f", data, len(conf_out), result["auroc"])
    return result


def _ood_split(data: str) -> Split:
    """Every image of a folder (recursively), manifest or dataset, labels ignored, as one split."""
    if Path(data).is_dir():
        files, _ = expand_paths([data])
        return Split(torch.zeros(len(files), dtype=torch.long), paths=files)
    bundle = open_dataset(DataConfig(name=data, val_split=0, test_split=0))
    parts = [s for s in (bundle.train, bundle.val, bundle.test) if s is not None]
    if all(p.images is not None for p in parts):
        return Split(
            torch.zeros(sum(map(len, parts)), dtype=torch.long), torch.cat([p.images for p in parts])
        )
    paths = [p for part in parts for p in part.paths or []]
    return Split(torch.zeros(len(paths), dtype=torch.long), paths=paths)
