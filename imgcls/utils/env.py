"""The compute environment: device choice, threads, mixed precision support, versions, seeding."""

from __future__ import annotations

import os
import platform
import random
import subprocess
from pathlib import Path

import numpy as np
import torch

from imgcls.errors import ImgclsError


class DeviceError(ImgclsError, RuntimeError):
    """The requested device is not available."""


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device must exist.

    Under torchrun, `cuda` (or auto on a GPU machine) means this process's GPU: cuda:LOCAL_RANK.
    """
    if name in ("auto", "cuda") and torch.cuda.is_available() and local_rank:
        name = f"cuda:{local_rank}"
    if name.startswith("cuda:") and torch.cuda.is_available():
        torch.cuda.set_device(torch.device(name))
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} requested but CUDA is not available; use train.device=cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
    if device.type == "mps" and not (torch.backends.mps.is_available()):
        raise DeviceError("device 'mps' requested but MPS is not available; use train.device=cpu")
    return device


def autocast_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """The autocast dtype for `amp` (auto/bf16/fp16/off) on `device`, or None for full precision."""
    if amp == "off":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise DeviceError("train.amp=fp16 needs CUDA; on CPU use train.amp=bf16 or off")
        return torch.float16
    bf16_ok = bf16_supported(device)
    if amp == "bf16":
        if not bf16_ok:
            raise DeviceError(f"train.amp=bf16 is not supported on {device}; use train.amp=off")
        return torch.bfloat16
    return torch.bfloat16 if bf16_ok else None  # auto


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # Only worth it with native bf16 instructions (AVX512-BF16/AMX); emulated bf16 is slower than fp32.
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and _cpu_has_native_bf16()
        except (AttributeError, RuntimeError):
            return False
    return False


def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine() == "arm64"  # Apple silicon
    return "avx512_bf16" in flags or "amx_bf16" in flags


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask: a container's or taskset's share), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def set_threads(threads: int | None) -> int:
    """Uses `threads` CPU threads (default: $OMP_NUM_THREADS where set, else the cores this process may
    run on, shared among the processes torchrun started on this machine, so N ranks do not fight over
    the same cores)."""
    if threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = max(1, int(os.environ["OMP_NUM_THREADS"]))
    if threads is None:
        threads = max(1, available_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch.set_num_threads(threads)
    return threads


def threads_given(threads: int | None) -> bool:
    """Whether a thread count was asked for (train.threads, or $OMP_NUM_THREADS); else training times a few."""
    return threads is not None or os.environ.get("OMP_NUM_THREADS", "").isdigit()


def set_deterministic(on: bool) -> None:
    """Deterministic kernels only (an error names any op without one); cuDNN autotuning off."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.benchmark = False if on else torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic = on


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def process_age() -> float:
    """Seconds since this process started (Linux), so a time budget includes interpreter start-up and imports."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start)
    except (OSError, ValueError, IndexError):
        return 0.0


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    import torchvision

    from imgcls._version import __version__

    return {
        "imgcls": __version__,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
    }
