"""Classification metrics from logits and labels (scikit-learn), as plain JSON-ready numbers.

scikit-learn is imported on first use, and only where its functions earn it (average precision, curves,
AUROC): the import costs 1.5-3 s, which a 20-second training budget feels, so the single-label report's
confusion matrix and per-class precision/recall/F1 are counted here (checked against scikit-learn).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def classification_report(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Accuracy, top-5, macro/weighted precision/recall/F1, per-class figures and the confusion matrix.

    Classes with no samples and no predictions get 0 and do not count in the macro averages.

    Example:
        >>> r = classification_report(torch.eye(3), torch.arange(3), ["a", "b", "c"])
        >>> r["accuracy"], r["per_class"]["b"]["recall"]
        (1.0, 1.0)
    """
    n = len(classes)
    logits, labels = logits.float().cpu(), labels.long().cpu()
    y_true, y_pred = labels.numpy(), logits.argmax(1).numpy()
    report: dict[str, Any] = {"num_samples": int(len(labels)), "accuracy": _f(np.mean(y_true == y_pred))}
    if n > 5:  # with 5 classes or fewer, top-5 accuracy is 1 by construction
        top5 = logits.topk(5, dim=1).indices
        report["top5_accuracy"] = _f((top5 == labels[:, None]).any(1).float().mean())
    all_classes = list(range(n))
    matrix = confusion(y_true, y_pred, n)
    p, r, f, support = precision_recall_f1(matrix)
    present = np.isin(all_classes, np.union1d(y_true, y_pred))  # classes that occur at all
    report |= {
        "precision_macro": _f(p[present].mean()),
        "recall_macro": _f(r[present].mean()),
        "f1_macro": _f(f[present].mean()),
    }
    weights = support / max(support.sum(), 1)
    report |= {
        "precision_weighted": _f((p * weights).sum()),
        "recall_weighted": _f((r * weights).sum()),
        "f1_weighted": _f((f * weights).sum()),
    }
    report["per_class"] = {
        name: {"precision": _f(p[i]), "recall": _f(r[i]), "f1": _f(f[i]), "support": int(support[i])}
        for i, name in enumerate(classes)
    }
    report["confusion_matrix"] = matrix.tolist()
    return report


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    """Counts of (true, predicted) class pairs: rows are true classes."""
    return np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)


