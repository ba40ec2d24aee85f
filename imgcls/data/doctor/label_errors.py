"""Likely label errors from out-of-fold predicted probabilities, by confident learning (Northcutt, Jiang and
Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels", JAIR 70, 2021), as its reference
implementation (cleanlab 2.x, `filter.find_label_issues` with its defaults) computes it:

1. per-class thresholds t_j: the mean predicted probability of class j over the images labelled j;
2. the confident joint C[i][j]: images labelled i whose probability of j reaches t_j (of several such j,
   the most probable class), with at least 1 on the diagonal; calibrated so each row sums to the images
   labelled i and the whole to all images, then rounded keeping the row totals;
3. prune by noise rate: for each i != j, the C[i][j] images labelled i with the largest margin p_j - p_i
   are issues (every class keeps at least one image); an image whose most probable class is its label
   never is;
4. rank the issues by a label quality score: self-confidence p_label (the default) or normalized margin
   (p_label - max of the others + 1) / 2; lower is more likely wrong. The suggested label is the most
   probable other class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imgcls.registry import Registry

SCORES = Registry("label quality score")  # (labels, probs) -> a score per image


@SCORES.register("self-confidence")
def self_confidence(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    return probs[np.arange(len(labels)), labels]


@SCORES.register("normalized-margin")
def normalized_margin(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    return (self_confidence(labels, probs) - _best_other(labels, probs)[1] + 1) / 2


@dataclass
class LabelIssues:
    issue: np.ndarray  # bool per image: pruned by noise rate
    score: np.ndarray  # label quality per image in [0, 1]; lower: more likely wrong
    suggested: np.ndarray  # the most probable class other than the given one, per image
    thresholds: np.ndarray  # t_j per class
    confident_joint: np.ndarray  # calibrated counts, rows: given label, columns: estimated true label

    def ranked(self) -> np.ndarray:
        """Indices of the issues, most likely wrong first (ties by index)."""
        flagged = np.flatnonzero(self.issue)
        return flagged[np.argsort(self.score[flagged], kind="stable")]

    def noise_rate(self) -> float:
        """The estimated share of wrong labels: the confident joint's off-diagonal mass."""
        total = self.confident_joint.sum()
        return float((total - np.trace(self.confident_joint)) / total) if total else 0.0


def find_label_issues(labels: np.ndarray, probs: np.ndarray, rank_by: str = "self-confidence") -> LabelIssues:
    """Confident learning on `probs` (N x K out-of-fold probabilities) for the given `labels` (N ints).

    Example:
        >>> issues = find_label_issues(np.array([0, 0, 1]), np.array([[.9, .1], [.2, .8], [.3, .7]]))
        >>> issues.issue.tolist(), issues.suggested.tolist()
        ([False, True, False], [1, 1, 0])
    """
    labels, probs = np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    thresholds = confident_thresholds(labels, probs)
    joint = calibrate(
        confident_joint(labels, probs, thresholds), np.bincount(labels, minlength=probs.shape[1])
    )
    issue = prune_by_noise_rate(labels, probs, keep_at_least_one(joint))
    issue &= probs.argmax(1) != labels
    return LabelIssues(
        issue, SCORES.get(rank_by)(labels, probs), _best_other(labels, probs)[0], thresholds, joint
    )


def confident_thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """t_j: the mean probability of class j over the images labelled j (0 for a class with none)."""
    k = probs.shape[1]
    counts = np.bincount(labels, minlength=k)
    sums = np.zeros(k)
    np.add.at(sums, labels, probs[np.arange(len(labels)), labels])
    return np.divide(sums, counts, out=np.zeros(k), where=counts > 0)


def confident_joint(labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """C[i][j]: images labelled i confidently of class j; images confident of no class are not counted."""
    k = probs.shape[1]
    confident = probs >= thresholds - 1e-6
    many = confident.sum(1)
    guess = np.where(many > 1, probs.argmax(1), confident.argmax(1))
    counted = many > 0
    joint = np.zeros((k, k), dtype=np.int64)
    np.add.at(joint, (labels[counted], guess[counted]), 1)
    np.fill_diagonal(joint, np.maximum(joint.diagonal(), 1))
    return joint


def calibrate(joint: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Rows scaled to the images given each label, the whole to all images, rounded keeping row totals."""
    rows = joint / np.maximum(joint.sum(1, keepdims=True), 1e-6) * counts[:, None]
    rows = rows / max(rows.sum(), 1e-6) * counts.sum()
    return round_keeping_row_totals(rows)


def round_keeping_row_totals(matrix: np.ndarray) -> np.ndarray:
    """Rounds each entry, then moves the entries closest to the other side by one until each row's sum
    is its rounded total again (cleanlab's `round_preserving_row_totals`)."""
    out = np.round(matrix)
    for i, row in enumerate(matrix):
        missing = int(np.round(row.sum()) - out[i].sum())
        if missing:
            step = 1 if missing > 0 else -1
            out[i, np.argsort(row - out[i])[::-step][: abs(missing)]] += step
    return out.astype(np.int64)


def keep_at_least_one(joint: np.ndarray, n: int = 1) -> np.ndarray:
    """Leaves at least `n` images per given label: a diagonal raised to n is taken evenly from the
    row's other non-zero entries (cleanlab's `_keep_at_least_n_per_class`, on the transposed matrix)."""
    diagonal = joint.diagonal().astype(np.float64)
    raise_by = np.maximum(diagonal, n) - diagonal
    others = np.maximum(np.count_nonzero(joint, axis=1) - 1.0, 1.0)
    out = joint - (raise_by / others)[:, None]
    out[out < 0] = 0
    np.fill_diagonal(out, np.maximum(diagonal, n))
    return round_keeping_row_totals(out.T).T  # the reference rounds the transposed matrix


def prune_by_noise_rate(labels: np.ndarray, probs: np.ndarray, joint: np.ndarray) -> np.ndarray:
    """For each i != j, the joint[i][j] images labelled i with the largest p_j - p_i."""
    issue = np.zeros(len(labels), dtype=bool)
    for i in range(probs.shape[1]):
        members = np.flatnonzero(labels == i)
        for j in np.flatnonzero(joint[i]):
            if j == i:
                continue
            margin = probs[members, j] - probs[members, i]
            issue[members[np.argsort(-margin, kind="stable")[: joint[i, j]]]] = True
    return issue


def _best_other(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The most probable class other than the given one, and its probability."""
    others = probs.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    best = others.argmax(1)
    return best, others[np.arange(len(labels)), best]
