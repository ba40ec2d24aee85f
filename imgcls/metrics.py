"""Classification metrics from logits and labels (torchmetrics), as plain JSON-ready numbers."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)


def classification_report(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Accuracy, top-5, macro/weighted precision/recall/F1, per-class figures and the confusion matrix.

    Example:
        >>> r = classification_report(torch.eye(3), torch.arange(3), ["a", "b", "c"])
        >>> r["accuracy"], r["per_class"]["b"]["recall"]
        (1.0, 1.0)
    """
    n = len(classes)
    logits, labels = logits.float().cpu(), labels.long().cpu()
    args = {"num_classes": n, "validate_args": False}
    preds = logits.argmax(1)
    report: dict[str, Any] = {
        "num_samples": int(len(labels)),
        "accuracy": _f(multiclass_accuracy(preds, labels, average="micro", **args)),
    }
    if n >= 5:
        report["top5_accuracy"] = _f(multiclass_accuracy(logits, labels, average="micro", top_k=5, **args))
    per_class = {}
    for avg in ("macro", "weighted", "none"):
        p = multiclass_precision(preds, labels, average=avg, **args)
        r = multiclass_recall(preds, labels, average=avg, **args)
        f = multiclass_f1_score(preds, labels, average=avg, **args)
        if avg == "none":
            support = torch.bincount(labels, minlength=n)
            for i, name in enumerate(classes):
                per_class[name] = {
                    "precision": _f(p[i]),
                    "recall": _f(r[i]),
                    "f1": _f(f[i]),
                    "support": int(support[i]),
                }
        else:
            report |= {f"precision_{avg}": _f(p), f"recall_{avg}": _f(r), f"f1_{avg}": _f(f)}
    report["per_class"] = per_class
    report["confusion_matrix"] = multiclass_confusion_matrix(preds, labels, **args).tolist()
    return report


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return _f((logits.argmax(1) == labels).float().mean()) if len(labels) else 0.0


def _f(x: torch.Tensor) -> float:
    return round(float(x), 6)
