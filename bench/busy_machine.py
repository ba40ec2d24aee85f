"""A busy machine: the default `imgcls train` (Fashion-MNIST) on an idle machine, with one core kept busy by
another process (a Python busy loop pinned to it, as a build or a browser tab would), and the same busy run
with every core forced (`--set train.threads=N`: what training did before it timed thread counts). The
whole command's wall time, the test accuracy and the thread count training chose.

    python -m bench.busy_machine         # ~7 minutes on 2 CPU cores
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import save
from imgcls.utils.env import available_cores


def run(out: Path, busy: bool, extra: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # as a user's shell has it
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        if burner:
            os.sched_setaffinity(burner.pid, {sorted(os.sched_getaffinity(0))[0]})
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "imgcls", "train", "--out", str(out), *extra],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        wall = time.perf_counter() - start
    finally:
        if burner:
            burner.kill()
    chosen = re.search(r"threads: (\d+)", done.stderr)
    accuracy = json.loads((out / "eval.json").read_text())["accuracy"]
    return {"wall_s": round(wall, 1), "accuracy": accuracy, "threads": int(chosen[1]) if chosen else None}


def main() -> None:
    cores = available_cores()
    conditions = {
        "idle": (False, []),
        "one core busy": (True, []),
        f"one core busy, train.threads={cores}": (True, ["--set", f"train.threads={cores}"]),
    }
    results = {}
    with tempfile.TemporaryDirectory(prefix="imgcls-busy-") as tmp:
        for i, (name, (busy, extra)) in enumerate(conditions.items()):
            results[name] = run(Path(tmp) / f"run{i}", busy, extra)
    print(f"\ndefault imgcls train on {cores} cores")
    for name, r in results.items():
        threads = r["threads"] if r["threads"] is not None else "forced"
        print(f"  {name:38s} {r['wall_s']:7.1f}s  test accuracy {r['accuracy']:.4f}  threads {threads}")
    print(f"saved {save('busy_machine', results)}")


if __name__ == "__main__":
    main()
