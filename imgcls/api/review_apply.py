"""`imgcls.apply_review` (`imgcls data apply`): a review.csv of `imgcls data labels`, its `action` column
filled in, as a new training manifest of the whole reviewed dataset. The user's files are only read."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

from imgcls.api.label_review import SUMMARY_JSON, pooled_names
from imgcls.config import DataConfig
from imgcls.data.datasets import open_dataset
from imgcls.data.types import DataError
from imgcls.utils.io import write_text

log = logging.getLogger("imgcls")
ACTIONS = ("keep", "relabel", "drop")


def apply_review(review: str | Path, *, out: str | Path) -> dict[str, Any]:
    """Writes `out`: a `path,label[,split]` manifest of every image the review covered, with the rows
    marked `relabel` under their `suggested` label and the rows marked `drop` left out (an empty action
    keeps the image as it is). Paths are relative to the manifest, which must sit in a folder holding
    every image (a manifest's paths may not leave its folder).

    Example:
        >>> imgcls.apply_review("runs/labels-x/review.csv", out="data/fixed.csv")["relabelled"]  # doctest: +SKIP
        12
    """
    review, out = Path(review), Path(out)
    summary = _summary(review)
    data = summary["data"]
    if os.path.abspath(out) == data:
        raise DataError(f"--out {out} is the reviewed manifest itself; write the fixed one beside it")
    bundle = open_dataset(DataConfig(name=data, val_split=0.0, test_split=0.0))
    if any(s.paths is None for s in (bundle.train, bundle.val, bundle.test) if s is not None):
        raise DataError(
            f"{data} is held in memory (a built-in dataset): a manifest can only list image files"
        )
    names, labels, origin = pooled_names(bundle)
    decisions = read_actions(review, bundle.classes)
    unknown = sorted(decisions.keys() - set(names))
    if unknown:
        raise DataError(
            f"{review} names {len(unknown)} image(s) {data} no longer lists, e.g. {unknown[0]}; "
            "run imgcls data labels again"
        )
    rows, counts = [], {"kept": 0, "relabelled": 0, "dropped": 0}
    for name, label, split in zip(names, labels, origin):
        action, new_label = decisions.get(name, ("keep", ""))
        if action == "drop":
            counts["dropped"] += 1
            continue
        counts["relabelled" if action == "relabel" else "kept"] += 1
        rows.append((name, new_label if action == "relabel" else bundle.classes[label], split))
    held_out = sum(decisions.get(n, ("keep", ""))[0] != "keep" for n, s in zip(names, origin) if s != "train")
    if held_out:
        log.warning(
            "%d image(s) of the validation/test splits relabelled or dropped: results on them are not "
            "comparable with earlier runs'",
            held_out,
        )
    write_text(out, _manifest(rows, out, with_split=any(split != "train" for split in origin)))
    log.info(
        "%s: %d images (%d relabelled, %d dropped); train on it: imgcls train --data %s",
        out,
        len(rows),
        counts["relabelled"],
        counts["dropped"],
        out,
    )
    return {"manifest": str(out), "rows": len(rows), **counts}


def _summary(review: Path) -> dict[str, Any]:
    path = review.parent / SUMMARY_JSON
    if not review.is_file():
        raise DataError(f"{review}: no such file")
    if not path.is_file():
        raise DataError(
            f"no {SUMMARY_JSON} beside {review}: apply reads which data was reviewed from the folder "
            "imgcls data labels wrote"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise DataError(f"{path} cannot be read ({e}); run imgcls data labels again") from None


def read_actions(review: Path, classes: list[str]) -> dict[str, tuple[str, str]]:
    """path -> (action, label) for every row (an empty action: keep); every mistake in the file is named
    with its line before anything is written."""
    try:
        with open(review, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = {"path", "suggested", "action"} - set(reader.fieldnames or [])
            entries = [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{review} is not a UTF-8 CSV file ({e}); save it as CSV (UTF-8)") from None
    if missing:
        raise DataError(
            f"{review} has no {', '.join(sorted(missing))} column (as imgcls data labels wrote it)"
        )
    decisions: dict[str, tuple[str, str]] = {}
    problems = []
    for line, row in entries:
        action, label = (row["action"] or "").strip().lower() or "keep", (row["suggested"] or "").strip()
        if action not in ACTIONS:
            problems.append(f"line {line}: action {row['action']!r} is none of {', '.join(ACTIONS)}")
        elif action == "relabel" and label not in classes:
            problems.append(f"line {line}: relabel to {label!r}, which is not a class ({', '.join(classes)})")
        elif decisions.get(row["path"], (action, label)) != (action, label):
            problems.append(f"line {line}: {row['path']} is decided twice, differently")
        else:
            decisions[row["path"]] = (action, label)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise DataError(f"{review}: " + "; ".join(problems[:5]) + more)
    return decisions


def _manifest(rows: list[tuple[str, str, str]], out: Path, with_split: bool) -> str:
    base = os.path.abspath(out.parent)
    relative = [os.path.relpath(name, base) for name, _, _ in rows]
    if any(r == ".." or r.startswith(".." + os.sep) for r in relative):
        common = os.path.commonpath([name for name, _, _ in rows])
        raise DataError(
            f"--out {out}: a manifest lists paths inside its own folder; put it in {common} or above"
        )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "split"] if with_split else ["path", "label"])
    for path, (_, label, split) in zip(relative, rows):
        writer.writerow(
            [Path(path).as_posix(), label, split] if with_split else [Path(path).as_posix(), label]
        )
    return buffer.getvalue()
