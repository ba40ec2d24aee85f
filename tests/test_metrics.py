import pytest
import torch
from sklearn.metrics import precision_recall_fscore_support

from imgcls.metrics import classification_report


def test_report_matches_scikit_learn():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 6, (300,), generator=g)
    logits = torch.randn(300, 6, generator=g) + 2.0 * torch.nn.functional.one_hot(labels, 6)
    classes = [f"c{i}" for i in range(6)]
    r = classification_report(logits, labels, classes)
    preds = logits.argmax(1)
    p, rc, f, s = precision_recall_fscore_support(labels, preds, zero_division=0)
    assert r["accuracy"] == pytest.approx((preds == labels).float().mean().item(), abs=1e-6)
    assert r["precision_macro"] == pytest.approx(p.mean(), abs=1e-5)
    assert r["recall_macro"] == pytest.approx(rc.mean(), abs=1e-5)
    assert r["f1_macro"] == pytest.approx(f.mean(), abs=1e-5)
    for i, name in enumerate(classes):
        assert r["per_class"][name]["recall"] == pytest.approx(rc[i], abs=1e-5)
        assert r["per_class"][name]["support"] == s[i]
    top5 = (logits.topk(5, 1).indices == labels[:, None]).any(1).float().mean().item()
    assert r["top5_accuracy"] == pytest.approx(top5, abs=1e-6)
    assert sum(map(sum, r["confusion_matrix"])) == 300 and r["num_samples"] == 300


def test_no_top5_below_five_classes():
    r = classification_report(torch.eye(3), torch.arange(3), ["a", "b", "c"])
    assert "top5_accuracy" not in r and r["accuracy"] == 1.0
