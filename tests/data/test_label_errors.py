"""Confident learning, checked against the paper's definitions worked by hand and against its reference
implementation (cleanlab, installed by the dev extra only: AGPL-3.0, never imported by imgcls)."""

from __future__ import annotations

import numpy as np
import pytest

from imgcls.data.doctor.label_errors import (
    calibrate,
    confident_joint,
    confident_thresholds,
    find_label_issues,
    round_keeping_row_totals,
)
from imgcls.registry import RegistryError

# Six images, two classes. Given labels 0,0,0,1,1,1; image 2 looks like class 1, image 5 like class 0.
LABELS = np.array([0, 0, 0, 1, 1, 1])
PROBS = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.1, 0.9], [0.3, 0.7], [0.6, 0.4]])


def test_the_papers_definitions_worked_by_hand():
    # t_j: mean p_j over the images labelled j: t_0 = (.9+.8+.2)/3, t_1 = (.9+.7+.4)/3.
    assert confident_thresholds(LABELS, PROBS) == pytest.approx([1.9 / 3, 2.0 / 3])
    # Confident of 0 (p_0 >= .633): images 0, 1; confident of 1 (p_1 >= .667): 2, 3, 4; image 5 of neither.
    # C[given][true]: image 2 (given 0) counts at [0][1]; image 5 is not counted.
    joint = confident_joint(LABELS, PROBS, confident_thresholds(LABELS, PROBS))
    assert joint.tolist() == [[2, 1], [0, 2]]
    # Calibrated: rows scaled to the 3 images given each label, the whole to 6: [[2, 1], [0, 3]].
    assert calibrate(joint, np.array([3, 3])).tolist() == [[2, 1], [0, 3]]
    issues = find_label_issues(LABELS, PROBS)
    # Prune by noise rate: 1 image given 0 truly 1, the largest p_1 - p_0 among those given 0: image 2.
    # Image 5 is not counted as an error by the joint, though its argmax disagrees with its label.
    assert np.flatnonzero(issues.issue).tolist() == [2]
    assert issues.suggested.tolist() == [1, 1, 1, 0, 0, 0]
    assert issues.score.tolist() == pytest.approx([0.9, 0.8, 0.2, 0.9, 0.7, 0.4])  # self-confidence
    assert issues.noise_rate() == pytest.approx(1 / 6)


def test_rounding_keeps_row_totals_and_each_issue_is_ranked_by_its_score():
    rows = round_keeping_row_totals(np.array([[1.5, 1.5, 1.0], [0.4, 0.4, 0.2]]))
    assert rows.sum(1).tolist() == [4, 1]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    probs = rng.dirichlet(np.ones(4), 400)
    issues = find_label_issues(labels, probs, rank_by="normalized-margin")
    ranked = issues.ranked()
    assert set(ranked.tolist()) == set(np.flatnonzero(issues.issue).tolist())
    assert np.all(np.diff(issues.score[ranked]) >= 0)
    assert np.all(probs[ranked].argmax(1) != labels[ranked])  # never an image the model agrees with
    with pytest.raises(RegistryError, match="label quality score"):
        find_label_issues(labels, probs, rank_by="loss")


def noisy_problem(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of a model that is right about most images, for labels with 10% flipped."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), true] += rng.uniform(0, 4, n)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    given = true.copy()
    flip = rng.random(n) < 0.1
    given[flip] = (true[flip] + rng.integers(1, k, flip.sum())) % k
    return given, probs


@pytest.mark.parametrize(("n", "k", "seed"), [(200, 3, 0), (5000, 10, 1), (1000, 20, 2), (500, 2, 3)])
def test_the_same_issues_and_ranking_as_the_reference_implementation(n, k, seed):
    cleanlab = pytest.importorskip("cleanlab", reason="the dev extra installs cleanlab")
    from cleanlab.count import compute_confident_joint
    from cleanlab.filter import find_label_issues as reference

    given, probs = noisy_problem(n, k, seed)
    ours = find_label_issues(given, probs)
    assert cleanlab.__version__
    assert np.array_equal(ours.confident_joint, compute_confident_joint(given, probs))
    assert np.array_equal(ours.issue, reference(given, probs))
    assert np.array_equal(ours.ranked(), reference(given, probs, return_indices_ranked_by="self_confidence"))
    margin = find_label_issues(given, probs, rank_by="normalized-margin").ranked()
    assert np.array_equal(margin, reference(given, probs, return_indices_ranked_by="normalized_margin"))