def precision_recall_f1(matrix: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-class precision, recall, F1 and support from a confusion matrix, 0 where undefined: scikit-learn's
    precision_recall_fscore_support(zero_division=0), which a test checks this against. Computed here because
    importing scikit-learn costs 1.5-3 s, which every `imgcls train` and `eval` would pay for two divisions."""
    hits, support, predicted = np.diag(matrix).astype(float), matrix.sum(1), matrix.sum(0)
    precision = np.divide(hits, predicted, out=np.zeros(len(hits)), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros(len(hits)), where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros(len(hits)), where=total > 0)
    return precision, recall, f1, support


def bootstrap_ci(hits: torch.Tensor, samples: int = 1000, level: float = 0.95, seed: int = 0) -> list[float]:
    """A percentile bootstrap confidence interval for the mean of 0/1 `hits` (resampling the test set).

    The number of hits in a resample of n items is Binomial(n, p) with p the observed mean, so the
    bootstrap draws those counts directly: the same distribution in O(samples) memory at any n.
    """
    n = len(hits)
    if not n:
        return [0.0, 0.0]
    p = float(hits.float().mean())
    means = np.random.default_rng(seed).binomial(n, p, samples) / n
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return [_f(lo), _f(hi)]


def calibration(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> dict[str, Any]:
    """Expected calibration error (confidence vs accuracy over equal-width confidence bins) and the bins."""
    conf, pred = probs.max(1)
    hits = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    rows, ece = [], 0.0
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            acc, mean_conf, n = hits[inside].mean().item(), conf[inside].mean().item(), int(inside.sum())
            ece += n / len(labels) * abs(acc - mean_conf)
            rows.append(
                {"low": _f(lo), "high": _f(hi), "accuracy": _f(acc), "confidence": _f(mean_conf), "count": n}
            )
    return {"ece": _f(ece), "bins": rows}


def top_confusions(matrix: list[list[int]], classes: list[str], k: int = 10) -> list[dict[str, Any]]:
    """The k most frequent (true, predicted) mistakes, as pairs."""
    counts = np.asarray(matrix)
    np.fill_diagonal(counts, 0)
    order = np.argsort(counts, axis=None)[::-1][:k]
    rows = [np.unravel_index(i, counts.shape) for i in order]
    return [
        {"true": classes[t], "predicted": classes[p], "count": int(counts[t, p])}
        for t, p in rows
        if counts[t, p]
    ]


def notable_samples(
    probs: torch.Tensor, labels: torch.Tensor, k: int = 12
) -> dict[str, list[dict[str, Any]]]:
    """The k most confidently wrong predictions and the k least confident correct ones (sample indices)."""
    conf, pred = probs.max(1)
    wrong = torch.nonzero(pred != labels).flatten()
    right = torch.nonzero(pred == labels).flatten()
    worst = wrong[conf[wrong].argsort(descending=True)[:k]]
    unsure = right[conf[right].argsort()[:k]]

    def rows(idx: torch.Tensor) -> list[dict[str, Any]]:
        return [
            {
                "index": int(i),
                "true": int(labels[i]),
                "predicted": int(pred[i]),
                "probability": _f(conf[i]),
                "true_probability": _f(probs[i, labels[i]]),
            }
            for i in idx
        ]

    return {
        "confident_mistakes": rows(worst),
        "uncertain_correct": rows(unsure),
        "confused_pairs": rows(_pair_examples(pred, labels, conf)),
    }


def _pair_examples(
    pred: torch.Tensor, labels: torch.Tensor, conf: torch.Tensor, pairs: int = 5, per_pair: int = 3
):
    """The most confident examples of the most frequent (true, predicted) confusions, pair by pair."""
    wrong = torch.nonzero(pred != labels).flatten()
    codes = labels[wrong] * (int(max(labels.max(), pred.max())) + 1) + pred[wrong]
    found, counts = codes.unique(return_counts=True)
    chosen = []
    for code in found[counts.argsort(descending=True, stable=True)[:pairs]]:
        members = wrong[codes == code]
        chosen.append(members[conf[members].argsort(descending=True)[:per_pair]])
    return torch.cat(chosen) if chosen else wrong[:0]


def evaluation_report(
    logits: torch.Tensor, labels: torch.Tensor, classes: list[str], abstain_threshold: float | None = None
) -> dict[str, Any]:
    """`classification_report` plus 95% bootstrap intervals, calibration, top confusions, notable samples,
    the risk-coverage curve and, with `abstain_threshold`, what abstaining below it does."""
    logits, labels = logits.float().cpu(), labels.long().cpu()
    report = classification_report(logits, labels, classes)
    probs = logits.softmax(1)
    report["accuracy_ci"] = bootstrap_ci(logits.argmax(1) == labels)
    if "top5_accuracy" in report:
        report["top5_ci"] = bootstrap_ci((logits.topk(5, dim=1).indices == labels[:, None]).any(1))
    report["calibration"] = calibration(probs, labels)
    report["ece"] = report["calibration"]["ece"]
    report["top_confusions"] = top_confusions(report["confusion_matrix"], classes)
    report["samples"] = notable_samples(probs, labels)
    conf, hits = probs.max(1).values, logits.argmax(1) == labels
    report["risk_coverage"] = risk_coverage(conf, hits)
    if abstain_threshold is not None:
        report["abstention"] = abstention_summary(conf, hits, abstain_threshold)
    return report


def risk_coverage(conf: torch.Tensor, hits: torch.Tensor, points: int = 50) -> dict[str, Any]:
    """Answering only the most confident images: error rate (risk) against the share answered (coverage),
    thinned to about `points` points, and its area (AURC, lower is better).

    Example:
        >>> risk_coverage(torch.tensor([0.9, 0.8, 0.6]), torch.tensor([True, True, False]))["aurc"]
        0.111111
    """
    order = conf.argsort(descending=True, stable=True)
    errors = (~hits[order]).float().cumsum(0)
    n = torch.arange(1, len(order) + 1)
    risk, coverage = (errors / n).numpy(), (n / max(1, len(order))).numpy()
    keep = np.unique(np.linspace(0, len(order) - 1, min(points, len(order))).round().astype(int))
    return {
        "coverage": [_f(x) for x in coverage[keep]],
        "risk": [_f(x) for x in risk[keep]],
        "aurc": _f(risk.mean()) if len(risk) else 0.0,
    }


def abstention_threshold(
    conf: torch.Tensor, hits: torch.Tensor, precision: float | None = None, coverage: float | None = None
) -> float:
    """The confidence below which to abstain, from (validation) confidences and hits: the lowest threshold
    at which the answered images' accuracy is at least `precision` with 95% confidence (the one-sided
    Clopper-Pearson lower bound: a threshold fitted to the validation sample's luck would miss the target on
    new images about half the time), so the most images answered; the most confident image alone where
    no threshold qualifies. Or the threshold answering a `coverage` share. Halfway to the next lower
    confidence, so no image sits on the boundary.

    Example:
        >>> conf = torch.linspace(1, 0, 1000)
        >>> hits = torch.arange(1000) < 600                            # the 600 most confident are right
        >>> round(abstention_threshold(conf, hits, precision=0.99), 3)  # answers the 601 most confident
        0.399
    """
    from scipy.stats import beta

    order = conf.argsort(descending=True, stable=True)
    sorted_conf = conf[order].double()
    if coverage is not None:
        k = max(1, min(len(order), round(coverage * len(order))))
    else:
        right = hits[order].double().cumsum(0).numpy()
        answered = np.arange(1, len(order) + 1)
        lower = np.nan_to_num(beta.ppf(0.05, right, answered - right + 1))  # no hit yet: bound 0
        reached = np.flatnonzero(lower >= precision)
        k = int(reached[-1]) + 1 if len(reached) else 1
    return _boundary(float(sorted_conf[k - 1]), float(sorted_conf[k]) if k < len(order) else 0.0)


def _boundary(upper: float, lower: float) -> float:
    """Halfway between two scores, as a float32 value: a client comparing float32 probabilities (numpy,
    onnxruntime) and one comparing in double precision then decide alike."""
    return float(np.float32((float(upper) + float(lower)) / 2))


def abstention_summary(conf: torch.Tensor, hits: torch.Tensor, threshold: float) -> dict[str, Any]:
    """Coverage, the accuracy on the images answered, and how many were abstained on, at `threshold`."""
    answered = conf >= threshold
    n = int(answered.sum())
    return {
        "threshold": threshold,
        "coverage": _f(answered.float().mean()) if len(conf) else 0.0,
        "answered": n,
        "abstained": int(len(conf) - n),
        "accuracy_answered": _f(hits[answered].float().mean()) if n else None,
    }


def _f(x: Any) -> float:
    return round(float(x), 6)


# Multi-label: probabilities (N, L) from a sigmoid per label, targets (N, L) of 0/1.


def mean_average_precision(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Macro mAP: the mean over labels with at least one positive of each label's average precision."""
    from sklearn.metrics import average_precision_score

    y_true, scores = _binary(targets), probs.float().cpu().numpy()
    present = y_true.any(0)
    if not present.any():
        return float("nan")
    return _f(average_precision_score(y_true[:, present], scores[:, present], average="macro"))


