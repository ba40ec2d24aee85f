"""Using a trained run: `load`, `predict`, `export` (checked against predict) and `serve`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from imgcls import config as config_lib
from imgcls.api.runs import run_config
from imgcls.data.datasets import open_dataset
from imgcls.data.types import DataBundle, DataError
from imgcls.inference import samples
from imgcls.inference.explain import DEFAULT_METHOD, overlay
from imgcls.inference.export import ExportResult, quantize_int8
from imgcls.inference.export import export as export_model
from imgcls.inference.inputs import PredictionWriter, inputs_with_labels
from imgcls.inference.predict import ArtifactPredictor, Predictor
from imgcls.inference.sorting import Sorter
from imgcls.models import ModelMeta
from imgcls.models.checkpoint import CheckpointError
from imgcls.reporting import thumbnail_uri
from imgcls.utils import run_files
from imgcls.utils.progress import progress_bar

log = logging.getLogger("imgcls")
DEFAULT_ACCEPT = (
    0.9  # --sort-into: the top probability that sorts an image, where the model has no abstention
)


def load(run_dir: str | Path, device: str = "auto") -> Predictor:
    """The trained model of a run folder, ready to predict on paths, PIL images or tensors.

    Example:
        >>> imgcls.load("runs/my-run").predict(["cat.jpg"])[0]["label"]              # doctest: +SKIP
    """
    return Predictor.from_run(run_dir, device=device)


def predict(
    run_dir: str | Path,
    inputs: Sequence[str | Path],
    *,
    out: str | Path | None = None,
    top_k: int = 5,
    device: str = "auto",
    batch_size: int = 256,
    on_prediction: Callable[[dict], None] | None = None,
    backend: str = "torch",
    explain: str | Path | None = None,
    explain_method: str = DEFAULT_METHOD,
    sort_into: str | Path | None = None,
    accept: float | None = None,
) -> dict[str, Any]:
    """Classifies files, folders (recursive), globs and CSV manifests in batches (decoding in threads).

    `backend`: torch (the run folder), or onnx/torchscript (its exported artifact, or an artifact path).
    Writes `out` (.csv or .jsonl) as it goes; calls `on_prediction(pred)` per image (the CLI prints);
    returns counts, the skipped files and, where true labels are known (class folders, a CSV label
    column), the accuracy (of the images answered, where the model abstains: "abstained" counts the rest).
    `explain`: a folder that gets one PNG per image, the class-activation map of the predicted class over
    the square the model saw (its path is in each prediction as "explanation"). `sort_into`: a folder that
    gets each image (hard-linked, else copied) in `<class>/` when the model is confident (top probability
    at least `accept`; default: the model's abstention threshold, else 0.9) and in `_review/` otherwise,
    with `review.html` listing the review queue most uncertain first; "sorting" in the result counts them.

    Example:
        >>> imgcls.predict("runs/my-run", ["photos/"], out="predictions.csv")["count"]   # doctest: +SKIP
    """
    predictor = _predictor(run_dir, device, backend)
    meta = predictor.meta
    files, labels, skipped = inputs_with_labels(
        inputs, meta.classes, meta.label_sep if meta.multilabel else None
    )
    overlays = OverlayWriter(predictor, explain, explain_method) if explain else None  # fails early
    abstains = meta.abstain_threshold is not None
    writer = PredictionWriter(out, meta.multilabel, meta.label_sep, abstains) if out else None
    tally = _Tally(meta, _sorter(sort_into, accept, meta))
    try:
        with progress_bar(len(files), "predicting") as advance:
            for preds, bad in predictor.predict_stream(files, top_k=top_k, batch_size=batch_size):
                skipped += bad
                if overlays:
                    overlays.write(preds)
                for pred in preds:
                    truth = labels.get(Path(pred["path"]))
                    if writer:
                        writer.write(pred, truth)
                    if on_prediction:
                        on_prediction(pred)
                    tally.add(pred, truth)
                advance(len(preds) + len(bad))
    finally:
        if writer:
            writer.close()
    if skipped:
        log.warning("skipped %d path(s):\n%s", len(skipped), "\n".join(f"  {p}: {why}" for p, why in skipped))
    return {**tally.summary(), "skipped": skipped}


@dataclass
class _Tally:
    """What `predict` counts as the predictions go by (and the sorter it hands them to)."""

    meta: ModelMeta
    sorter: Sorter | None
    count: int = 0
    abstained: int = 0
    labelled: int = 0  # answered images with a known label...
    correct: int = 0  # ...and how many of them were right
    sorted_right: list[bool] = field(default_factory=list)  # labelled images sorted into a class folder

    def add(self, pred: dict[str, Any], truth: str | None) -> None:
        self.count += 1
        self.abstained += "abstained" in pred
        if self.sorter:
            self.sorter.add(pred)
            if truth is not None and not pred["to_review"]:
                self.sorted_right.append(pred["label"] == truth)
        if truth is not None and "abstained" not in pred:
            self.labelled += 1
            self.correct += _is_right(pred, truth, self.meta)

    def summary(self) -> dict[str, Any]:
        meta, summary = self.meta, {"count": self.count, "labelled": self.labelled}
        if meta.abstain_threshold is not None:
            summary["abstained"] = self.abstained
            log.info("abstained on %d of %d images (%s)", self.abstained, self.count, meta.abstain_rule)
        if self.sorter:
            summary["sorting"] = _finish_sorting(self.sorter, self.sorted_right, meta)
        if self.labelled:
            name = "exact_match" if meta.multilabel else "accuracy"
            summary[name] = round(self.correct / self.labelled, 6)
            log.info("%s %.4f on %d labelled images", name.replace("_", " "), summary[name], self.labelled)
        return summary


def _sorter(out: str | Path | None, accept: float | None, meta: ModelMeta) -> Sorter | None:
    if out is None:
        return None
    if meta.multilabel:
        raise config_lib.ConfigError(
            "--sort-into sorts images into one class folder each: not for multi-label models"
        )
    if accept is None:
        accept = meta.abstain_threshold if meta.abstain_threshold is not None else DEFAULT_ACCEPT
        log.info("sorting: images with a top probability of at least %.4f go to their class folder", accept)
    elif not 0 <= accept <= 1:
        raise config_lib.ConfigError(f"--accept must be a probability in [0, 1], not {accept}")
    return Sorter(out, accept)


def _finish_sorting(sorter: Sorter, sorted_right: list[bool], meta: ModelMeta) -> dict[str, Any]:
    result = sorter.finish(lambda pixels: thumbnail_uri(pixels, side=96), meta.in_chans)
    if sorted_right:
        result["sorted_accuracy"] = round(sum(sorted_right) / len(sorted_right), 6)
        result["sorted_labelled"] = len(sorted_right)
    log.info(
        "sorted %d image(s) into class folders of %s, %d to review (%s)%s",
        result["sorted"],
        sorter.out,
        result["review"],
        result["page"],
        f"; {result['kept']} already there" if result["kept"] else "",
    )
    return result


def _is_right(pred: dict[str, Any], truth: str, meta: ModelMeta) -> bool:
    """The predicted class is the true one; multi-label: the predicted set is the true set (exact match)."""
    if meta.multilabel:
        return set(pred["labels"]) == {t.strip() for t in truth.split(meta.label_sep)} - {""}
    return pred["label"] == truth


class OverlayWriter:
    """Writes each prediction's class-activation overlay as OUT/<file stem>.cam.png (a number added where two
    files share a stem), enlarged to at least 224 px so a 28 px image can be read."""

    def __init__(self, predictor: Predictor, folder: str | Path, method: str) -> None:
        self.predictor, self.explainer = predictor, predictor.explainer(method)
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a file of that name, no permission, a read-only disk
            raise config_lib.ConfigError(
                f"--explain {folder}: cannot make that folder ({e.strerror or e})"
            ) from None
        self.used: set[str] = set()

    def write(self, preds: list[dict[str, Any]]) -> None:
        if not preds:
            return
        views = torch.stack([self.predictor.preprocess(pred["path"]) for pred in preds])
        targets = [self.predictor.classes.index(pred["top_k"][0]["label"]) for pred in preds]
        for pred, view, cam in zip(preds, views, self.explainer.maps(views, targets)):
            path = self._name(Path(pred["path"]).stem)
            Image.fromarray(overlay(view.permute(1, 2, 0).numpy(), cam, side=224)).save(path)
            pred["explanation"] = str(path)

    def _name(self, stem: str) -> Path:
        name, n = f"{stem}.cam.png", 1
        while name in self.used:
            name, n = f"{stem}-{n}.cam.png", n + 1
        self.used.add(name)
        return self.folder / name


def _predictor(run_dir: str | Path, device: str, backend: str) -> Predictor:
    """PyTorch from the run folder, or the exported artifact (`imgcls export`) for onnx/torchscript."""
    if backend == "torch":
        return Predictor.from_run(run_dir, device=device)
    path = Path(run_dir)
    if path.is_dir():
        path = path / run_files.EXPORTS[backend]
    if not path.is_file():
        raise config_lib.ConfigError(
            f"no exported model at {path}; run: imgcls export {run_dir} --format {backend}"
        )
    return ArtifactPredictor(path)


def export(
    run_dir: str | Path,
    fmt: str = "onnx",
    *,
    out: str | Path | None = None,
    layout: str = "nhwc",
    check_limit: int = 500,
    check_images: str | Path | None = None,
    int8: bool = False,
) -> ExportResult:
    """Exports a run's model with its preprocessing in the graph and checks it against `imgcls predict`.

    The check feeds the artifact raw images of many shapes: up to `check_limit` images of `check_images`
    (a folder), else of the run's validation split (else test, else train) resized to photo-like shapes,
    else, when the run's data is gone, synthetic images (said in the log and in `result.check_source`);
    always also a 4000x3000, a tiny and two extreme-aspect images. Raises ExportError on disagreement.
    `int8` needs the run's data: its training images calibrate the quantization.

    Example:
        >>> imgcls.export("runs/my-run", "onnx").agreement                           # doctest: +SKIP
        1.0
    """
    run_dir = Path(run_dir)
    if int8 and fmt != "onnx":
        raise config_lib.ConfigError("--int8 needs --format onnx (onnxruntime static quantization)")
    predictor = Predictor.from_run(run_dir, device="cpu")
    meta = predictor.meta
    if int8 and meta.multilabel:
        raise config_lib.ConfigError("--int8 measures top-1 accuracy: it is for single-label models only")
    bundle = _run_data(run_dir, meta.classes)
    images, source = _check_images(check_images, check_limit, bundle, meta)
    out = Path(out) if out else run_dir / run_files.EXPORTS[fmt]
    result = export_model(predictor.model, out, fmt, layout, [*images, *samples.extremes(meta.in_chans)])
    result.check_source = source
    if int8:
        result.int8 = _quantize(out, bundle, meta, layout, check_limit)
    log.info(
        "exported %s: %s agreement with PyTorch %.4f%%, max probability difference %.2e on %d images (%s)",
        out,
        result.agreement_of,
        100 * result.agreement,
        result.max_prob_diff,
        result.checked,
        source,
    )
    return result


def _check_images(
    folder: str | Path | None, limit: int, bundle: DataBundle | None, meta: ModelMeta
) -> tuple[list, str]:
    """The raw images an export is checked on, and where they come from (in words)."""
    if folder is not None:
        images = samples.folder_sample(folder, limit, meta.in_chans)
        if not images:
            raise DataError(f"--check-images {folder}: no readable images there")
        return images, str(folder)
    if bundle is not None:
        split_name = next(s for s in ("val", "test", "train") if getattr(bundle, s) is not None)
        images, _ = samples.split_sample(bundle.split(split_name), limit, meta.in_chans)
        return images, f"{split_name} split of {bundle.name}"
    log.warning(
        "the run's data is not available: the export is checked on synthetic images only; "
        "pass --check-images DIR to check it on real ones"
    )
    return samples.synthetic(meta.in_chans), "synthetic images only"


def _run_data(run_dir: Path, classes: list[str]) -> DataBundle | None:
    """The run's dataset (file lists or built-in tensors, nothing decoded), or None where it is gone."""
    try:
        cfg = run_config(run_dir)
        return open_dataset(replace(cfg.data, strict=False)).with_classes(classes)
    except (DataError, CheckpointError, config_lib.ConfigError) as e:
        log.info("run data unavailable: %s", e)
        return None


