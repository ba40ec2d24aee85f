"""Multi-label reports: per-label table, precision-recall curves, label co-occurrence and the most frequent
false positives and negatives, from `imgcls.metrics.multilabel_report`'s result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from imgcls.reporting import _curves_figure, _drawn, _figure_uri
from imgcls.utils import run_files
from imgcls.utils.templates import render

HEADLINE = {
    "map_macro": "mAP (macro)",
    "map_micro": "mAP (micro)",
    "exact_match": "exact-match ratio",
    "hamming_loss": "Hamming loss",
    "f1_micro": "F1 (micro)",
    "f1_macro": "F1 (macro)",
    "precision_macro": "precision (macro)",
    "recall_macro": "recall (macro)",
    "num_samples": "images",
    "no_label": "images with no label",
}


def headline(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [(name, _text(result.get(key))) for key, name in HEADLINE.items() if key in result]
    return rows + [(k, str(v)) for k, v in result.get("meta", {}).items()]


def _text(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def pr_figure(curves: dict[str, dict[str, list[float]]], per_label: dict[str, dict[str, Any]]):
    """Every label's precision-recall curve in one plot, with its AP and its threshold's operating point."""
    fig, ax = plt.subplots(figsize=(7, 5.5))
    for name, curve in curves.items():
        m = per_label[name]
        (line,) = ax.plot(curve["recall"], curve["precision"], lw=1.2, label=f"{name} (AP {m['ap']:.3f})")
        ax.plot([m["recall"]], [m["precision"]], "o", color=line.get_color(), ms=4)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.02))
    ax.set_title("Precision-recall per label (dots: the tuned thresholds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(curves) > 10 else 1, loc="lower left")
    fig.tight_layout()
    return fig


def cooccurrence_figure(matrix: list[list[int]], labels: list[str]):
    """How often two labels are on one image (the diagonal: how often each is on any)."""
    counts = np.asarray(matrix)
    n = len(labels)
    side = min(4 + 0.5 * n, 24)
    fig, ax = plt.subplots(figsize=(side, side * 0.85))
    im = ax.imshow(counts, cmap="Purples")
    names = labels if n <= 50 else [""] * n
    ax.set_xticks(np.arange(n), names, rotation=45, ha="right")
    ax.set_yticks(np.arange(n), names)
    ax.set_title("Label co-occurrence (images with both)")
    if n <= 20:
        for i, j in zip(*np.nonzero(counts)):
            dark = counts[i, j] > counts.max() / 2
            ax.text(
                j,
                i,
                str(counts[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "black",
            )
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def plot_pr_curves(result: dict[str, Any], path: str | Path) -> None:
    fig = pr_figure(result["pr_curves"], result["per_label"])
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_summary(result: dict[str, Any], title: str, split: str = "test") -> str:
    lines = [f"# {title}", ""]
    lines += [f"- **{name}**: {value}" for name, value in headline(result)]
    lines += [
        "",
        "| label | precision | recall | F1 | AP | support | threshold |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in result["per_label"].items():
        lines.append(
            f"| {name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {_text(m['ap'])} "
            f"| {m['support']} | {m['threshold']:.4f} |"
        )
    lines += [
        "",
        f"![curves]({run_files.CURVES})",
        "",
        f"![precision-recall]({run_files.pr_curves_png(split)})",
        "",
    ]
    return "\n".join(lines)


def print_table(result: dict[str, Any], title: str) -> None:
    """The per-label evaluation as a terminal table (on stderr)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("label", "precision", "recall", "F1", "AP", "support", "threshold"):
        table.add_column(col, justify="left" if col == "label" else "right")
    for name, m in result["per_label"].items():
        values = (m["precision"], m["recall"], m["f1"], m["ap"])
        table.add_row(name, *map(_text, values), str(m["support"]), f"{m['threshold']:.3f}")
    console = Console(stderr=True)
    console.print(table)
    console.print(
        f"mAP {_text(result['map_macro'])} (macro), {_text(result['map_micro'])} (micro)   exact match "
        f"{result['exact_match']:.4f}   Hamming loss {result['hamming_loss']:.4f}   ({result['num_samples']} images)"
    )


def render_html(
    result: dict[str, Any], history: list[dict[str, float]], curves_png: Path | None = None
) -> str:
    """The multi-label report page, self-contained (figures and thumbnails inlined; `curves_png`: the
    training curves already drawn)."""
    labels = list(result["per_label"])
    samples = result.get("samples", {})
    frequent = result.get("frequent_mistakes", {})
    return render(
        "report_multilabel.html",
        title=f"imgcls report: {result.get('model', '')} on {result.get('data', '')} ({result.get('split', '')} split, multi-label)",
        headline=headline(result),
        per_label=sorted(result["per_label"].items(), key=lambda kv: (kv[1]["ap"] or 0, kv[0])),
        pr_uri=_figure_uri(pr_figure(result["pr_curves"], result["per_label"])),
        cooccurrence_uri=_figure_uri(cooccurrence_figure(result["cooccurrence"], labels)),
        frequent=[
            ("false positives (predicted, not there)", frequent.get("false_positives", [])),
            ("false negatives (there, not predicted)", frequent.get("false_negatives", [])),
        ],
        gallery=[
            ("Most confident false positives", samples.get("false_positives", [])),
            ("Least confident false negatives", samples.get("false_negatives", [])),
        ],
        maps=result.get("maps", "not computed"),
        curves_uri=_drawn(curves_png) or (_figure_uri(_curves_figure(history)) if history else None),
    )
