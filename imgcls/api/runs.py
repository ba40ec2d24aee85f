"""Run folders: opening one for a new, resumed or overwritten run, and reading a finished run's config."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

from imgcls import config as config_lib
from imgcls.api.planning import make_config
from imgcls.config import Config
from imgcls.models.checkpoint import CheckpointError
from imgcls.utils import dist, run_files
from imgcls.utils.io import new_run_dir

log = logging.getLogger("imgcls")


def resolve_config(
    cfg: Config | None,
    config: str | Path | None,
    resume: str | Path | None,
    overrides: dict[str, Any] | None,
    shorthands: dict[str, Any],
) -> Config:
    """The run's config: a resumed run's own config.yaml (plus overrides), a given Config, or a new one."""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / run_files.STATE).is_file():
            raise CheckpointError(f"cannot resume: {run_dir} has no {run_files.STATE}")
        return make_config(run_dir / run_files.CONFIG, overrides, **shorthands).replace({"out": str(run_dir)})
    return cfg if cfg is not None else make_config(config, overrides, **shorthands)


def shared_run_dir(cfg: Config, resuming: bool, overwrite: bool) -> Path:
    """Rank 0 opens the run folder; every rank gets its path, or the same error (no rank left waiting)."""
    opened: tuple[str | None, str | None] = (None, None)
    if dist.is_main():
        try:
            opened = (str(open_run_dir(cfg, resuming, overwrite)), None)
        except config_lib.ConfigError as e:
            opened = (None, str(e))
    path, error = dist.broadcast_object(opened)
    if error:
        raise config_lib.ConfigError(error)
    return Path(path)


def open_run_dir(cfg: Config, resuming: bool, overwrite: bool) -> Path:
    """The run folder: new, resumed, or (with `overwrite`) an earlier run's folder emptied first.

    A non-empty folder is refused otherwise: stale artifacts (model.onnx, eval-val.json, state.pt) beside
    new weights would be served or resumed as if they belonged to this run.
    """
    if not cfg.out:
        return new_run_dir("runs", f"{stem(cfg.data.name)}-{stem(cfg.model.name)}")
    run_dir = Path(cfg.out)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        leftovers = sorted(p.name for p in run_dir.iterdir())
    except OSError as e:
        raise config_lib.ConfigError(f"cannot create the run folder {run_dir}: {e.strerror or e}") from None
    if resuming or not leftovers:
        return run_dir
    if not overwrite:
        listed = ", ".join(leftovers[:4]) + (", ..." if len(leftovers) > 4 else "")
        raise config_lib.ConfigError(
            f"--out {run_dir} is not empty ({listed}); "
            "continue it with --resume, replace it with --overwrite, or choose another folder"
        )
    if run_files.CONFIG not in leftovers:  # never empty a folder imgcls did not make
        raise config_lib.ConfigError(
            f"--overwrite refused: {run_dir} is not an imgcls run folder (no {run_files.CONFIG})"
        )
    for path in run_dir.iterdir():
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    log.info("emptied the earlier run in %s (--overwrite)", run_dir)
    return run_dir


def run_config(run_dir: Path, data: str | None = None) -> Config:
    """The run's config.yaml; without one, only a run told which data to use can go on (never a guess)."""
    path = run_dir / run_files.CONFIG
    if path.is_file():
        return config_lib.load(path)
    if data is None:
        raise CheckpointError(
            f"{run_dir} has no {run_files.CONFIG}, so the data it was trained on is unknown; name the data with --data"
        )
    return config_lib.load(None, {"data.name": data})


def stem(name: str) -> str:
    """A data or model name as part of a folder name (a shard pattern's brace ranges left out)."""
    plain = Path(re.sub(r"\{[^}]*\}", "", name).rstrip("/")).stem.strip("-_.")
    return plain.replace("/", "-") or "data"
