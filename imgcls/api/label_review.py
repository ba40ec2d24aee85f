"""`imgcls.review_labels` (`imgcls data labels`): the images whose label is likely wrong, by confident
learning on out-of-fold probabilities, after the data doctor's label conflicts and before the outliers
of each class, as review.csv and a review page. The user's files are only read."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgcls.api.planning import estimate_eval_seconds, make_config, plan_run
from imgcls.api.runs import stem
from imgcls.api.training import fastest_threads_for, loader_settings, new_model, setup
from imgcls.config import Config, ConfigError, parse_duration
from imgcls.data.datasets import data_root, open_dataset
from imgcls.data.decode import ImageDecodeError, open_image
from imgcls.data.doctor.checks import SPLITS, duplicate_groups, label_images, split_facts
from imgcls.data.doctor.findings import duplicate_pairs, label_conflicts
from imgcls.data.doctor.label_errors import SCORES, LabelIssues, find_label_issues
from imgcls.data.loader import build_loader, channel_stats, prepare
from imgcls.data.types import DataBundle, DataError, Split
from imgcls.engine.crossfit import CrossFit, cross_fit, probe_cross_fit, stratified_folds
from imgcls.engine.evaluate import predict_features
from imgcls.models import Classifier
from imgcls.reporting.label_review import render_label_review
from imgcls.utils import dist, run_files
from imgcls.utils.env import process_age
from imgcls.utils.io import atomic_write, new_run_dir, write_json, write_text

log = logging.getLogger("imgcls")
REVIEW_CSV, SUMMARY_JSON, PAGE, PROBABILITIES = (
    "review.csv",
    "labels.json",
    "review.html",
    "probabilities.npz",
)
COLUMNS = ("rank", "path", "split", "issue", "given", "suggested", "score", "note", "action")
OUTLIER_Z = 6.0  # robust z-score of the distance to its class's centre from which an image is an outlier...
OUTLIER_SHARE = 0.005  # ...among the most distant 0.5% of its class
NEIGHBOURS = 3
FOLD_EPOCHS = 2  # each fold's epochs unless set (more for a small dataset: the planner's minimum steps)
FINISH_SECONDS = 6.0
LARGE_IMAGES = 96  # pixels: from this side on, the log suggests a pretrained backbone's features  # ranking, the page and the files after the last fold


@dataclass
class Pool:
    """Every image of the data, whatever split it is in, as one split (decoded in RAM where it fits)."""

    split: Split
    names: list[str]  # absolute file paths, or train[3] for in-memory datasets
    origin: list[str]  # the split each image came from


def review_labels(
    data: str,
    *,
    out: str | Path | None = None,
    folds: int = 5,
    time_budget: str | None = None,
    rank_by: str = "self-confidence",
    config: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    count_startup: bool = False,
) -> dict[str, Any]:
    """Ranks the images of `data` whose label is likely wrong; writes OUT/review.csv, review.html,
    labels.json and probabilities.npz (the out-of-fold probabilities) and returns the summary.

    Each image's probabilities come from a model trained on the other folds (`folds`, stratified, copies
    of one picture kept in one fold) with the planned recipe, or a linear head on a pretrained backbone's
    features (`model.pretrained` / `model.weights`). `time_budget` covers the whole command.

    Example:
        >>> imgcls.review_labels("my_folder")["issues"]                              # doctest: +SKIP
        {'conflict': 2, 'label': 41, 'outlier': 5}
    """
    start = time.perf_counter() - (process_age() if count_startup else 0.0)
    if folds < 2:
        raise ConfigError(f"--folds {folds}: cross-fitting needs at least 2 folds")
    SCORES.get(rank_by)  # an unknown ranking fails now, not after training
    if dist.world_size() > 1:
        raise ConfigError("imgcls data labels runs in one process (not under torchrun)")
    splits = {"data.val_split": 0.0, "data.test_split": 0.0}  # every image is reviewed: none is carved off
    cfg = make_config(config, {**(overrides or {}), **splits}, data=data, time=time_budget)
    device = setup(cfg)
    bundle = open_dataset(cfg.data)
    if bundle.multilabel:
        raise DataError("imgcls data labels reviews single-label data; this manifest lists label sets")
    end = start + parse_duration(cfg.train.time) if cfg.train.time else None  # the command's budget
    cfg = plan_run(_per_fold(cfg, folds), replace(bundle, train=_merged(bundle)), FOLD_EPOCHS)
    _suggest_features(cfg)
    pool, stats = _pool(bundle, cfg)
    labels = pool.split.labels.numpy()
    if len(labels) < 2 * folds:
        raise DataError(f"{len(labels)} images are too few to cross-fit in {folds} folds (--folds)")
    groups, conflicts = _duplicates(pool, bundle.classes)
    fold_of = stratified_folds(labels, groups, folds, cfg.train.seed)
    fitted, method = _out_of_fold(cfg, pool, bundle, stats, fold_of, device, end)
    issues = find_label_issues(labels, fitted.probs, rank_by)
    far = outliers(fitted.embeddings, labels)
    rows = review_rows(pool, bundle.classes, issues, fitted.probs, conflicts, far)
    out_dir = Path(out) if out else new_run_dir("runs", f"labels-{stem(data)}")
    summary = {
        "data": _data_name(data),
        "images": len(labels),
        "classes": bundle.classes,
        "folds": folds,
        "method": method,
        "rank_by": rank_by,
        "oof_agreement": round(float((fitted.probs.argmax(1) == labels).mean()), 4),
        "fold_agreement": [round(a, 4) for a in fitted.fold_accuracy],
        "estimated_noise_rate": round(issues.noise_rate(), 4),
        "confident_joint": issues.confident_joint.tolist(),
        "thresholds": [round(float(t), 4) for t in issues.thresholds],
        "issues": {kind: sum(r["issue"] == kind for r in rows) for kind in ("conflict", "label", "outlier")},
        "review": str(out_dir / REVIEW_CSV),
        "page": str(out_dir / PAGE),
    }
    _write(out_dir, summary, rows, pool, fitted, start)
    _log_result(summary)
    return summary


def _suggest_features(cfg: Config) -> None:
    if cfg.train.recipe != "finetune" and cfg.data.image_size >= LARGE_IMAGES:
        log.info(
            "%dpx images: a model trained from scratch per fold is slow; --pretrained (or --weights) reviews "
            "with a linear head on the backbone's features, computed once",
            cfg.data.image_size,
        )


def _log_result(summary: dict[str, Any]) -> None:
    issues = summary["issues"]
    log.info(
        "%s: %d images to review (%s); estimated wrong labels %.2f%%; page %s; then: imgcls data apply %s --out fixed.csv",
        summary["review"],
        sum(issues.values()),
        ", ".join(f"{n} {kind}" for kind, n in issues.items()),
        100 * summary["estimated_noise_rate"],
        summary["page"],
        summary["review"],
    )


def _per_fold(cfg: Config, folds: int) -> Config:
    """A command's time budget planned as each fold's share (a short budget: the short recipe); the folds
    then share out what is left of the command's own budget as they go."""
    if cfg.train.time is None:
        return cfg
    return cfg.replace({"train.time": f"{parse_duration(cfg.train.time) / folds:.3g}s"})


