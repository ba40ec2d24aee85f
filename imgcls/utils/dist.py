"""torch.distributed in a few helpers: start from torchrun's environment, rank checks, collectives.

Nothing here is home-made distribution: torchrun starts the processes and sets RANK/WORLD_SIZE/
LOCAL_RANK/MASTER_ADDR; we join its process group (NCCL on CUDA, gloo on CPU) and wrap the model in
DistributedDataParallel. Every helper is a no-op in a single process, so the engine has no `if ddp:`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from imgcls.utils.env import DeviceError


def env_world_size() -> int:
    """The world size torchrun announced (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def init(device: torch.device) -> None:
    """Joins torchrun's process group once (when WORLD_SIZE > 1): NCCL for CUDA, gloo otherwise."""
    if env_world_size() <= 1 or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(minutes=30))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that logs and writes files."""
    return rank() == 0


def backend() -> str | None:
    return dist.get_backend() if is_distributed() else None


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (downloads, cache writes); the others follow and find its results."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def wrap(
    model: nn.Module, device: torch.device, sync_bn: bool = False, partly_frozen: bool = False
) -> nn.Module:
    """The model wrapped in DistributedDataParallel in a distributed run, else the model itself.

    With `sync_bn`, BatchNorm layers are converted in place to SyncBatchNorm (same parameters and
    state-dict keys, so checkpoints still load into the plain model). `partly_frozen`: parameters may
    stop receiving gradients during the run (fine-tuning phases), which DDP must be told.
    """
    if not is_distributed():
        return model
    if sync_bn:
        if device.type != "cuda":
            raise DeviceError("train.sync_bn needs GPUs: PyTorch's SyncBatchNorm does not run on CPU")
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else None
    )
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=partly_frozen)


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over ranks (used for stop decisions every rank must share)."""
    return _all_reduce(values, dist.ReduceOp.MAX) if is_distributed() else values


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    return _all_reduce(values, dist.ReduceOp.SUM) if is_distributed() else values


def _all_reduce(values: torch.Tensor, op) -> torch.Tensor:
    reduced = values.to(_comm_device(), copy=True)
    dist.all_reduce(reduced, op=op)
    return reduced.to(values.device)


def _comm_device() -> torch.device:
    """NCCL moves CUDA tensors, gloo CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenates each rank's `tensor` (first dims may differ) in rank order, on every rank."""
    if not is_distributed():
        return tensor
    # Collectives need one shape on every rank: pad to the longest, then trim each part.
    comm_device = _comm_device()
    local = tensor.to(comm_device)
    sizes = [torch.zeros((), dtype=torch.long, device=comm_device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor(len(local), device=comm_device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=comm_device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(n.item())] for p, n in zip(parts, sizes)]).to(tensor.device)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (small picklable values: a run folder name, a config)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_module(module: nn.Module) -> None:
    """Copies rank 0's parameters and buffers into every rank's `module`, in place."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            comm = tensor.to(_comm_device())
            dist.broadcast(comm, src=0)
            tensor.copy_(comm)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (small values: RNG states for a checkpoint)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
