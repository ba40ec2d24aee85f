"""Shared helpers for the benchmarks: machine description and result files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from imgcls.utils.env import available_cores

RESULTS = Path(__file__).resolve().parent / "results"
REPO = RESULTS.parents[1]


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": available_cores(),
        "threads": torch.get_num_threads(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": str(torch.__version__),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def save(name: str, data: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    return path


def imgcls_train(out: Path, budget: str = "default", overrides: dict | None = None, seed: int = 0) -> dict:
    """`imgcls train` as a user runs it (a fresh process, quiet): whole-command wall time and test accuracy.
    `budget` is a `--time` value, or "default" for the plain command."""
    cmd = [sys.executable, "-m", "imgcls", "-q", "train", "--out", str(out), "--set", "log.progress=false"]
    cmd += [] if budget == "default" else ["--time", budget]
    for key, value in {"train.seed": seed, **(overrides or {})}.items():
        cmd += ["--set", f"{key}={value}"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
    wall = time.perf_counter() - start
    return {"wall_s": round(wall, 1), "accuracy": json.loads((out / "eval.json").read_text())["accuracy"]}


def mean_spread(values: list[float]) -> str:
    """'mean (min-max)' in percent, for accuracies in [0, 1]."""
    return f"{100 * sum(values) / len(values):.2f} ({100 * min(values):.2f}-{100 * max(values):.2f})"
