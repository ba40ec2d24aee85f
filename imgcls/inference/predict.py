"""Prediction from a run folder: model.json + model.safetensors are all it needs."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from imgcls.config import ConfigError
from imgcls.data.decode import ImageDecodeError, open_image, to_channels
from imgcls.data.memory import decode_files
from imgcls.data.transforms import pil_to_tensor, to_float, to_square, with_channels
from imgcls.inference.explain import DEFAULT_METHOD, Explainer
from imgcls.models import Classifier, ModelMeta, build_model
from imgcls.models.checkpoint import WEIGHTS_FILE, load_weights, read_meta
from imgcls.utils.env import available_cores, select_device

log = logging.getLogger("imgcls")
ImageInput = str | Path | Image.Image | torch.Tensor
SMALL_FILE_BYTES = 8192  # below this average size (thumbnail-sized images) decoding stays in-process


class Predictor:
    """A trained classifier with its preprocessing.

    Example:
        >>> p = Predictor.from_run("runs/fashion-mnist-smallnet-20261123-101500")   # doctest: +SKIP
        >>> p.predict(["shoe.png"], top_k=3)[0]["label"]                              # doctest: +SKIP
        'Sneaker'
    """

    def __init__(self, model: Classifier, meta: ModelMeta) -> None:
        self.model = model.eval()
        self.meta = meta
        self.device = next(model.parameters()).device
        self.square = to_square(meta.input_size)
        self._explainers: dict[str, Explainer] = {}

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "auto") -> Predictor:
        run_dir = Path(run_dir)
        meta = read_meta(run_dir)
        model = build_model(
            meta.name,
            num_classes=meta.num_classes,
            in_chans=meta.in_chans,
            input_size=meta.input_size,
            drop_rate=meta.drop_rate,
            **meta.arch,
        )
        model.set_normalization(meta.mean, meta.std)
        load_weights(model, run_dir / WEIGHTS_FILE)
        model.meta = meta  # classes, tta and the rest, as trained
        return cls(model.to(select_device(device)), model.meta)

    @property
    def classes(self) -> list[str]:
        return self.meta.classes

    def preprocess(self, item: ImageInput) -> torch.Tensor:
        """One image (path, PIL image, or a C,H,W / H,W tensor, uint8 or float in [0, 1]) -> uint8 C,S,S."""
        if isinstance(item, (str, Path)):
            return self.square(open_image(item, self.meta.in_chans))
        if isinstance(item, Image.Image):
            return self.square(to_channels(item, self.meta.in_chans))
        if isinstance(item, torch.Tensor):
            return self._tensor_to_square(item)
        raise TypeError(f"cannot predict on {type(item).__name__}; pass paths, PIL images or tensors")

    @torch.inference_mode()
    def predict(
        self, images: ImageInput | Sequence[ImageInput], top_k: int = 5, batch_size: int = 256
    ) -> list[dict[str, Any]]:
        """Top-k classes and probabilities for each image, in input order.

        Returns:
            One dict per image: {"label": best class, "probability": its probability,
            "top_k": [{"label": ..., "probability": ...}, ...]}.
        """
        if isinstance(images, (str, Path, Image.Image)) or (
            isinstance(images, torch.Tensor) and images.ndim <= 3
        ):
            images = [images]
        elif isinstance(images, torch.Tensor):
            images = list(images)
        out = []
        for chunk in _chunks(images, batch_size):
            out += self._classify_items(chunk, top_k)
        return out

    def _classify_items(self, items: Sequence[ImageInput], top_k: int) -> list[dict[str, Any]]:
        return self._classify(torch.stack([self.preprocess(im) for im in items]), top_k)

    def explain(
        self,
        images: ImageInput | Sequence[ImageInput],
        target: str | int | Sequence[str | int] | None = None,
        method: str = DEFAULT_METHOD,
    ) -> np.ndarray:
        """Class-activation maps: where the model looked, as (N, S, S) float32 arrays in [0, 1] over the square
        it sees (S = its input size; a photo is resized and centre-cropped as for `predict`).

        Args:
            target: the class to explain (a name or index, or one per image); None: the predicted class.
            method: one of imgcls.inference.explain.METHODS (default gradcam++). Needs `pip install 'imgcls[explain]'`.

        Example:
            >>> imgcls.load("runs/my-run").explain(["shirt.jpg"]).shape           # doctest: +SKIP
            (1, 28, 28)
        """
        if isinstance(images, (str, Path, Image.Image)) or (
            isinstance(images, torch.Tensor) and images.ndim <= 3
        ):
            images = [images]
        batch = torch.stack([self.preprocess(im) for im in images])
        targets = (
            target if isinstance(target, (list, tuple)) else None if target is None else [target] * len(batch)
        )
        return self.explainer(method).maps(
            batch, None if targets is None else [self.class_index(t) for t in targets]
        )

    def explainer(self, method: str = DEFAULT_METHOD) -> Explainer:
        """The Explainer for `method`, made once (it holds its own copy of the model)."""
        if method not in self._explainers:
            self._explainers[method] = Explainer(self.model, method)
        return self._explainers[method]

    def class_index(self, target: str | int) -> int:
        """A class name or index -> its index, checked."""
        if isinstance(target, str):
            if target not in self.classes:
                raise ConfigError(f"unknown class {target!r}; the model knows {', '.join(self.classes[:20])}")
            return self.classes.index(target)
        if not 0 <= int(target) < self.meta.num_classes:
            raise ConfigError(f"class index {target} is out of range (0-{self.meta.num_classes - 1})")
        return int(target)

    @torch.inference_mode()
    def _classify(self, batch: torch.Tensor, top_k: int) -> list[dict[str, Any]]:
        """Top-k of a preprocessed uint8 batch (N, C, S, S)."""
        probs = self.meta.probabilities(self.model(to_float(batch.to(self.device))).float())
        return self._top_k(probs, top_k)

    def _top_k(self, probs: torch.Tensor, top_k: int) -> list[dict[str, Any]]:
        """Each image's best class with its top k; multi-label: its label set (each label's probability
        at or above its threshold, most probable first) with their probabilities, and the top k."""
        k = max(1, min(top_k, self.meta.num_classes))
        values, indices = probs.topk(k, dim=1)
        chosen = self.meta.label_sets(probs).tolist() if self.meta.multilabel else None
        out = []
        for n, (vals, idxs) in enumerate(zip(values.tolist(), indices.tolist())):
            top = [{"label": self._name(i), "probability": round(v, 6)} for v, i in zip(vals, idxs)]
            if chosen is None:
                out.append(self._answer(top, vals[0]))
                continue
            present = sorted((i for i, yes in enumerate(chosen[n]) if yes), key=lambda i: -float(probs[n, i]))
            labels = [self._name(i) for i in present]
            out.append(
                {
                    "labels": labels,
                    "probabilities": [round(float(probs[n, i]), 6) for i in present],
                    "top_k": top,
                }
            )
        return out

    def _answer(self, top: list[dict[str, Any]], confidence: float) -> dict[str, Any]:
        """The best class, or with an abstention threshold above the confidence, "I don't know" (label None)
        with the reason."""
        threshold = self.meta.abstain_threshold
        if threshold is None or confidence >= threshold:
            return {"label": top[0]["label"], "probability": top[0]["probability"], "top_k": top}
        why = f"top probability {confidence:.3f} is below {threshold:.3f} ({self.meta.abstain_rule or 'the threshold'})"
        return {"label": None, "probability": top[0]["probability"], "abstained": why, "top_k": top}

    def predict_stream(
        self, paths: Sequence[Path], top_k: int = 5, batch_size: int = 256, workers: int | None = None
    ) -> Iterator[tuple[list[dict[str, Any]], list[tuple[str, str]]]]:
        """Predictions for many files, one batch at a time, in input order: worker processes decode the
        next batches while the model runs on this one (per-file decoding is mostly Python, which threads
        would serialize). Memory stays bounded by a few batches. Yields (predictions with "path", skipped)."""
        cores = available_cores()
        if (
            workers is None
        ):  # tiny files decode faster than a worker can ship them back (bench/predict_files.py)
            sample = [q.stat().st_size for q in paths[:32] if q.is_file()]
            workers = cores if sample and sum(sample) / len(sample) >= SMALL_FILE_BYTES else 0
        chunks = [list(paths[i : i + batch_size]) for i in range(0, len(paths), batch_size)]
        size, channels = self.meta.input_size, self.meta.in_chans
        if workers <= 0 or len(chunks) < 2:
            pool = None
            results = (decode_files(c, size, channels, threads=1) for c in chunks)
        else:
            # One intra-op thread per worker, as DataLoader workers do: a forked child must not enter the
            # parent's OpenMP pool (it would hang), and the cores are the workers' anyway.
            pool = ProcessPoolExecutor(max_workers=workers, initializer=torch.set_num_threads, initargs=(1,))
            ahead = [pool.submit(decode_files, c, size, channels, 1) for c in chunks[: workers + 1]]
            results = (self._next(ahead, pool, chunks, k, size, channels) for k in range(len(chunks)))
        try:
            for chunk, (images, ok, failed) in zip(chunks, results):
                preds = self._classify(images, top_k) if len(ok) else []  # decoded and squared already
                yield [{"path": str(chunk[i]), **pred} for i, pred in zip(ok.tolist(), preds)], failed
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    @staticmethod
    def _next(ahead: list, pool, chunks: list, k: int, size: int, channels: int):
        """Batch k's decoded images; submits the batch that keeps the pipeline full."""
        if len(ahead) < len(chunks):  # `ahead` holds every submitted batch, in order
            ahead.append(pool.submit(decode_files, chunks[len(ahead)], size, channels, 1))
        result, ahead[k] = ahead[k].result(), None  # drop the future: memory stays bounded
        return result

    def _name(self, index: int) -> str:
        return self.meta.classes[index] if index < len(self.meta.classes) else str(index)

    def _tensor_to_square(self, t: torch.Tensor) -> torch.Tensor:
        return self.square(self._tensor_image(t))

    def _tensor_image(self, t: torch.Tensor) -> torch.Tensor:
        """An image tensor (C, H, W or H, W; uint8 or float in [0, 1]) -> uint8 (in_chans, H, W)."""
        if t.ndim == 2:
            t = t.unsqueeze(0)
        if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
            raise ValueError(
                f"expected an image tensor (C, H, W) with 1, 3 or 4 channels, got shape {tuple(t.shape)}"
            )
        if t.is_floating_point():
            t = (t.clamp(0, 1) * 255).round().to(torch.uint8)
        return with_channels(t[:3].cpu(), self.meta.in_chans)