def tune_thresholds(
    probs: torch.Tensor, targets: torch.Tensor, precision: float | None = None
) -> list[float]:
    """A threshold per label from (validation) probabilities: the one with the best F1, or with `precision`,
    the lowest one whose precision reaches it (the most recall at that precision; the highest-precision
    threshold where none does). A label with no positive here keeps 0.5.

    Example:
        >>> tune_thresholds(torch.tensor([[0.9], [0.6], [0.2]]), torch.tensor([[1.0], [1.0], [0.0]]))
        [0.4000000059604645]
    """
    from sklearn.metrics import precision_recall_curve

    y_true, scores = _binary(targets), probs.float().cpu().numpy()
    thresholds = []
    for j in range(y_true.shape[1]):
        if not y_true[:, j].any():
            thresholds.append(0.5)
            continue
        p, r, t = precision_recall_curve(y_true[:, j], scores[:, j])
        p, r = p[:-1], r[:-1]  # the last point (recall 0) has no threshold
        if precision is None:
            best = int(np.argmax(2 * p * r / np.maximum(p + r, 1e-12)))
        else:
            reached = np.flatnonzero(p >= precision)
            best = int(reached[0]) if len(reached) else int(np.argmax(p))
        # Halfway down to the next lower score: no image sits on the boundary, where float noise (another
        # runtime, another batch size) could flip its decision.
        below = scores[:, j][scores[:, j] < t[best]]
        thresholds.append(_boundary(t[best], below.max() if len(below) else 0.0))
    return thresholds