def _quantize(
    out: Path, bundle: DataBundle | None, meta: ModelMeta, layout: str, limit: int
) -> dict[str, Any]:
    """int8 calibrated on a sample of training images, its accuracy measured on held-out ones."""
    if bundle is None:
        raise DataError("--int8 calibrates on the run's training images, which are not available here")
    held_out = bundle.val or bundle.test or bundle.train
    calibration, _ = samples.split_sample(bundle.train, 512, meta.in_chans, seed=1)
    check, labels = samples.split_sample(held_out, limit, meta.in_chans)
    q = quantize_int8(
        out,
        out.with_suffix(".int8.onnx"),
        samples.squares(calibration, meta.input_size),
        samples.squares(check, meta.input_size),
        labels,
        layout,
    )
    log.info(
        "int8: accuracy %.4f -> %.4f, top-1 agreement %.4f, %s -> %s images/s (%.2fx)",
        q["accuracy_fp32"],
        q["accuracy_int8"],
        q["top1_agreement"],
        q["images_per_s_fp32"],
        q["images_per_s_int8"],
        q["speedup"],
    )
    return q


def serve(
    run_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    batch_window_ms: float = 5.0,
    max_bytes: int = 10 << 20,
) -> None:
    """Serves a run's model over HTTP (FastAPI + uvicorn) until interrupted; loopback only by default.

    Example:
        >>> imgcls.serve("runs/my-run", port=8000)                                   # doctest: +SKIP
    """
    import uvicorn

    from imgcls.inference.serve import ServeConfig, create_app

    app = create_app(
        Predictor.from_run(run_dir, device=device),
        ServeConfig(max_bytes=max_bytes, batch_window_ms=batch_window_ms),
    )
    log.info("serving %s on http://%s:%d (page: /, API docs: /docs)", run_dir, host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
