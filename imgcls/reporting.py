"""Turns metrics into files a person reads: PNG plots, a Markdown summary and a terminal table.

Never touches a model: its inputs are the history rows and the evaluation dict.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from imgcls.utils import run_files  # noqa: E402


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
    lines += ["", f"![curves]({run_files.CURVES})", "", f"![confusion matrix]({run_files.confusion_png(split)})", ""]
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


def thumbnail_uri(pixels: np.ndarray, side: int = 96) -> str:
    """A small PNG data URI of an (H, W[, C]) uint8 image; small images are enlarged without smoothing."""
    from PIL import Image

    image = Image.fromarray(pixels.squeeze(-1) if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels)
    scale = side / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)  # fmt: skip
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _confusion_figure(matrix: list[list[int]], classes: list[str], normalized: bool):
    counts = np.asarray(matrix)
    rows = counts.sum(1, keepdims=True)
    values = (
        np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
        if normalized
        else counts
    )
    n = len(classes)
    side = min(12, max(4.5, 0.45 * n + 2))
    fig, ax = plt.subplots(figsize=(side, side * 0.85))
    im = ax.imshow(values, cmap="Blues")
    labels = classes if n <= 50 else [""] * n
    ax.set_xticks(np.arange(n), labels, rotation=45, ha="right")
    ax.set_yticks(np.arange(n), labels)
    ax.set(xlabel="predicted", ylabel="true", title="row-normalized" if normalized else "counts")
    if n <= 20:
        top = values.max() or 1
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    text = f"{values[i, j]:.2f}" if normalized else str(counts[i, j])
                    ax.text(j, i, text, ha="center", va="center", fontsize=7,
                            color="white" if values[i, j] > top / 2 else "black")  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def _reliability_figure(calibrations: dict[str, dict[str, Any]]):
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    for name, cal in calibrations.items():
        bins = cal["bins"]
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o",
                label=f"{name} (ECE {cal['ece']:.4f})")  # fmt: skip
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
        for split in ("train", "val"):
            values = [row.get(f"{split}_{metric}") for row in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, marker="o", label=split)
        ax.set(xlabel="epoch", ylabel=metric, title={"loss": "Loss", "acc": "Accuracy"}[metric])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def render_html(result: dict[str, Any], history: list[dict[str, float]]) -> str:
    """One self-contained HTML page (figures and thumbnails inlined) from an evaluation and its history."""
    e = html.escape
    classes = list(result["per_class"])
    ci = result.get("accuracy_ci", [0, 0])
    head = [
        ("accuracy", f"{_pct(result['accuracy'])} (95% CI {_pct(ci[0])} - {_pct(ci[1])})"),
    ]
    if "top5_accuracy" in result:
        t5 = result.get("top5_ci", [0, 0])
        head.append(
            ("top-5 accuracy", f"{_pct(result['top5_accuracy'])} (95% CI {_pct(t5[0])} - {_pct(t5[1])})")
        )
    for avg in ("macro", "weighted"):
        head.append(
            (
                f"{avg} precision / recall / F1",
                " / ".join(f"{result[f'{m}_{avg}']:.4f}" for m in ("precision", "recall", "f1")),
            )
        )
    meta = result.get("meta", {})
    head += [("samples", str(result["num_samples"]))] + [(k, str(v)) for k, v in meta.items()]
    sections = [
        f"<section id='headline'><h2>Headline</h2><table>{''.join(f'<tr><th>{e(k)}</th><td>{e(v)}</td></tr>' for k, v in head)}</table></section>"
    ]

    worst_first = sorted(result["per_class"].items(), key=lambda kv: (kv[1]["f1"], kv[0]))
    rows = "".join(
        f"<tr><td>{e(c)}</td><td>{m['precision']:.4f}</td><td>{m['recall']:.4f}</td><td>{m['f1']:.4f}</td><td>{m['support']}</td></tr>"
        for c, m in worst_first
    )
    sections.append(
        f"<section id='per-class'><h2>Per class (worst F1 first)</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>{rows}</table></section>"
    )

    pairs = "".join(
        f"<li>{e(p['true'])} &rarr; {e(p['predicted'])}: {p['count']}</li>"
        for p in result.get("top_confusions", [])
    )
    figs = "".join(
        f"<img alt='confusion matrix ({kind})' src='{_figure_uri(_confusion_figure(result['confusion_matrix'], classes, kind == 'norm'))}'>"
        for kind in ("counts", "norm")
    )
    sections.append(
        f"<section id='confusion'><h2>Confusion matrix</h2>{figs}<h3>Most frequent confusions</h3><ol>{pairs or '<li>none</li>'}</ol></section>"
    )

    gallery = []
    for key, title in (
        ("confident_mistakes", "Most confidently wrong"),
        ("uncertain_correct", "Least confident correct"),
    ):
        cards = "".join(
            f"<figure><img alt='sample {s['index']}' src='{s.get('thumbnail', '')}'><figcaption>true <b>{e(classes[s['true']])}</b><br>"
            f"predicted <b>{e(classes[s['predicted']])}</b> {s['probability']:.3f}<br><small>{e(str(s.get('path', '')))}</small></figcaption></figure>"
            for s in result.get("samples", {}).get(key, [])
        )  # fmt: skip
        gallery.append(f"<h3>{title}</h3><div class='gallery'>{cards or 'none'}</div>")
    sections.append(f"<section id='mistakes'><h2>Mistakes and doubts</h2>{''.join(gallery)}</section>")

    cals = {"as trained": result["calibration"]} if "calibration" in result else {}
    if "calibration_after" in result:
        cals[f"temperature {result.get('temperature', 1):g}"] = result["calibration_after"]
    cal_text = " ".join(f"ECE {name}: {c['ece']:.4f}." for name, c in cals.items())
    sections.append(
        f"<section id='calibration'><h2>Calibration</h2><p>{e(cal_text)}</p><img alt='reliability diagram' src='{_figure_uri(_reliability_figure(cals))}'></section>"
    )

    curves = (
        f"<img alt='training curves' src='{_figure_uri(_curves_figure(history))}'>"
        if history
        else "<p>no training history (metrics.csv) found</p>"
    )
    sections.append(f"<section id='curves'><h2>Training curves</h2>{curves}</section>")
    if "tta" in result:
        t = result["tta"]
        sections.append(
            f"<section id='tta'><h2>Test-time augmentation</h2><p>accuracy without TTA {_pct(t['off'])}, with flip TTA {_pct(t['flip'])} ({100 * (t['flip'] - t['off']):+.2f} points)</p></section>"
        )
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}img{max-width:100%}"
             ".gallery{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;width:140px;font-size:12px}"
             "figure img{width:128px;image-rendering:pixelated;border:1px solid #999}")  # fmt: skip
    title = f"imgcls report: {result.get('model', '')} on {result.get('data', '')} ({result.get('split', '')} split)"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{style}</style></head><body><h1>{e(title)}</h1>{''.join(sections)}</body></html>"


def render_data_html(report: dict[str, Any], thumbnails: dict[str, str]) -> str:
    """The data doctor's report as one self-contained page, with thumbnails of the files it names."""
    e = html.escape

    def item_html(item: Any) -> str:
        paths = item if isinstance(item, list) else [item]
        cells = []
        for path in paths:
            text = str(path)
            uri = thumbnails.get(
                text.split(": ", 1)[1] if text.startswith(("train: ", "val: ", "test: ")) else text
            )
            img = f"<img alt='' src='{uri}'>" if uri else ""
            cells.append(f"<figure>{img}<figcaption>{e(str(path))}</figcaption></figure>")
        return f"<div class='item'>{' &harr; '.join(cells)}</div>"

    parts = [f"<h1>Data check: {e(report['dataset'])}</h1>",
             f"<p>{report['num_images']} images in {report['seconds']} s: "
             f"<b>{'no errors' if report['ok'] else 'errors found'}</b></p>"]  # fmt: skip
    counts = report["class_counts"]
    classes = list(next(iter(counts.values()), {}))
    header = "".join(f"<th>{e(s)}</th>" for s in counts)
    rows = "".join(
        f"<tr><td>{e(c)}</td>{''.join(f'<td>{counts[s].get(c, 0)}</td>' for s in counts)}</tr>"
        for c in classes
    )
    parts.append(
        f"<section id='classes'><h2>Classes</h2><table><tr><th>class</th>{header}</tr>{rows}</table></section>"
    )
    stats = "".join(
        f"<tr><th>{e(k)}</th><td>{e(json.dumps(v))}</td></tr>" for k, v in report["stats"].items()
    )
    parts.append(f"<section id='stats'><h2>Images</h2><table>{stats}</table></section>")
    findings = sorted(report["findings"], key=lambda f: f["severity"] != "error")
    blocks = "".join(
        f"<div class='finding {f['severity']}'><h3>{f['severity'].upper()} {e(f['kind'])} ({f['count']})</h3>"
        f"<p>{e(f['message'])}</p>{''.join(item_html(i) for i in f['items'][:24])}</div>"
        for f in findings
    )  # fmt: skip
    parts.append(
        f"<section id='findings'><h2>Findings</h2>{blocks or '<p>clean: no problems found</p>'}</section>"
    )
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}.error h3{color:#b00}.warning h3{color:#a60}"
             ".item{display:flex;align-items:center;gap:6px;margin:4px 0}figure{margin:0;display:flex;gap:6px;"
             "align-items:center;font-size:12px}figure img{width:48px;image-rendering:pixelated;border:1px solid #999}")  # fmt: skip
    return f"<!doctype html><html><head><meta charset='utf-8'><title>data check</title><style>{style}</style></head><body>{''.join(parts)}</body></html>"
