"""The names of the files in a run folder, said once (training writes them; eval, predict, export read them)."""

from __future__ import annotations

CONFIG = "config.yaml"
WEIGHTS = "model.safetensors"  # the best model's weights...
META = "model.json"  # ...and what it needs to be used: classes, input size, normalization, TTA, temperature
STATE = "state.pt"  # the full training state, for --resume
METRICS = "metrics.csv"
CURVES = "curves.png"
TENSORBOARD = "tensorboard"
MLFLOW = "mlflow.json"  # the MLflow run this run logs to (log.mlflow), for --resume
LR_FIND_PLOT = "lr_find.png"
LR_FIND_JSON = "lr_find.json"
EXPORTS = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}


def _suffix(split: str) -> str:
    return "" if split == "test" else f"-{split}"


def eval_json(split: str) -> str:
    """eval.json for the test split, eval-<split>.json for another."""
    return f"eval{_suffix(split)}.json"


def report_md(split: str) -> str:
    return f"report{_suffix(split)}.md"


def report_html(split: str) -> str:
    return f"report{_suffix(split)}.html"


def confusion_png(split: str) -> str:
    return f"confusion_matrix{_suffix(split)}.png"


def pr_curves_png(split: str) -> str:
    """Multi-label runs: each label's precision-recall curve (instead of a confusion matrix)."""
    return f"pr_curves{_suffix(split)}.png"
