"""Which speed-run techniques pay on Fashion-MNIST on this machine: each on/off against today's recipe.

    python -m bench.speed_ablation             # 20 s, the default run, 60 s and 5 min, 3 seeds: ~100 min
    python -m bench.speed_ablation --budgets default --seeds 0

Every row is `imgcls train` as a user runs it (a fresh process; whole-command wall time; accuracy on the
10,000 test images, never used to choose anything), with one setting changed from today's recipe. The
test-time views are evaluation-only, so their rows re-evaluate the recipe's own runs (`imgcls eval --tta`,
which reports every choice of views) instead of training again. Prints mean (min-max) over the seeds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import REPO, imgcls_train, mean_spread, save
from imgcls.api.runs import run_config
from imgcls.config import TTA_MODES

RECIPE = "today's recipe"
# (row, overrides): the airbench / hlb-CIFAR10 techniques imgcls can switch, and cheap ones of its own.
VARIANTS = {
    "20s": [
        (RECIPE, {}),
        ("carved validation images held out", {"data.unused_val": "keep"}),
        ("Muon for the conv filters", {"optim.name": "muon"}),
    ],
    "default": [
        (RECIPE, {}),
        ("label smoothing 0.2 (recipe: 0.1)", {"train.label_smoothing": 0.2}),
        ("EMA of the weights, decay 0.995", {"train.ema_decay": 0.995}),
        ("identity (dirac) init of the convs", {"model.dirac_init": True}),
        ("biases and BatchNorm at 8x the lr", {"optim.bias_lr_scale": 8}),
        ("random flips + flip TTA", {"data.augment": "flip"}),
        ("Muon for the conv filters", {"optim.name": "muon"}),
    ],
    # Muon at equal wall time: the default run's length as a time budget.
    "60s": [(RECIPE, {}), ("Muon for the conv filters", {"optim.name": "muon"})],
    "5m": [
        (RECIPE, {}),
        ("random translation too (the recipe before)", {"data.augment": "crop-flip"}),
        ("carved validation images held out", {"data.unused_val": "keep"}),
        ("Muon for the conv filters", {"optim.name": "muon"}),
    ],
}


def test_time_views(run: Path) -> dict[str, float]:
    """Test accuracy of a trained run with each choice of test-time views (evaluation only)."""
    views = {}
    for mode in TTA_MODES:
        done = subprocess.run(
            [sys.executable, "-m", "imgcls", "-q", "eval", str(run), "--tta", mode, "--json"],
            check=True,
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        views[mode] = json.loads(done.stdout)["tta"][mode]
    return views


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--budgets",
        default="20s,default,60s,5m",
        help="'default' (plain `imgcls train`) and/or --time values",
    )
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="imgcls-ablation-") as tmp:
        for budget in args.budgets.split(","):
            rows = results.setdefault(budget, {})
            for name, overrides in VARIANTS.get(budget, VARIANTS["5m"]):
                for seed in seeds:
                    out = Path(tmp) / f"{budget}-{len(rows)}-{seed}"
                    run = imgcls_train(out, budget, overrides, seed) | {"seed": seed}
                    if name == RECIPE and run_config(out).data.augment != "none":
                        run["tta"] = test_time_views(out)  # views only help a model trained on such moves
                    rows.setdefault(name, []).append(run)
                    print(
                        f"{budget:8s} {name:40s} seed {seed}: {run['accuracy']:.4f} in {run['wall_s']:.1f}s",
                        flush=True,
                    )
    print(f"\n{'budget':8s} {'setting':40s} {'test accuracy %, mean (min-max)':32s} wall s (mean)")
    for budget, rows in results.items():
        for name, runs in rows.items():
            wall = sum(r["wall_s"] for r in runs) / len(runs)
            print(f"{budget:8s} {name:40s} {mean_spread([r['accuracy'] for r in runs]):32s} {wall:.1f}")
        for mode in TTA_MODES if "tta" in rows[RECIPE][0] else ():
            scores = [r["tta"][mode] for r in rows[RECIPE]]
            print(f"{budget:8s} {'  ' + RECIPE + ', TTA ' + mode:40s} {mean_spread(scores):32s}")
    print(f"saved {save('speed-ablation', {'seeds': seeds, 'results': results})}")


if __name__ == "__main__":
    main()
