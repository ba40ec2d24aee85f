"""`imgcls.manifest_data`: a folder of class folders (a `predict --sort-into` folder after review) as a CSV
manifest that `imgcls train --data` takes."""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Any

from imgcls.data.types import DataError
from imgcls.inference.sorting import REVIEW, manifest_rows
from imgcls.utils.io import write_text

log = logging.getLogger("imgcls")


def manifest_data(folder: str | Path, *, out: str | Path | None = None) -> dict[str, Any]:
    """Writes `out` (default FOLDER/labels.csv): a `path,label` row for every image in FOLDER's class
    folders, `_review/` and hidden folders left out, paths relative to the manifest. The manifest must sit
    in FOLDER or above it (a manifest's paths may not leave its folder). Images are only listed.

    Example:
        >>> imgcls.manifest_data("sorted/")["rows"]                                  # doctest: +SKIP
        4123
    """
    folder = Path(folder)
    out = Path(out) if out else folder / "labels.csv"
    base = Path(os.path.abspath(out.parent))
    root = Path(os.path.abspath(folder))
    if base != root and base not in root.parents:
        raise DataError(
            f"--out {out}: a manifest lists paths inside its own folder; put it in {folder} or above"
        )
    rows = manifest_rows(folder)
    if not rows:
        raise DataError(f"{folder} has no images in class folders (besides {REVIEW}/)")
    prefix = root.relative_to(base).as_posix()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label"])
    writer.writerows((f"{prefix}/{path}" if prefix != "." else path, label) for path, label in rows)
    write_text(out, buffer.getvalue())
    counts: dict[str, int] = {}
    for _, label in rows:
        counts[label] = counts.get(label, 0) + 1
    log.info(
        "%s: %d images of %d classes (train on it: imgcls train --data %s)", out, len(rows), len(counts), out
    )
    return {"manifest": str(out), "rows": len(rows), "by_class": counts}
