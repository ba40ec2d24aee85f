"""`imgcls.pack_data`: any source imgcls reads, written as WebDataset tar shards with a class index."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from imgcls.api.planning import make_config
from imgcls.data.datasets import open_dataset
from imgcls.data.shards import pack, parse_size

log = logging.getLogger("imgcls")


def pack_data(
    data: str,
    out: str | Path,
    *,
    shard_size: str | int = "1GB",
    config: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Writes `data`'s splits as `out/<split>-000000.tar ...` plus `out/classes.json` (needs imgcls[wds]).

    The source's own splits are written as they are (none is carved: training on the shards carves val/test
    as it would from the source). `out` must not exist or be empty; the user's files are only read.

    Example:
        >>> imgcls.pack_data("my_folder", "shards/", shard_size="500MB")["counts"]    # doctest: +SKIP
        {'train': 1200}
    """
    size = shard_size if isinstance(shard_size, int) else parse_size(shard_size)
    no_carving = {"data.val_split": 0.0, "data.test_split": 0.0}
    bundle = open_dataset(make_config(config, {**(overrides or {}), **no_carving}, data=data).data)
    result = pack(bundle, Path(out), size)
    skipped = [*bundle.skipped, *result["skipped"]]
    if skipped:
        log.warning("skipped %d unusable file(s)/row(s), e.g. %s: %s", len(skipped), *skipped[0])
    return result | {"out": str(out), "classes": len(bundle.classes), "skipped": len(skipped)}
