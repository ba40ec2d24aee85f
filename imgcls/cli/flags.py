"""Every flag of the `imgcls` command line, declared once: name -> (config key or None, argparse options).

Shared flags first; a command's own flags under its name (an --out or --batch-size means something different
per command). A flag with a key lands in the overrides under that key (flags win over --set); the rest are
arguments of a call.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from imgcls.config import TTA_MODES, parse_overrides

KEY_PREFIX = "cfg:"  # the argparse dest of a flag that sets a config key: cfg:<section.key>


def _lr(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lr takes a number or auto, not {text!r}") from None


# Tables, one flag per line, so ruff's formatter (which would give each option a line of its own) is off.
# fmt: off
SHARED = {
    "--data": ("data.name", {"help": "built-in name (fashion-mnist, mnist, cifar10, cifar100, digits), a folder, a CSV manifest, hf:OWNER/NAME[:CONFIG] or a local Hugging Face dataset (imgcls[hf]), or tar shards 'shards/train-{000000..000009}.tar' (imgcls[wds])"}),
    "--model": ("model.name", {"help": "model name (see `imgcls models`), e.g. smallnet, resnet18, timm/convnext_nano"}),
    "--pretrained": ("model.pretrained", {"action": "store_const", "const": True, "help": "start from the architecture's ImageNet weights (torchvision/timm) and fine-tune"}),
    "--weights": ("model.weights", {"metavar": "FILE|RUN_DIR", "help": "start from local weights: a torchvision/timm .pth/.safetensors, or an imgcls run folder"}),
    "--batch-size": ("data.batch_size", {"type": int}),
    "--config": (None, {"help": "a YAML file of config sections (see configs/)"}),
    "--set": (None, {"nargs": "+", "action": "extend", "default": [], "metavar": "KEY=VALUE", "help": "config overrides, e.g. optim.name=adamw train.amp=off (repeatable)"}),
    "run_dir": (None, {"metavar": "RUN_DIR"}),
    "--device": (None, {"default": "auto", "help": "auto, cpu, cuda, cuda:1, mps"}),
}
OWN = {
    "train": {
        "--epochs": ("train.epochs", {"type": int}),
        "--time": ("train.time", {"help": "time budget for the whole run, e.g. 90s, 5m, 1h (plans the schedule to end on time)"}),
        "--lr": ("optim.lr", {"type": _lr, "help": "peak learning rate, or auto (an LR range test picks it)"}),
        "--freeze": ("model.freeze", {"metavar": "auto|none|N|backbone", "help": "fine-tuning: what stays frozen after the head-only phase (backbone: linear probing)"}),
        "--patience": ("train.patience", {"type": int, "help": "stop when validation accuracy has not improved for N epochs"}),
        "--abstain": ("train.abstain", {"metavar": "0.99|coverage=0.9", "help": "answer \"I don't know\" below a calibrated confidence chosen on the validation split for this precision (or coverage)"}),
        "--task": ("data.task", {"choices": ["auto", "multiclass", "multilabel"], "help": "multilabel: each image has a set of labels (a CSV manifest: 'dog;cat' cells or a row per label); auto: detected from the manifest, said in the log"}),
        "--strict": ("data.strict", {"action": "store_const", "const": True, "help": "unreadable images are an error, not a counted skip"}),
        "--out": ("out", {"help": "run folder (default: runs/<data>-<model>-<time>)"}),
        "--resume": (None, {"metavar": "RUN_DIR", "help": "continue a run from its last checkpoint"}),
        "--overwrite": (None, {"action": "store_true", "help": "--out names an earlier run folder: empty it and start anew"}),
    },
    "eval": {
        "--data": (None, {"help": "data to evaluate on (default: the data the run was trained on)"}),
        "--split": (None, {"choices": ["test", "val"], "default": "test"}),
        "--batch-size": (None, {"type": int}),
        "--json": (None, {"action": "store_true", "help": "print the metrics as one JSON object on stdout"}),
        "--tta": (None, {"choices": list(TTA_MODES), "help": "evaluate with these test-time views (reported with and without); kept for the model"}),
        "--calibrate": (None, {"action": "store_true", "help": "fit temperature scaling on the validation split, store it with the model, report ECE before/after"}),
        "--abstain": (None, {"metavar": "0.99|coverage=0.9", "help": "calibrate, then choose on the validation split the confidence below which the model answers \"I don't know\" (for this precision, or coverage); stored with the model"}),
        "--ood": (None, {"metavar": "DATA", "help": "images of none of the classes (a folder, manifest or dataset): report the AUROC of telling them apart by confidence"}),
    },
    "report": {"--split": (None, {"choices": ["test", "val"], "default": "test"})},
    "predict": {
        "paths": (None, {"nargs": "+", "metavar": "PATH", "help": "image files, folders (searched recursively), globs ('photos/**/*.jpg') or a CSV manifest"}),
        "--out": (None, {"metavar": "FILE", "help": "write predictions to FILE.csv or FILE.jsonl"}),
        "--batch-size": (None, {"type": int, "default": 256}),
        "--backend": (None, {"choices": ["torch", "onnx", "torchscript"], "default": "torch", "help": "run the exported artifact (imgcls export) instead of PyTorch; RUN_DIR may be the file"}),
        "--top-k": (None, {"type": int, "default": 5}),
        "--json": (None, {"action": "store_true", "help": "one JSON object per line on stdout"}),
        "--explain": (None, {"metavar": "OUT_DIR", "help": "also write each image's class-activation map (predicted class) as OUT_DIR/<name>.cam.png; needs imgcls[explain]"}),
        "--sort-into": (None, {"metavar": "OUT", "help": "also place each image in OUT/<class>/ when the model is confident, else in OUT/_review/ (hard links or copies; inputs never move), with OUT/review.html"}),
        "--accept": (None, {"type": float, "metavar": "P", "help": "--sort-into: the top probability that sorts an image into its class (default: the model's abstention threshold, else 0.9)"}),
        "--explain-method": (None, {"choices": ["gradcam++", "gradcam", "gradcam-elementwise", "hirescam", "layercam", "eigencam"], "default": "gradcam++"}),
    },
    "lr-find": {"--out": (None, {"help": "folder for lr_find.png/json (default: runs/lr-find-<data>-<model>-<time>)"})},
    "data check": {
        "data": (None, {"metavar": "DATA"}),
        "--out": (None, {"default": "data-check.json", "help": "JSON report path (default: data-check.json)"}),
        "--no-near": (None, {"action": "store_true", "help": "skip the near-duplicate search"}),
        "--html": (None, {"metavar": "FILE", "help": "also write a page with thumbnails of every named image"}),
        "--set": (None, {"nargs": "+", "action": "extend", "default": [], "metavar": "KEY=VALUE", "help": "data.* settings, e.g. data.test_split=0.2"}),
    },
    "data manifest": {
        "folder": (None, {"metavar": "FOLDER"}),
        "--out": (None, {"metavar": "FILE", "help": "the manifest (default FOLDER/labels.csv; in FOLDER or above)"}),
    },
    "data labels": {
        "data": (None, {"metavar": "DATA"}),
        "--folds": (None, {"type": int, "default": 5, "help": "cross-fitting folds (default 5)"}),
        "--time": (None, {"help": "time budget for the whole command, e.g. 4m (default: each fold trains the planned epochs)"}),
        "--rank-by": (None, {"choices": ["self-confidence", "normalized-margin"], "default": "self-confidence", "help": "label quality score the likely errors are ranked by"}),
        "--out": (None, {"metavar": "DIR", "help": "folder for review.csv, review.html, labels.json, probabilities.npz (default: runs/labels-<data>-<time>)"}),
        "--model": ("model.name", {"help": "the model trained per fold (default: the planned one)"}),
        "--pretrained": ("model.pretrained", {"action": "store_const", "const": True, "help": "a linear head per fold on the architecture's ImageNet features (computed once, cached)"}),
        "--weights": ("model.weights", {"metavar": "FILE|RUN_DIR", "help": "a linear head per fold on these weights' features (computed once, cached)"}),
        "--config": (None, {"help": "a YAML file of config sections (see configs/)"}),
        "--set": (None, {"nargs": "+", "action": "extend", "default": [], "metavar": "KEY=VALUE", "help": "config overrides (recipe, data.*), repeatable"}),
    },
    "data apply": {
        "review": (None, {"metavar": "REVIEW_CSV", "help": "review.csv of imgcls data labels, its action column filled: keep, relabel, drop"}),
        "--out": (None, {"required": True, "metavar": "FILE", "help": "the new manifest (in a folder that holds every image)"}),
    },
    "data pack": {
        "data": (None, {"metavar": "DATA"}),
        "--out": (None, {"required": True, "metavar": "DIR", "help": "a new (or empty) folder for <split>-NNNNNN.tar and classes.json"}),
        "--shard-size": (None, {"default": "1GB", "metavar": "SIZE", "help": "start a new shard past this size, e.g. 500MB, 1GB (default 1GB)"}),
        "--set": (None, {"nargs": "+", "action": "extend", "default": [], "metavar": "KEY=VALUE", "help": "data.* settings, e.g. data.image_column=img"}),
    },
    "export": {
        "--format": (None, {"choices": ["onnx", "torchscript"], "default": "onnx"}),
        "--layout": (None, {"choices": ["nhwc", "nchw"], "default": "nhwc", "help": "input layout (default N,H,W,C)"}),
        "--out": (None, {"help": "artifact path (default: RUN_DIR/model.onnx or RUN_DIR/model.torchscript.pt)"}),
        "--check-images": (None, {"metavar": "DIR", "help": "check the artifact on these images (default: the run's validation images; synthetic if gone)"}),
        "--int8": (None, {"action": "store_true", "help": "also write MODEL.int8.onnx (static quantization calibrated on training images); reports accuracy and speed"}),
    },
    "serve": {
        "--host": (None, {"default": "127.0.0.1"}),
        "--port": (None, {"type": int, "default": 8000}),
        "--batch-window-ms": (None, {"type": float, "default": 5.0, "help": "batch requests arriving within this window; 0: off"}),
        "--max-mb": (None, {"type": float, "default": 10.0, "help": "upload size limit per file (MB)"}),
    },
    "models": {"pattern": (None, {"nargs": "?", "default": "*", "help": "wildcard filter, e.g. 'resnet*' or 'timm/*convnext*'"})},
}
SOURCE = ("--data", "--model", "--pretrained", "--weights", "--batch-size", "--config", "--set")  # train, lr-find
# fmt: on


def overrides_of(args: argparse.Namespace) -> dict[str, Any]:
    """--set overrides, then every given flag that names a config key (flags win)."""
    overrides = parse_overrides(getattr(args, "set", []))
    given = {
        k.removeprefix(KEY_PREFIX): v
        for k, v in vars(args).items()
        if k.startswith(KEY_PREFIX) and v is not None
    }
    return overrides | given


def is_rank_zero() -> bool:
    """Under torchrun only rank 0 prints; the others log warnings and errors only."""
    return int(os.environ.get("RANK", "0")) == 0
