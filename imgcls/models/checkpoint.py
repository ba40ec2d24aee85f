"""Model weights and metadata on disk, read and written in one place: model.safetensors + model.json of a
run, and the torchvision/timm/imgcls state dicts that `--weights` names.

Used by training (engine) and by everything that uses a trained model (inference) alike. Nothing is
unpickled: weights are safetensors or `torch.load(weights_only=True)`; every write goes to a temporary
file renamed into place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from imgcls.errors import ImgclsError
from imgcls.models.base import Classifier, ModelError, ModelMeta
from imgcls.utils import run_files
from imgcls.utils.io import atomic_write, write_json

WEIGHTS_FILE = run_files.WEIGHTS
META_FILE = run_files.META
# Wrappers that training scripts put around a state dict: torchvision references ("model"), timm ("state_dict").
CONTAINER_KEYS = ("state_dict_ema", "state_dict", "model_ema", "model")


class CheckpointError(ImgclsError, ValueError):
    """A checkpoint is missing, corrupt, or does not fit the model; the message says which."""


def save_weights(model: Classifier, run_dir: str | Path, extra: dict[str, Any] | None = None) -> None:
    """model.safetensors + model.json: enough to rebuild and use the model with no training config."""
    run_dir = Path(run_dir)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(run_dir / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    write_json(run_dir / META_FILE, {**model.meta.to_dict(), **(extra or {})})


def read_meta(run_dir: str | Path) -> ModelMeta:
    path = Path(run_dir) / META_FILE
    try:
        return ModelMeta.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir} is not an imgcls run folder (no {META_FILE})") from None
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt: {e}") from None


def update_meta(run_dir: str | Path, updates: dict[str, Any]) -> None:
    """Edits model.json in place (the weights are unchanged: temperature and TTA act in the forward)."""
    path = Path(run_dir) / META_FILE
    write_json(path, {**json.loads(path.read_text(encoding="utf-8")), **updates})


def load_weights(model: Classifier, path: str | Path) -> None:
    """Loads a run's safetensors weights into `model`; a mismatch names the first differing tensors."""
    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"no weights at {path}") from None
    except (SafetensorError, OSError, ValueError):
        raise CheckpointError(f"{path} {weights_problem(Path(path))}") from None
    own = model.state_dict()
    head = "head.weight"
    if head in tensors and head in own and tensors[head].shape[0] != own[head].shape[0]:
        raise CheckpointError(
            f"{path} holds a model for {tensors[head].shape[0]} classes, but {own[head].shape[0]} were expected"
        )
    problems = mismatch(own, tensors)
    if problems:
        raise CheckpointError(f"{path} does not fit {model.meta.name or 'this model'}: {problems}")
    model.load_state_dict(tensors)


def mismatch(
    own: dict[str, torch.Tensor], given: dict[str, torch.Tensor], ignore: tuple[str, ...] = ()
) -> str:
    """Missing, unexpected and mis-shaped keys of `given` against `own` (keys starting with `ignore` aside),
    in words, the first three of each; empty when they fit."""
    missing = [k for k in own if k not in given and not k.startswith(ignore)]
    unexpected = [k for k in given if k not in own and not k.startswith(ignore)]
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in given.items()
        if k in own and own[k].shape != v.shape and not k.startswith(ignore)
    ]
    parts = [("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)]
    return "; ".join(
        f"{what}: {', '.join(keys[:3])}" + (" ..." if len(keys) > 3 else "") for what, keys in parts if keys
    )


def weights_problem(path: Path) -> str:
    """What is wrong with a weights file safetensors refused, in words."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            start = f.read(8)
            header_size = int.from_bytes(start, "little") if len(start) == 8 else 0
            header = f.read(min(header_size, 100_000_000))
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if size == 0:
        return "is empty (0 bytes): the save that wrote it did not finish"
    if start.startswith((b"\x80", b"PK\x03\x04")):
        return "is a pickle (torch.save) file, not safetensors; imgcls never unpickles weights files"
    try:
        tensors = json.loads(header)
        ends = (t["data_offsets"][1] for k, t in tensors.items() if k != "__metadata__")
        needed = 8 + header_size + max(ends, default=0)
    except (ValueError, TypeError, KeyError, IndexError):
        needed = None
    if len(start) < 8 or 8 + header_size > size or (needed is not None and needed > size):
        return f"is truncated ({size} bytes, shorter than its own header says): copy or save it again"
    return "is damaged: it is no valid safetensors file"


# Wrappers that training scripts put around a state dict: torchvision references ("model"), timm ("state_dict").
CONTAINER_KEYS = ("state_dict_ema", "state_dict", "model_ema", "model")


def weights_path(path: str | Path) -> Path:
    """A weights file, or an imgcls run folder's model.safetensors."""
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS_FILE
    if not p.is_file():
        raise ModelError(f"no weights at {path} (give a .safetensors/.pth file or an imgcls run folder)")
    return p


def run_meta(path: str | Path) -> dict[str, Any] | None:
    """The model.json beside imgcls weights (architecture options, normalization), if there is one."""
    p = weights_path(path).parent / META_FILE
    try:
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors by name from .safetensors or a torch file (never unpickling code), wrappers removed."""
    p = weights_path(path)
    try:
        if p.suffix == ".safetensors":
            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors/pickle/zip errors: all mean "not usable weights"
        if p.suffix == ".safetensors":
            raise ModelError(f"{p} {weights_problem(p)}") from None
        raise ModelError(f"{p} is not a readable weights file ({type(e).__name__}: {str(e)[:200]})") from None
    for key in CONTAINER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{p} does not hold a state dict of tensors")
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}


def is_imgcls_state(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("backbone.") for k in state) and any(k.startswith("head.") for k in state)
