"""Turns metrics into files a person reads: PNG plots, a Markdown summary and a terminal table.

Never touches a model: its inputs are the history rows and the evaluation dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_curves(history: list[dict[str, float]], path: str | Path) -> None:
    """Loss and accuracy per epoch, train vs validation."""
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "acc")):
        for split in ("train", "val"):
            values = [row.get(f"{split}_{metric}") for row in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, marker="o", label=split)
        ax.set(xlabel="epoch", ylabel=metric, title={"loss": "Loss", "acc": "Accuracy"}[metric])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lr_find(result: dict[str, Any], path: str | Path) -> None:
    """The LR range test: smoothed loss against learning rate (log scale), with the suggestion marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result["lrs"], result["losses"])
    ax.axvline(
        result["suggestion"],
        color="tab:red",
        linestyle="--",
        label=f"suggested lr {result['suggestion']:.2g}",
    )
    ax.set(xscale="log", xlabel="learning rate", ylabel="loss (smoothed)", title="LR range test")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(matrix: list[list[int]], classes: list[str], path: str | Path, title: str = "") -> None:
    """Row-normalized confusion matrix, with counts written in the cells for up to 20 classes."""
    counts = np.asarray(matrix)
    rows = counts.sum(1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    n = len(classes)
    side = min(4 + 0.55 * n, 30)
    fig, ax = plt.subplots(figsize=(side, side * 0.85))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(n)
    ax.set_xticks(ticks, classes if n <= 50 else [""] * n, rotation=45, ha="right")
    ax.set_yticks(ticks, classes if n <= 50 else [""] * n)
    ax.set(xlabel="predicted", ylabel="true", title=title or "Confusion matrix (row-normalized)")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_summary(result: dict[str, Any], title: str) -> str:
    """A readable report.md: headline metrics, then per-class precision/recall/F1."""
    lines = [f"# {title}", ""]
    for key in ("num_samples", "accuracy", "top5_accuracy", "precision_macro", "recall_macro", "f1_macro"):
        if key in result:
            lines.append(f"- **{key}**: {result[key]}")
    lines += ["", "| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
    for name, m in result["per_class"].items():
        lines.append(
            f"| {name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |"
        )
    lines += ["", "![curves](curves.png)", "", "![confusion matrix](confusion_matrix.png)", ""]
    return "\n".join(lines)


def print_table(result: dict[str, Any], title: str) -> None:
    """The evaluation as a terminal table (to stderr, so stdout stays clean for --json)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("class", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, m in result["per_class"].items():
        table.add_row(
            name, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", str(m["support"])
        )
    table.add_section()
    table.add_row(
        "macro avg",
        f"{result['precision_macro']:.4f}",
        f"{result['recall_macro']:.4f}",
        f"{result['f1_macro']:.4f}",
        str(result["num_samples"]),
    )
    console = Console(stderr=True)
    console.print(table)
    top5 = f"   top-5 {result['top5_accuracy']:.4f}" if "top5_accuracy" in result else ""
    console.print(f"accuracy {result['accuracy']:.4f}{top5}   ({result['num_samples']} images)")


def data_report_text(report: dict[str, Any], limit: int = 5) -> str:
    """The data doctor's findings as plain lines: errors first, each with its first `limit` paths or pairs."""
    lines = (
        [f"{report['dataset']}: {report['num_images']} images checked in {report['seconds']}s"]
        if report["num_images"]
        else []
    )
    for split, counts in report["class_counts"].items():
        shown = ", ".join(f"{c} {n}" for c, n in list(counts.items())[:12])
        more = f", ... ({len(counts)} classes)" if len(counts) > 12 else ""
        lines.append(f"  {split}: {shown}{more}")
    stats = report["stats"]
    if "mean" in stats:
        lines.append(
            f"  sizes {stats['width']['min']}-{stats['width']['max']} x {stats['height']['min']}-{stats['height']['max']} px, "
            f"{stats['channels']} channel(s), mean {stats['mean']} std {stats['std']}"
        )
    ordered = sorted(report["findings"], key=lambda f: f["severity"] != "error")
    for f in ordered:
        lines.append(f"{f['severity'].upper()} {f['kind']}: {f['message']} ({f['count']})")
        for item in f["items"][:limit]:
            lines.append("    " + (" <-> ".join(item) if isinstance(item, list) else str(item)))
        if f["count"] > limit:
            lines.append(f"    ... {f['count'] - limit} more in the JSON report")
    errors = sum(f["severity"] == "error" for f in report["findings"])
    warnings = len(report["findings"]) - errors
    lines.append(
        "clean: no problems found" if not report["findings"] else f"{errors} error(s), {warnings} warning(s)"
    )
    return "\n".join(lines)
