"""`imgcls.check_data`: the data doctor on any source imgcls reads, as JSON and as a page with thumbnails."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.api.planning import make_config
from imgcls.data.datasets import open_dataset
from imgcls.data.decode import ImageDecodeError, open_image
from imgcls.data.doctor import Record, check
from imgcls.data.doctor.checks import SPLITS
from imgcls.data.types import DataBundle, Member
from imgcls.reporting import render_data_html, thumbnail_uri
from imgcls.utils.io import write_json, write_text


def check_data(
    data: str,
    *,
    out: str | Path | None = "data-check.json",
    config: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    near: bool = True,
    html: str | Path | None = None,
) -> dict[str, Any]:
    """The data doctor on a folder, CSV manifest or built-in; writes the JSON report to `out` (and a page
    with thumbnails to `html`).

    Example:
        >>> imgcls.check_data("my_folder")["ok"]                                     # doctest: +SKIP
    """
    cfg = make_config(config, overrides, data=data)
    bundle = open_dataset(cfg.data)
    report = check(bundle, near=near).to_dict()
    if out:
        write_json(out, report)
    if html:
        write_text(html, render_data_html(report, _finding_thumbnails(report, bundle)))
    return report


def _finding_thumbnails(report: dict[str, Any], bundle: DataBundle) -> dict[str, str]:
    """Thumbnails of the images the findings name (the first 24 records of each), keyed by path."""
    wanted = {path for f in report["findings"] for r in f["items"][:24] for path in Record(**r).paths}
    in_memory = {
        f"{name}[{i}]": (split, i)
        for name in SPLITS
        if (split := getattr(bundle, name)) is not None and split.images is not None
        for i in range(len(split))
    }
    members = {  # images inside shards or Arrow tables, named as the findings name them
        str(p): p
        for name in SPLITS
        if (split := getattr(bundle, name)) is not None
        for p in split.paths or []
        if isinstance(p, Member) and str(p) in wanted
    }
    thumbs = {}
    for path in wanted:
        if path in in_memory:
            split, i = in_memory[path]
            thumbs[path] = thumbnail_uri(split.images[i].permute(1, 2, 0).numpy(), side=48)
        elif path in members or Path(path).is_file():
            with contextlib.suppress(ImageDecodeError):
                thumbs[path] = thumbnail_uri(np.asarray(open_image(members.get(path, path), 3)), side=48)
    return thumbs