def _data_name(data: str) -> str:
    """The data as `data apply` will open it from anywhere: a path made absolute, else the name."""
    path = Path(data).expanduser()
    return os.path.abspath(path) if path.exists() else data


def pooled_names(bundle: DataBundle) -> tuple[list[str], list[int], list[str]]:
    """Every image of every split, in order: its name (an absolute file path, or train[3] for an
    in-memory dataset), label and split."""
    names, labels, origin = [], [], []
    for name in SPLITS:
        split = getattr(bundle, name)
        if split is None:
            continue
        if split.paths is not None:
            names += [os.path.abspath(p) if isinstance(p, Path) else str(p) for p in split.paths]
        else:
            names += [f"{name}[{i}]" for i in range(len(split))]
        labels += split.labels.tolist()
        origin += [name] * len(split)
    return names, labels, origin


def _merged(bundle: DataBundle) -> Split:
    """The data's splits as one (not decoded)."""
    return Split.join([s for n in SPLITS if (s := getattr(bundle, n)) is not None])


def _pool(bundle: DataBundle, cfg: Config) -> tuple[Pool, tuple]:
    """Every split of the data in one, decoded as training decodes it; files that do not decode are
    skipped (and named) as in training."""
    names, _, origin = pooled_names(bundle)
    merged = _merged(bundle)
    size, channels = cfg.data.image_size, cfg.data.channels
    prepared = prepare(replace(bundle, train=merged, val=None, test=None), cfg.data, size, channels).train
    if merged.paths is not None and len(prepared) < len(merged):
        where = {p: i for i, p in enumerate(merged.paths)}
        kept = [where[p] for p in prepared.paths or []]
        names, origin = [names[i] for i in kept], [origin[i] for i in kept]
    return Pool(prepared, names, origin), channel_stats(merged, prepared, size, channels)


