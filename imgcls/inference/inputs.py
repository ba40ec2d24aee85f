"""What `imgcls predict` reads and writes besides images: the files named by paths, folders, globs and
manifests (with the labels known for them), and the predictions file (CSV or JSON lines)."""

from __future__ import annotations

import csv
import glob
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from imgcls.config import ConfigError
from imgcls.data.decode import IMAGE_EXTENSIONS
from imgcls.data.folder import class_name
from imgcls.data.manifest import read_manifest


def expand_paths(inputs: Iterable[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given, folders searched recursively for images, globs expanded; missing paths are reported."""
    files, missing = [], []
    for item in inputs:
        path = Path(item)
        if not path.exists() and any(c in str(item) for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            files += [m for m in matches if m.is_file()]
            if not matches:
                missing.append((str(item), "no file matches this pattern"))
            continue
        if path.is_dir():
            files += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
        elif path.is_file():
            files.append(path)
        else:
            missing.append((str(path), "no such file or folder"))
    return files, missing


def inputs_with_labels(
    inputs: Sequence[str | Path], classes: Sequence[str], multilabel_sep: str | None = None
) -> tuple[list[Path], dict[Path, str], list[tuple[str, str]]]:
    """Files to predict and the true labels known for them: a CSV manifest's label column, or the class
    folder a file sits in, as training reads folders (when every file of a folder input has a class).

    Multi-label (`multilabel_sep` given): a manifest's rows of one file join into one label set (written
    with the separator), an empty label cell is the empty set, and each file is predicted once.
    """
    files, labels, missing = [], {}, []
    known = set(classes)
    for item in inputs:
        path = Path(item)
        if path.is_file() and path.suffix.lower() == ".csv":
            rows, bad = read_manifest(path, need_label=False)
            missing += bad
            if multilabel_sep is None:
                files += [row.path for row in rows]
                labels |= {row.path: row.label for row in rows if row.label}
                continue
            sets: dict[Path, set[str]] = {}
            for row in rows:
                sets.setdefault(row.path, set()).update(row.label.split(multilabel_sep))
            files += list(sets)
            if any(row.label for row in rows):  # a label column: an empty cell is an image with no label
                labels |= {f: multilabel_sep.join(sorted(s - {""})) for f, s in sets.items()}
            continue
        found, lost = expand_paths([item])
        files += found
        missing += lost
        if multilabel_sep is None and path.is_dir() and found:
            named = {f: _folder_class(f, path) for f in found}
            if set(named.values()) <= known:
                labels |= named
    return files, labels, missing


def _folder_class(file: Path, root: Path) -> str:
    """A file's class as training reads a class-folder tree: the folder right under `root` (files nested
    deeper belong to it too: Fashion-MNIST's "T-shirt/top" is T-shirt/top/), or `root` itself for a file
    directly in it."""
    relative = file.relative_to(root)
    return class_name(root / relative.parts[0]) if len(relative.parts) > 1 else class_name(root)


class PredictionWriter:
    """Predictions to `.csv` (path, label, probability, top_k as label:prob;..., true_label) or `.jsonl`.

    A model that abstains adds an `abstained` column (the reason; the label is then empty).

    Multi-label CSV: path, labels (joined by the manifest's separator), probabilities, top_k, true_labels.
    """

    def __init__(
        self, path: str | Path, multilabel: bool = False, label_sep: str = ";", abstains: bool = False
    ) -> None:
        self.multilabel, self.sep, self.abstains = multilabel, label_sep, abstains
        self.path = Path(path)
        if self.path.suffix.lower() not in (".csv", ".jsonl"):
            raise ConfigError(f"--out must end in .csv or .jsonl, not {self.path.name!r}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Paths as the user named them; bytes that are no UTF-8 (a Latin-1 file name) written as escapes.
        self.file = open(self.path, "w", newline="", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        self.csv = csv.writer(self.file) if self.path.suffix.lower() == ".csv" else None
        if self.csv:
            header = ["path", "label", "probability", "top_k", "true_label"]
            if multilabel:
                header = ["path", "labels", "probabilities", "top_k", "true_labels"]
            self.csv.writerow(header + (["abstained"] if abstains else []))

    def write(self, pred: dict[str, Any], true_label: str | None) -> None:
        if self.csv:
            top = ";".join(f"{t['label']}:{t['probability']}" for t in pred["top_k"])
            if self.multilabel:
                probs = ";".join(map(str, pred["probabilities"]))
                row = [pred["path"], self.sep.join(pred["labels"]), probs, top, true_label or ""]
            else:
                row = [pred["path"], pred["label"] or "", pred["probability"], top, true_label or ""]
            self.csv.writerow(row + ([pred.get("abstained", "")] if self.abstains else []))
        else:
            self.file.write(json.dumps({**pred, **({"true_label": true_label} if true_label else {})}) + "\n")

    def close(self) -> None:
        self.file.close()