def multilabel_report(
    probs: torch.Tensor, targets: torch.Tensor, classes: list[str], thresholds: list[float]
) -> dict[str, Any]:
    """mAP (macro, micro), exact match, Hamming loss, micro/macro P/R/F1, per-label P/R/F1/AP/support at
    the given thresholds, precision-recall curves, label co-occurrence and the most frequent mistakes.

    Example:
        >>> r = multilabel_report(torch.tensor([[0.9, 0.2]]), torch.tensor([[1.0, 0.0]]), ["a", "b"], [0.5, 0.5])
        >>> r["exact_match"], r["per_label"]["a"]["f1"]
        (1.0, 1.0)
    """
    from sklearn.metrics import average_precision_score, hamming_loss, precision_recall_fscore_support

    y_true, scores = _binary(targets), probs.float().cpu().numpy()
    y_pred = scores >= np.asarray(thresholds)[None, :]
    present = y_true.any(0)
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    ap = [
        _f(average_precision_score(y_true[:, j], scores[:, j])) if present[j] else None
        for j in range(len(classes))
    ]
    report: dict[str, Any] = {"task": "multilabel", "num_samples": int(len(y_true))}
    report["map_macro"] = mean_average_precision(probs, targets)
    report["map_micro"] = (
        _f(average_precision_score(y_true, scores, average="micro")) if present.any() else None
    )
    report["exact_match"] = _f((y_pred == y_true).all(1).mean())
    report["hamming_loss"] = _f(hamming_loss(y_true, y_pred))
    for avg in ("micro", "macro"):
        mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, average=avg, zero_division=0)
        report |= {f"precision_{avg}": _f(mp), f"recall_{avg}": _f(mr), f"f1_{avg}": _f(mf)}
    report["per_label"] = {
        name: {
            "precision": _f(p[j]),
            "recall": _f(r[j]),
            "f1": _f(f[j]),
            "ap": ap[j],
            "support": int(support[j]),
            "threshold": float(thresholds[j]),
        }
        for j, name in enumerate(classes)
    }
    report["no_label"] = int((~y_true.any(1)).sum())
    report["pr_curves"] = _pr_curves(y_true, scores, classes)
    report["cooccurrence"] = (y_true.T.astype(np.int64) @ y_true.astype(np.int64)).tolist()
    report["samples"], report["frequent_mistakes"] = _label_mistakes(y_true, y_pred, scores, classes)
    return report


def _binary(targets: torch.Tensor) -> np.ndarray:
    return targets.float().cpu().numpy() > 0.5


def _pr_curves(y_true: np.ndarray, scores: np.ndarray, classes: list[str], points: int = 50) -> dict:
    """Each label's precision-recall curve, thinned to about `points` points (for the report's plot)."""
    from sklearn.metrics import precision_recall_curve

    curves = {}
    for j, name in enumerate(classes):
        if y_true[:, j].any():
            p, r, _ = precision_recall_curve(y_true[:, j], scores[:, j])
            keep = np.unique(np.linspace(0, len(p) - 1, min(points, len(p))).round().astype(int))
            curves[name] = {"precision": [_f(x) for x in p[keep]], "recall": [_f(x) for x in r[keep]]}
    return curves


def _label_mistakes(
    y_true: np.ndarray, y_pred: np.ndarray, scores: np.ndarray, classes: list[str], k: int = 12
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
    """The k most confident false positives and the k least confident false negatives, over all labels,
    each an (image, label) pair; and the labels with the most of each kind, with their counts."""
    rows, frequent = {}, {}
    for kind, wrong, order in (
        ("false_positives", y_pred & ~y_true, -scores),
        ("false_negatives", ~y_pred & y_true, scores),
    ):
        i, j = np.nonzero(wrong)
        chosen = np.argsort(order[i, j], kind="stable")[:k]
        rows[kind] = [
            {
                "index": int(i[c]),
                "label": classes[j[c]],
                "probability": _f(scores[i[c], j[c]]),
                "true": [classes[t] for t in np.flatnonzero(y_true[i[c]])],
                "predicted": [classes[t] for t in np.flatnonzero(y_pred[i[c]])],
            }
            for c in chosen
        ]
        counts = wrong.sum(0)
        frequent[kind] = [
            {"label": classes[j], "count": int(counts[j])}
            for j in np.argsort(-counts, kind="stable")
            if counts[j]
        ][:10]
    return rows, frequent