def _duplicates(pool: Pool, classes: list[str]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Duplicate groups (kept in one fold) and the pairs of one picture under two labels, as indices."""
    facts = split_facts(pool.split)
    for fact, name, origin in zip(facts, pool.names, pool.origin):
        fact.path, fact.split = name, origin
    label_images(facts, {"all": pool.split}, classes)
    exact, close = duplicate_pairs(facts, near=True)
    groups, _ = duplicate_groups(pool.split, facts, close)
    index = {id(f): i for i, f in enumerate(facts)}
    return groups, [(index[id(a)], index[id(b)]) for a, b in label_conflicts(exact, close)]


def _out_of_fold(
    cfg: Config,
    pool: Pool,
    bundle: DataBundle,
    stats: tuple,
    fold_of: np.ndarray,
    device: torch.device,
    end: float | None,
) -> tuple[CrossFit, str]:
    """Cross-fitting with the planned recipe (within the command's budget, which runs out at `end`, a
    perf_counter time); from a pretrained backbone, a linear head on its features."""

    def make_model() -> Classifier:
        model = new_model(cfg, bundle.classes, stats).to(device)
        return model.to(memory_format=torch.channels_last) if cfg.train.channels_last else model

    settings = loader_settings(cfg, bundle, device)
    labels = pool.split.labels.numpy()
    if cfg.train.recipe == "finetune":
        features = cached_features(cfg, make_model(), pool, settings)
        fitted = probe_cross_fit(features, labels, fold_of, len(bundle.classes))
        return fitted, f"a linear head on {cfg.model.name} features"
    fastest_threads_for(cfg, device, make_model())
    deadline = None
    if end is not None:  # the command's budget, less the held-out predictions and the files
        deadline = end - estimate_eval_seconds(make_model(), 2 * len(labels), cfg) - FINISH_SECONDS
    fitted = cross_fit(cfg, pool.split, fold_of, len(bundle.classes), make_model, settings, deadline)
    return fitted, f"{cfg.model.name} trained per fold"


def cached_features(cfg: Config, model: Classifier, pool: Pool, settings: dict[str, Any]) -> np.ndarray:
    """The backbone's pooled features of every image, computed once per model and image content:
    DATA_ROOT/cache/features/<model key>.npz maps each image's hash to its features."""
    digests = [_digest(pool, i).encode() for i in range(len(pool.split))]
    path = data_root() / "cache" / "features" / f"{_model_key(cfg)}.npz"
    known: dict[bytes, np.ndarray] = {}
    if path.is_file():
        with np.load(path, allow_pickle=False) as stored:
            known = dict(zip(stored["keys"].tolist(), stored["features"]))
    missing = [i for i, d in enumerate(digests) if d not in known]
    log.info("backbone features: %d images (%d from the cache)", len(missing), len(digests) - len(missing))
    if missing:
        loader = build_loader(pool.split.subset(missing), cfg.data, train=False, **settings)
        for i, row in zip(missing, predict_features(model, loader).numpy()):
            known[digests[i]] = row
        keys = list(known)
        write_arrays(path, keys=np.array(keys, dtype="S32"), features=np.stack([known[k] for k in keys]))
    return np.stack([known[d] for d in digests])


def _digest(pool: Pool, i: int) -> str:
    """An image's content hash: its decoded pixels where in RAM, else its file's bytes."""
    split = pool.split
    data = split.images[i].numpy().tobytes() if split.images is not None else split.paths[i].read_bytes()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _model_key(cfg: Config) -> str:
    weights = Path(cfg.model.weights) if cfg.model.weights else None
    if weights is not None and weights.is_dir():  # an imgcls run folder
        weights = weights / run_files.WEIGHTS
    weights_hash = hashlib.blake2b(weights.read_bytes(), digest_size=16).hexdigest() if weights else ""
    what = (cfg.model.name, cfg.model.pretrained, weights_hash, cfg.data.image_size, cfg.data.channels)
    return hashlib.blake2b(repr(what).encode(), digest_size=12).hexdigest()


def outliers(embeddings: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    """Images far from their class's centre: the robust z-score (median, MAD) of their cosine distance
    to it, within their class, at least OUTLIER_Z."""
    found = {}
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        centre = embeddings[members].mean(0)
        distance = 1 - embeddings[members] @ (centre / max(np.linalg.norm(centre), 1e-12))
        median = np.median(distance)
        spread = 1.4826 * np.median(np.abs(distance - median))
        if spread <= 0:
            continue
        z = (distance - median) / spread
        extreme = np.argsort(-z, kind="stable")[: int(OUTLIER_SHARE * len(members))]
        found |= {int(members[j]): float(z[j]) for j in extreme if z[j] >= OUTLIER_Z}
    return dict(sorted(found.items(), key=lambda item: -item[1]))


def review_rows(
    pool: Pool,
    classes: list[str],
    issues: LabelIssues,
    probs: np.ndarray,
    conflicts: list[tuple[int, int]],
    far: dict[int, float],
) -> list[dict[str, Any]]:
    """The review queue: conflicts, then likely label errors (most likely first), then outliers; each
    image once."""
    labels = pool.split.labels.tolist()
    rows: dict[int, dict[str, Any]] = {}

    def add(i: int, issue: str, suggested: str, note: str) -> None:
        if i not in rows:
            given = classes[labels[i]]
            rows[i] = {"index": i, "issue": issue, "given": given, "suggested": suggested, "note": note}

    score = issues.score
    for a, b in sorted(conflicts, key=lambda pair: min(score[pair[0]], score[pair[1]])):
        for i, other in sorted(((a, b), (b, a)), key=lambda pair: score[pair[0]]):  # the likelier wrong first
            add(i, "conflict", classes[labels[other]], f"the same picture as {pool.names[other]}")
    for i in issues.ranked().tolist():
        best = issues.suggested[i]
        note = f"p({classes[labels[i]]}) {probs[i, labels[i]]:.3f}, p({classes[best]}) {probs[i, best]:.3f}"
        add(i, "label", classes[best], note)
    for i, z in far.items():
        add(i, "outlier", classes[issues.suggested[i]], f"far from its class (robust z {z:.1f})")
    ordered = list(rows.values())
    for rank, row in enumerate(ordered, 1):
        i = row["index"]
        row |= {"rank": rank, "path": pool.names[i], "split": pool.origin[i], "score": float(issues.score[i])}
        row["action"] = ""
    return ordered


def _write(
    out: Path, summary: dict[str, Any], rows: list[dict[str, Any]], pool: Pool, fitted: CrossFit, start: float
) -> None:
    """review.csv, probabilities.npz, review.html, and labels.json last (with the time taken)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({**row, "score": f"{row['score']:.4f}"} for row in rows)
    write_text(out / REVIEW_CSV, buffer.getvalue())
    labels = pool.split.labels.numpy()
    arrays = {"names": np.array(pool.names), "labels": labels, "probs": fitted.probs}
    write_arrays(out / PROBABILITIES, **arrays)
    index = {c: i for i, c in enumerate(summary["classes"])}

    def neighbours(i: int, label: str) -> list[int]:
        return nearest(fitted.embeddings, labels, i, index[label])

    summary["seconds"] = round(time.perf_counter() - start, 1)
    write_text(out / PAGE, render_label_review(summary, rows, neighbours, lambda i: _pixels(pool, i)))
    write_json(out / SUMMARY_JSON, summary)


def write_arrays(path: Path, **arrays: np.ndarray) -> None:
    """An .npz file, written atomically (numpy would add .npz to a temporary file's name: a file object)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    atomic_write(path, write)


def nearest(embeddings: np.ndarray, labels: np.ndarray, i: int, label: int) -> list[int]:
    """The NEIGHBOURS images filed under `label` most similar to image i (cosine), i itself aside."""
    members = np.flatnonzero(labels == label)
    members = members[members != i]
    similarity = embeddings[members] @ embeddings[i]
    return members[np.argsort(-similarity, kind="stable")[:NEIGHBOURS]].tolist()


def _pixels(pool: Pool, i: int) -> np.ndarray:
    """Image i as (H, W, C) uint8: from RAM, else decoded from its file (a grey square if it no longer
    decodes)."""
    split = pool.split
    if split.images is not None:
        return split.images[i].permute(1, 2, 0).numpy()
    try:
        return np.asarray(open_image(split.paths[i], 3))
    except ImageDecodeError:
        return np.full((8, 8, 3), 128, dtype=np.uint8)
