"""Turns metrics into files a person reads: PNG plots, a Markdown summary and a terminal table.

Never touches a model: its inputs are the history rows and the evaluation dict.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from imgcls.data.doctor import Record  # noqa: E402
from imgcls.utils import run_files  # noqa: E402
from imgcls.utils.templates import render  # noqa: E402


def plot_curves(history: list[dict[str, float]], path: str | Path) -> None:
    """Loss and accuracy per epoch, train vs validation."""
    fig = _curves_figure(history)
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
    fig = confusion_figure(
        matrix, classes, normalized=True, title=title or "Confusion matrix (row-normalized)"
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_summary(result: dict[str, Any], title: str, split: str = "test") -> str:
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
    lines += [
        "",
        f"![curves]({run_files.CURVES})",
        "",
        f"![confusion matrix]({run_files.confusion_png(split)})",
        "",
    ]
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
    if "abstention" in result:
        console.print(abstention_text(result["abstention"]))


def abstention_text(a: dict[str, Any]) -> str:
    accuracy = f"{a['accuracy_answered']:.4f}" if a["accuracy_answered"] is not None else "n/a"
    total = a["answered"] + a["abstained"]
    return (
        f"abstained on {a['abstained']} of {total} images (confidence below {a['threshold']:.4f}); "
        f"the {_pct(a['coverage'])} answered have accuracy {accuracy}"
    )


def risk_coverage_svg(curve: dict[str, Any], abstention: dict[str, Any] | None) -> str:
    """The risk-coverage curve as a small SVG data URI: error rate of the answered images against the share
    answered (most confident first), with the abstention threshold's point. A line and a few ticks: drawn
    directly, a fiftieth of what a matplotlib figure costs every report."""
    w, h, left, top = 360, 240, 64, 24
    top_risk = max([*curve["risk"], 1 - (abstention or {}).get("accuracy_answered", 1) or 0, 0.01])
    top_risk = math.ceil(top_risk * 20) / 20  # the y axis ends at the next 0.05

    def xy(coverage: float, risk: float) -> str:  # "x,y" in the drawing
        return f"{left + coverage * w:.1f},{top + h - risk / top_risk * h:.1f}"

    points = " ".join(xy(c, r) for c, r in zip(curve["coverage"], curve["risk"]))
    ticks = "".join(
        f'<text x="{left + f * w:.0f}" y="{top + h + 16}" text-anchor="middle">{f:g}</text>'
        f'<text x="{left - 6}" y="{top + h - f * h + 4:.0f}" text-anchor="end">{f * top_risk:.3g}</text>'
        for f in (0, 0.25, 0.5, 0.75, 1)
    )
    dot = ""
    if abstention and abstention.get("accuracy_answered") is not None:
        cx, cy = xy(abstention["coverage"], 1 - abstention["accuracy_answered"]).split(",")
        dot = f'<circle cx="{cx}" cy="{cy}" r="4" fill="#d62728"/>'
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w + left + 20}" height="{h + top + 40}" '
        f'font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>'
        f'<text x="{left}" y="14">Risk-coverage (AURC {curve["aurc"]:.4f}){"; red: the abstention threshold" if dot else ""}</text>'
        f'<path d="M{left},{top}V{top + h}H{left + w}" fill="none" stroke="#333"/>{ticks}'
        f'<polyline points="{points}" fill="none" stroke="#1f77b4" stroke-width="2"/>{dot}'
        f'<text x="{left + w / 2}" y="{top + h + 32}" text-anchor="middle">coverage (share answered)</text>'
        f'<text transform="translate(12,{top + h / 2}) rotate(-90)" text-anchor="middle">risk (error rate)</text></svg>'
    )
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


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
    labels = report.get("labels")
    if labels:
        no_label = ", ".join(f"{n} {split}" for split, n in labels["no_label"].items())
        pairs = ", ".join(f"{'+'.join(p['labels'])} {p['count']}" for p in labels["frequent_pairs"][:5])
        lines.append(
            f"  multi-label: {labels['labels_per_image'].get('train', 0)} labels per training image; "
            f"images with no label: {no_label}; frequent pairs: {pairs or 'none'}"
        )
    stats = report["stats"]
    if "mean" in stats:
        lines.append(
            f"  sizes {stats['width']['min']}-{stats['width']['max']} x {stats['height']['min']}-{stats['height']['max']} px, "
            f"{stats['channels']} channel(s), mean {stats['mean']} std {stats['std']}"
        )
    ordered = sorted(report["findings"], key=lambda f: f["severity"] != "error")
    for f in ordered:
        lines.append(f"{f['severity'].upper()} {f['kind']}: {f['message']} ({f['count']})")
        lines += ["    " + Record(**item).text() for item in f["items"][:limit]]
        if f["count"] > limit:
            lines.append(f"    ... {f['count'] - limit} more in the JSON report")
    errors = sum(f["severity"] == "error" for f in report["findings"])
    warnings = len(report["findings"]) - errors
    lines.append(
        "clean: no problems found" if not report["findings"] else f"{errors} error(s), {warnings} warning(s)"
    )
    return "\n".join(lines)


def thumbnail_uri(pixels: np.ndarray, side: int = 96, fmt: str = "PNG") -> str:
    """A small PNG (or JPEG: a third of the size for colourful overlays) data URI of an (H, W[, C]) uint8
    image; small images are enlarged without smoothing."""
    from PIL import Image

    image = Image.fromarray(pixels.squeeze(-1) if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels)
    scale = side / max(image.size)
    image = image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS,
    )
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def _drawn(path: Path | None) -> str | None:
    """A PNG file already drawn, as a data URI (None where there is none)."""
    if path is None or not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _figure_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def confusion_figure(matrix: list[list[int]], classes: list[str], normalized: bool, title: str = ""):
    """The confusion matrix (rows: true class), row-normalized or as counts; cell values for up to 20 classes."""
    counts = np.asarray(matrix)
    rows = counts.sum(1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    values = norm if normalized else counts
    n = len(classes)
    side = min(4 + 0.55 * n, 30)
    fig, ax = plt.subplots(figsize=(side, side * 0.85))
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalized else None)
    labels = classes if n <= 50 else [""] * n
    ax.set_xticks(np.arange(n), labels, rotation=45, ha="right")
    ax.set_yticks(np.arange(n), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title or ("row-normalized" if normalized else "counts"))
    if n <= 20:
        threshold = 0.5 if normalized else (counts.max() or 1) / 2
        for i, j in zip(*np.nonzero(counts)):
            text = f"{norm[i, j]:.2f}" if normalized else str(counts[i, j])
            dark = values[i, j] > threshold
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def _reliability_figure(calibrations: dict[str, dict[str, Any]]):
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    for name, cal in calibrations.items():
        bins = cal["bins"]
        ax.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            marker="o",
            label=f"{name} (ECE {cal['ece']:.4f})",
        )
    ax.set(xlabel="confidence", ylabel="accuracy", title="Reliability diagram", xlim=(0, 1), ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def _curves_figure(history: list[dict[str, float]]):
    """Loss and accuracy per epoch, train vs validation (curves.png and the HTML report)."""
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "acc")):
        series = [(f"train_{metric}", "train"), (f"val_{metric}", "val")]
        if metric == "acc":  # multi-label: exact match in training, mean average precision on validation
            series.append(("val_map", "val mAP"))
        for key, name in series:
            values = [row.get(key) for row in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, marker="o", label=name)
        ax.set(xlabel="epoch", ylabel=metric, title={"loss": "Loss", "acc": "Accuracy"}[metric])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def render_html(
    result: dict[str, Any],
    history: list[dict[str, float]],
    confusion_png: Path | None = None,
    curves_png: Path | None = None,
) -> str:
    """One self-contained HTML page (figures and thumbnails inlined) from an evaluation and its history.

    `confusion_png`, `curves_png`: the row-normalized confusion matrix and the training curves already drawn
    (`plot_confusion`, `plot_curves`), inlined as they are rather than drawn again (a figure costs a quarter
    of a second, the most of a small run's report).
    """
    classes = list(result["per_class"])
    cals = {"as trained": result["calibration"]} if "calibration" in result else {}
    if "calibration_after" in result:
        cals[f"temperature {result.get('temperature', 1):g}"] = result["calibration_after"]
    tta = result.get("tta")
    samples = result.get("samples", {})
    return render(
        "report.html",
        title=f"imgcls report: {result.get('model', '')} on {result.get('data', '')} ({result.get('split', '')} split)",
        headline=_headline(result),
        per_class=sorted(result["per_class"].items(), key=lambda kv: (kv[1]["f1"], kv[0])),
        confusion_figures=[
            ("counts", _figure_uri(confusion_figure(result["confusion_matrix"], classes, normalized=False))),
            (
                "norm",
                _drawn(confusion_png)
                or _figure_uri(confusion_figure(result["confusion_matrix"], classes, normalized=True)),
            ),
        ],
        top_confusions=result.get("top_confusions", []),
        classes=classes,
        gallery=[
            ("Most confidently wrong", samples.get("confident_mistakes", [])),
            ("Least confident correct", samples.get("uncertain_correct", [])),
            ("Most-confused pairs: their most confident examples", samples.get("confused_pairs", [])),
        ],
        maps=result.get("maps", "not computed"),
        cams=any("cam_predicted" in row for rows in samples.values() for row in rows),
        calibration_text=" ".join(f"ECE {name}: {c['ece']:.4f}." for name, c in cals.items()),
        reliability_uri=_figure_uri(_reliability_figure(cals)),
        curves_uri=_drawn(curves_png) or (_figure_uri(_curves_figure(history)) if history else None),
        risk_coverage_uri=risk_coverage_svg(result["risk_coverage"], result.get("abstention"))
        if "risk_coverage" in result
        else None,
        abstention=result.get("abstention") and abstention_text(result["abstention"]),
        ood=result.get("ood"),
        tta=tta
        and [
            (mode, _pct(score), f"{100 * (score - tta['off']):+.2f}")
            for mode, score in tta.items()
            if mode != "off"
        ],
        tta_off=tta and _pct(tta["off"]),
    )


def _headline(result: dict[str, Any]) -> list[tuple[str, str]]:
    ci = result.get("accuracy_ci", [0, 0])
    rows = [("accuracy", f"{_pct(result['accuracy'])} (95% CI {_pct(ci[0])} - {_pct(ci[1])})")]
    if "top5_accuracy" in result:
        t5 = result.get("top5_ci", [0, 0])
        rows.append(
            ("top-5 accuracy", f"{_pct(result['top5_accuracy'])} (95% CI {_pct(t5[0])} - {_pct(t5[1])})")
        )
    for avg in ("macro", "weighted"):
        values = " / ".join(f"{result[f'{m}_{avg}']:.4f}" for m in ("precision", "recall", "f1"))
        rows.append((f"{avg} precision / recall / F1", values))
    rows.append(("samples", str(result["num_samples"])))
    return rows + [(k, str(v)) for k, v in result.get("meta", {}).items()]


def render_data_html(report: dict[str, Any], thumbnails: dict[str, str]) -> str:
    """The data doctor's report as one self-contained page, with thumbnails of the files it names."""
    counts = report["class_counts"]
    return render(
        "data_check.html",
        report=report,
        classes=list(next(iter(counts.values()), {})),
        findings=sorted(report["findings"], key=lambda f: f["severity"] != "error"),
        thumbnails=thumbnails,
    )
