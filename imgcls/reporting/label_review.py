"""The label review page: each image to review with its given and suggested labels and, for each, the
nearest images filed under that label (so a reviewer sees what the model compares it with)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from imgcls.reporting import thumbnail_uri
from imgcls.utils.templates import render

PAGE_ROWS = 300  # rows shown on the page (review.csv has them all)


def render_label_review(
    summary: dict[str, Any],
    rows: list[dict[str, Any]],
    neighbours: Callable[[int, str], list[int]],
    pixels: Callable[[int], np.ndarray],
) -> str:
    """`rows` as review.csv has them plus `index` (the image's position); `neighbours(index, label)` the
    nearest images filed under `label`; `pixels(index)` an image as (H, W, C) uint8."""
    shown = rows[:PAGE_ROWS]
    for row in shown:
        i = row["index"]
        row["thumbnail"] = thumbnail_uri(pixels(i), side=96)
        row["near_given"] = [thumbnail_uri(pixels(j), side=48) for j in neighbours(i, row["given"])]
        row["near_suggested"] = [thumbnail_uri(pixels(j), side=48) for j in neighbours(i, row["suggested"])]
    return render("label_review.html", s=summary, rows=rows, shown=len(shown))
