"""Classification metrics from logits and labels (scikit-learn), as plain JSON-ready numbers.

scikit-learn is imported on first use: it costs ~1.3 s, which a 20-second training budget feels.
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
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    n = len(classes)
    logits, labels = logits.float().cpu(), labels.long().cpu()
    y_true, y_pred = labels.numpy(), logits.argmax(1).numpy()
    report: dict[str, Any] = {"num_samples": int(len(labels)), "accuracy": _f(np.mean(y_true == y_pred))}
    if n >= 5:
        top5 = logits.topk(5, dim=1).indices
        report["top5_accuracy"] = _f((top5 == labels[:, None]).any(1).float().mean())
    all_classes = list(range(n))
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, labels=all_classes, zero_division=0)
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
    report["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=all_classes).tolist()
    return report


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return _f((logits.argmax(1) == labels).float().mean()) if len(labels) else 0.0


def _f(x: Any) -> float:
    return round(float(x), 6)
