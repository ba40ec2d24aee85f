"""Time to 90 / 92 / 93% test accuracy on Fashion-MNIST: imgcls vs the tutorial recipe vs timm resnet18.

    .venv/bin/python bench/time_to_accuracy.py [--budgets 20s,60s,3m] [--tutorial-epochs 10] [--timm-epochs 3]

- imgcls: `imgcls train --time T` runs as subprocesses; wall time includes start-up, data loading and
  the final test evaluation. Its time to X% is the shortest budget whose run reached X%.
- tutorial: the seed posts' recipe, with its bugs fixed: the two-conv CNN, torchvision FashionMNIST +
  ToTensor through a DataLoader, SGD lr 0.01 momentum 0.9, batch 64, cross-entropy, fp32.
- timm: a practitioner's resnet18 (stock stem, in_chans=1): AdamW one-cycle, bf16 autocast,
  channels_last, batch 256, flips.
Baselines are timed from the start of their data loading; their per-epoch test evaluation is not
counted. Ratios compare times measured in this one run. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from bench.common import machine, save
from imgcls.data.datasets import data_root, fashion_mnist

TARGETS = (0.90, 0.92, 0.93)
REPO = Path(__file__).resolve().parents[1]


def imgcls_runs(budgets: list[str]) -> list[dict]:
    rows = []
    for budget in budgets:
        out = Path(tempfile.mkdtemp()) / "run"
        start = time.perf_counter()
        cmd = [
            sys.executable,
            "-m",
            "imgcls",
            "-q",
            "train",
            "--out",
            str(out),
            "--set",
            "log.progress=false",
        ]
        if budget != "default":
            cmd += ["--time", budget]
        subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
        wall = time.perf_counter() - start
        acc = json.loads((out / "eval.json").read_text())["accuracy"]
        rows.append({"budget": budget, "wall_s": round(wall, 1), "accuracy": acc})
        print(
            f"imgcls train {'--time ' + budget if budget != 'default' else '(default)':14s} {acc:.4f} in {wall:6.1f}s",
            flush=True,
        )
    return rows


def test_accuracy(model: nn.Module, loader, dtype=None) -> float:
    model.eval()
    correct = n = 0
    with (
        torch.inference_mode(),
        torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None),
    ):
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum().item()
            n += len(y)
    model.train()
    return correct / n


class TutorialCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(7 * 7 * 32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


def baseline(
    name: str, model: nn.Module, train_tf, test_tf, batch: int, epochs: int, make_opt, dtype=None
) -> list[dict]:
    """Trains with a plain DataLoader loop; returns per-epoch (cumulative training seconds, test accuracy)."""
    import torchvision

    torch.manual_seed(0)
    start = time.perf_counter()
    train = torchvision.datasets.FashionMNIST(str(data_root()), train=True, transform=train_tf)
    test = torchvision.datasets.FashionMNIST(str(data_root()), train=False, transform=test_tf)
    train_loader = torch.utils.data.DataLoader(train, batch_size=batch, shuffle=True)
    test_loader = torch.utils.data.DataLoader(test, batch_size=1000)
    opt, sched = make_opt(model, len(train_loader) * epochs)
    if dtype is not None:
        model = model.to(memory_format=torch.channels_last)
    rows, spent = [], time.perf_counter() - start
    for epoch in range(epochs):
        t = time.perf_counter()
        for x, y in train_loader:
            if dtype is not None:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = nn.functional.cross_entropy(model(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
        spent += time.perf_counter() - t
        acc = test_accuracy(model, test_loader, dtype)
        rows.append({"epoch": epoch + 1, "train_s": round(spent, 1), "accuracy": round(acc, 4)})
        print(f"{name:9s} epoch {epoch + 1:2d}: {acc:.4f} after {spent:6.1f}s", flush=True)
    return rows


def time_to(rows: list[dict], target: float, time_key: str) -> float | None:
    hits = [r[time_key] for r in rows if r["accuracy"] >= target]
    return min(hits) if hits else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--budgets", default="20s,default,3m", help="imgcls budgets; 'default' = plain `imgcls train`"
    )
    parser.add_argument("--tutorial-epochs", type=int, default=10)
    parser.add_argument("--timm-epochs", type=int, default=3)
    args = parser.parse_args()
    import timm
    from torchvision.transforms import v2

    print(f"machine: {machine()}", flush=True)
    fashion_mnist()  # stage the dataset files (and imgcls's cache) before any clock starts
    results = {"imgcls": imgcls_runs(args.budgets.split(","))}

    to_tensor = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    results["tutorial"] = baseline(
        "tutorial",
        TutorialCNN(),
        to_tensor,
        to_tensor,
        64,
        args.tutorial_epochs,
        lambda m, steps: (torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9), None),
    )
    norm = v2.Normalize([0.286], [0.353])
    timm_train = v2.Compose(
        [v2.ToImage(), v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True), norm]
    )
    timm_test = v2.Compose([to_tensor, norm])

    def adamw_onecycle(m, steps):
        opt = torch.optim.AdamW(m.parameters(), lr=2e-3, weight_decay=0.05)
        return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)

    results["timm-resnet18"] = baseline(
        "resnet18",
        timm.create_model("resnet18", num_classes=10, in_chans=1),
        timm_train,
        timm_test,
        256,
        args.timm_epochs,
        adamw_onecycle,
        dtype=torch.bfloat16,
    )

    summary = {}
    print(
        f"\n{'time to':10s}" + "".join(f"{name:>18s}" for name in results) + "   tutorial/imgcls  timm/imgcls"
    )
    for target in TARGETS:
        times = {
            "imgcls": time_to(results["imgcls"], target, "wall_s"),
            "tutorial": time_to(results["tutorial"], target, "train_s"),
            "timm-resnet18": time_to(results["timm-resnet18"], target, "train_s"),
        }
        limits = {
            "tutorial": results["tutorial"][-1]["train_s"],
            "timm-resnet18": results["timm-resnet18"][-1]["train_s"],
        }
        cells = [
            f"{times[k]:.0f} s" if times[k] is not None else f"> {limits.get(k, 0):.0f} s" for k in times
        ]
        ratios = []
        for k in ("tutorial", "timm-resnet18"):
            if times["imgcls"] is None:
                ratios.append("n/a")
            else:
                t = times[k] if times[k] is not None else limits[k]
                ratios.append(f"{'>' if times[k] is None else ''}{t / times['imgcls']:.1f}x")
        summary[f"{target:.0%}"] = {"seconds": times, "ratios": ratios}
        print(
            f"{target:<10.0%}"
            + "".join(f"{c:>18s}" for c in cells)
            + f"   {ratios[0]:>14s}  {ratios[1]:>11s}"
        )
    print(f"saved {save('time-to-accuracy', {'results': results, 'summary': summary})}")


if __name__ == "__main__":
    main()
