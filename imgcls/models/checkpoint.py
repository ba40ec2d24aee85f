"""Model weights and metadata on disk: model.safetensors + model.json, read and written in one place.

Used by training (engine) and by everything that uses a trained model (inference) alike. Nothing is
unpickled: weights are safetensors; every write goes to a temporary file renamed into place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from imgcls.errors import ImgclsError
from imgcls.models.base import Classifier, ModelMeta
from imgcls.utils.io import atomic_write, write_json

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


class CheckpointError(ImgclsError, ValueError):
    """A checkpoint is missing, corrupt, or does not fit the model; the message says which."""


def save_weights(model: Classifier, run_dir: str | Path, extra: dict[str, Any] | None = None) -> None:
    """model.safetensors + model.json: enough to rebuild and use the model with no training config."""
    run_dir = Path(run_dir)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(run_dir / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    write_json(run_dir / META_FILE, {**model.meta.to_dict(), **(extra or {})})


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
        needed = 8 + header_size + max((t["data_offsets"][1] for k, t in tensors.items() if k != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError):
        needed = None
    if len(start) < 8 or 8 + header_size > size or (needed is not None and needed > size):
        return f"is truncated ({size} bytes, shorter than its own header says): copy or save it again"
    return "is damaged: it is no valid safetensors file"


def read_meta(run_dir: str | Path) -> ModelMeta:
    path = Path(run_dir) / META_FILE
    try:
        return ModelMeta.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir} is not an imgcls run folder (no {META_FILE})") from None
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt: {e}") from None


def load_weights(model: Classifier, path: str | Path) -> None:
    """Loads safetensors weights into `model`; a mismatch names the first differing tensors."""
    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"no weights at {path}") from None
    except (SafetensorError, OSError, ValueError):
        raise CheckpointError(f"{path} {weights_problem(Path(path))}") from None
    own = model.state_dict()
    head = "head.weight"
    if head in tensors and head in own and tensors[head].shape[0] != own[head].shape[0]:
        raise CheckpointError(f"{path} holds a model for {tensors[head].shape[0]} classes, "
                              f"but {own[head].shape[0]} were expected")  # fmt: skip
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in tensors.items()
        if k in own and own[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path} does not fit {model.meta.name or 'this model'}: "
            + "; ".join(
                f"{what}: {', '.join(keys[:3])}"
                for what, keys in (
                    ("missing", missing),
                    ("unexpected", unexpected),
                    ("shape mismatch", wrong),
                )
                if keys
            )
        )
    model.load_state_dict(tensors)
