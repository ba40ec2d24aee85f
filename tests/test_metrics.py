"""Metrics against hand-worked examples (not against the library that computes them)."""

import numpy as np
import pytest
import torch

from imgcls.metrics import bootstrap_ci, calibration, classification_report

# Six samples, five classes: "d" is predicted once but never true, "e" occurs nowhere.
Y_TRUE = torch.tensor([0, 0, 0, 1, 1, 2])
Y_PRED = torch.tensor([0, 0, 1, 1, 3, 2])
CLASSES = ["a", "b", "c", "d", "e"]


def one_hot_logits(pred: torch.Tensor, n: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(pred, n).float() * 5


def test_worked_example_per_class_and_averages():
    r = classification_report(one_hot_logits(Y_PRED, 5), Y_TRUE, CLASSES)
    assert r["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    # a: TP 2, FP 0, FN 1; b: TP 1, FP 1, FN 1; c: TP 1; d: FP 1, support 0; e: absent.
    expected = {
        "a": (1.0, 2 / 3, 0.8, 3),
        "b": (0.5, 0.5, 0.5, 2),
        "c": (1.0, 1.0, 1.0, 1),
        "d": (0.0, 0.0, 0.0, 0),
        "e": (0.0, 0.0, 0.0, 0),
    }
    for name, (p, rc, f1, support) in expected.items():
        row = r["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p, rc, f1), abs=1e-6), name
        assert row["support"] == support
    # Macro over the classes that occur at all (a-d, not e): a class only predicted still counts.
    assert r["precision_macro"] == pytest.approx((1 + 0.5 + 1 + 0) / 4, abs=1e-6)
    assert r["recall_macro"] == pytest.approx((2 / 3 + 0.5 + 1 + 0) / 4, abs=1e-6)
    assert r["f1_macro"] == pytest.approx((0.8 + 0.5 + 1 + 0) / 4, abs=1e-6)
    # Weighted by support 3, 2, 1, 0, 0.
    assert r["precision_weighted"] == pytest.approx((3 * 1 + 2 * 0.5 + 1) / 6, abs=1e-6)
    assert r["recall_weighted"] == pytest.approx((3 * 2 / 3 + 2 * 0.5 + 1) / 6, abs=1e-6)
    assert r["f1_weighted"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1) / 6, abs=1e-6)
    assert r["confusion_matrix"] == [[2, 1, 0, 0, 0], [0, 1, 0, 1, 0], [0, 0, 1, 0, 0], [0] * 5, [0] * 5]


def test_top5_only_above_five_classes():
    assert "top5_accuracy" not in classification_report(one_hot_logits(Y_PRED, 5), Y_TRUE, CLASSES)
    # Six classes; the true class ranks 6th in the first row (a top-5 miss) and 5th in the second (a hit).
    logits = torch.tensor([[5.0, 4, 3, 2, 1, 0], [5.0, 4, 3, 2, 1, 0]])
    r = classification_report(logits, torch.tensor([5, 4]), list("abcdef"))
    assert r["top5_accuracy"] == 0.5 and r["accuracy"] == 0.0


def test_bootstrap_interval_matches_the_binomial_spread():
    hits = torch.zeros(10_000)
    hits[:9_000] = 1
    lo, hi = bootstrap_ci(hits)
    half = 1.96 * (0.9 * 0.1 / 10_000) ** 0.5  # normal approximation, 0.00588
    assert lo == pytest.approx(0.9 - half, abs=0.0015) and hi == pytest.approx(0.9 + half, abs=0.0015)
    assert bootstrap_ci(torch.ones(50)) == [1.0, 1.0]


def test_bootstrap_at_a_million_images_allocates_no_resample_matrix():
    import tracemalloc

    hits = torch.ones(1_000_000, dtype=torch.bool)
    hits[::10] = False
    tracemalloc.start()
    lo, hi = bootstrap_ci(hits)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert lo < 0.9 < hi and hi - lo < 0.002
    assert peak < 5_000_000  # numpy allocations are traced; 1000 x 1M resample indices would be 8 GB


def test_calibration_worked_example():
    # Two confident right answers (0.9) and two confident wrong ones (0.9): ECE = |0.5 - 0.9| = 0.4.
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.9, 0.1]])
    ece = calibration(probs, torch.tensor([0, 0, 1, 1]))["ece"]
    assert ece == pytest.approx(0.4, abs=1e-6)


def test_precision_recall_f1_and_confusion_equal_scikit_learns():
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from imgcls.metrics import confusion, precision_recall_f1

    rng = np.random.default_rng(0)
    for n, size in ((2, 30), (7, 500), (12, 40)):  # 12 classes in 40 images: some never true or predicted
        y_true, y_pred = rng.integers(0, n, size), rng.integers(0, n, size)
        y_pred[: size // 2] = y_true[: size // 2]
        matrix = confusion(y_true, y_pred, n)
        assert (matrix == confusion_matrix(y_true, y_pred, labels=list(range(n)))).all()
        ours = precision_recall_f1(matrix)
        theirs = precision_recall_fscore_support(y_true, y_pred, labels=list(range(n)), zero_division=0)
        for a, b in zip(ours, theirs):
            assert np.allclose(a, b)