class ArtifactPredictor(Predictor):
    """A Predictor over an exported artifact (`imgcls export`): the same inputs and outputs, but the model
    runs in onnxruntime (or TorchScript) and gets each image as decoded, at its own size: the graph itself
    resizes and crops, so this uses the artifact as any other client would."""

    def __init__(self, path: str | Path) -> None:
        from imgcls.inference.export import artifact_metadata, load_artifact

        info = artifact_metadata(path)
        self.meta = ModelMeta.from_dict(info["model"])
        self.layout = info["input"]["layout"].lower()
        self.run = load_artifact(path)
        self.device = torch.device("cpu")
        self.square = to_square(self.meta.input_size)

    def raw(self, item: ImageInput) -> torch.Tensor:
        """One image as uint8 (C, H, W) at its own size, EXIF orientation applied."""
        if isinstance(item, (str, Path)):
            return pil_to_tensor(open_image(item, self.meta.in_chans))
        if isinstance(item, Image.Image):
            return pil_to_tensor(to_channels(item, self.meta.in_chans))
        if isinstance(item, torch.Tensor):
            return self._tensor_image(item)
        raise TypeError(f"cannot predict on {type(item).__name__}; pass paths, PIL images or tensors")

    def _classify_items(self, items: Sequence[ImageInput], top_k: int) -> list[dict[str, Any]]:
        return [self._classify_raw(self.raw(item), top_k) for item in items]

    def explainer(self, method: str = DEFAULT_METHOD) -> Explainer:
        raise ConfigError(
            "class-activation maps need the PyTorch model: explain with the run folder (--backend torch)"
        )

    def _classify_raw(self, image: torch.Tensor, top_k: int) -> dict[str, Any]:
        x = image[None].permute(0, 2, 3, 1) if self.layout == "nhwc" else image[None]
        return self._top_k(torch.from_numpy(self.run(x.contiguous().numpy())), top_k)[0]

    def _classify(self, batch: torch.Tensor, top_k: int) -> list[dict[str, Any]]:
        return [self._classify_raw(image, top_k) for image in batch]

    def predict_stream(
        self, paths: Sequence[Path], top_k: int = 5, batch_size: int = 256, workers: int | None = None
    ) -> Iterator[tuple[list[dict[str, Any]], list[tuple[str, str]]]]:
        """One image at a time (each at its own size); yields (predictions with "path", skipped) per batch."""
        for chunk in _chunks(paths, batch_size):
            preds, skipped = [], []
            for path in chunk:
                try:
                    preds.append({"path": str(path), **self._classify_raw(self.raw(path), top_k)})
                except ImageDecodeError as e:
                    skipped.append((str(path), e.reason))
            yield preds, skipped


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
