"""Export a run's model with its preprocessing inside the graph (ONNX or TorchScript), then check parity.

The artifact takes raw uint8 images of any size, (N, H, W, C) by default or (N, C, H, W), resizes the
shorter side to the model's input size with antialiasing and cuts the centre square (exactly as
`imgcls predict` does), scales, normalizes (inside the Classifier), applies TTA and temperature as
trained, and returns class probabilities. EXIF orientation is the decoder's job, before the graph. Class names, the input spec and the imgcls version travel in its
metadata, so no re-implemented preprocessing can disagree with PyTorch.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgcls.config import ConfigError
from imgcls.data.transforms import resize_crop, to_float, to_square
from imgcls.errors import ImgclsError
from imgcls.models import Classifier

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
TOP1_AGREEMENT = 0.999  # the export fails below this share of identical top-1 classes...
# ...or when a probability differs by more than this. The resized pixels are rounded to whole values in
# both paths; where onnxruntime's resize lands within float noise of a rounding boundary that PyTorch's
# does not, one pixel differs by 1/255, which moves a probability by ~1e-4.
PROB_TOLERANCE = 1e-3


class ExportError(ImgclsError, RuntimeError):
    """The exported artifact disagrees with PyTorch, or the export itself failed."""


class Preprocess(nn.Module):
    """Raw uint8 images of any size -> the model's float input: `resize_crop` exactly as `imgcls predict`."""

    def __init__(self, size: int, layout: str = "nhwc") -> None:
        super().__init__()
        self.size, self.layout = size, layout

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2) if self.layout == "nhwc" else images
        return resize_crop(x, self.size) / 255.0


class Probabilities(nn.Module):
    """The Classifier's probabilities in float32 (the artifact's output): softmax, or a sigmoid per label."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.meta.probabilities(self.model(x).float())


class RawImageModel(nn.Module):
    """uint8 images in, probabilities out: layout, resize, crop and scaling in the graph, then the Classifier."""

    def __init__(self, model: Classifier, layout: str = "nhwc") -> None:
        super().__init__()
        self.preprocess = Preprocess(model.meta.input_size, layout)
        self.classify = Probabilities(model)
        self.layout = layout

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(self.preprocess(images))


@dataclass
class ExportResult:
    path: Path
    agreement: float
    max_prob_diff: float
    checked: int
    seconds: float
    int8: dict[str, Any] | None = None  # path, accuracy fp32/int8, agreement, images/s fp32/int8
    agreement_of: str = "top-1"  # what `agreement` compares: "top-1" classes, or multi-label "label-set"
    check_source: str = ""  # what the parity check fed the artifact


def quantize_int8(
    fp32_path: Path,
    out: Path,
    calibration: torch.Tensor,
    check: torch.Tensor,
    labels: torch.Tensor,
    layout: str,
) -> dict[str, Any]:
    """onnxruntime static quantization (QDQ, per-channel int8 weights) of the convolutions and matmuls,
    calibrated on training images; reports accuracy against `labels` and the speed of both models."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    batches = [{"images": _layout(chunk, layout).numpy()} for chunk in calibration.split(64)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self) -> dict | None:
            return next(self.items, None)

    quantize_static(
        str(fp32_path),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        op_types_to_quantize=["Conv", "MatMul", "Gemm"],
    )
    report: dict[str, Any] = {"path": str(out), "calibration_images": len(calibration)}
    predictions = {}
    for name, path in (("fp32", fp32_path), ("int8", out)):
        run = load_artifact(path)
        x = [_layout(chunk, layout).numpy() for chunk in check.split(256)]
        run(x[0])  # warm-up
        start = time.perf_counter()
        probs = [run(chunk) for chunk in x]
        seconds = time.perf_counter() - start
        predictions[name] = torch.from_numpy(__import__("numpy").concatenate(probs)).argmax(1)
        report[f"accuracy_{name}"] = round(float((predictions[name] == labels).float().mean()), 6)
        report[f"images_per_s_{name}"] = round(len(check) / seconds)
    report["top1_agreement"] = round(float((predictions["fp32"] == predictions["int8"]).float().mean()), 6)
    report["speedup"] = round(report["images_per_s_int8"] / report["images_per_s_fp32"], 2)
    return report


def metadata(model: Classifier, layout: str) -> dict[str, str]:
    from imgcls._version import __version__

    meta = model.meta
    shape = ["N", "H", "W", str(meta.in_chans)] if layout == "nhwc" else ["N", str(meta.in_chans), "H", "W"]
    spec = {
        "dtype": "uint8",
        "layout": layout.upper(),
        "shape": shape,
        "range": "0-255",
        "channels": "L (gray)" if meta.in_chans == 1 else "RGB",
        "exif_orientation": "apply before",
        "transparency": "composite over white",
        "preprocessing": f"in the graph: shorter side resized to {meta.input_size} (antialiased), centre crop",
        "resized_to": meta.input_size,
        "output": "probabilities (N, classes)",
    }
    tags = {}
    if meta.abstain_threshold is not None:
        spec["abstain"] = (
            f"answer no class when the top probability is below abstain_threshold ({meta.abstain_rule})"
        )
        tags = {"abstain_threshold": json.dumps(meta.abstain_threshold)}
    if meta.multilabel:
        spec["output"] = (
            "probabilities (N, labels), one sigmoid per label: a label is present at p >= its threshold"
        )
        tags = {"task": "multilabel", "thresholds": json.dumps(meta.thresholds or [0.5] * meta.num_classes)}
    return {
        "imgcls_version": __version__,
        "classes": json.dumps(meta.classes),
        "input": json.dumps(spec),
        "model": json.dumps(meta.to_dict()),
        **tags,
    }


def export(
    model: Classifier, out: str | Path, fmt: str, layout: str, check_images: Sequence[torch.Tensor]
) -> ExportResult:
    """Writes the artifact to `out` and checks it against PyTorch's predict path on `check_images`
    (raw uint8 C, H, W tensors of any sizes: the artifact gets them as they are, PyTorch squares them first)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if layout not in ("nhwc", "nchw"):
        raise ConfigError(f"--layout must be nhwc or nchw, not {layout!r}")
    start = time.perf_counter()
    model = model.cpu().float().eval()
    wrapper = RawImageModel(model, layout).eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    {"onnx": _export_onnx, "torchscript": _export_torchscript}[fmt](wrapper, out, metadata(model, layout))
    agreement, diff = parity(model, load_artifact(out), check_images, layout)
    result = ExportResult(out, agreement, diff, len(check_images), time.perf_counter() - start)
    result.agreement_of = "label-set" if model.meta.multilabel else "top-1"
    if agreement < TOP1_AGREEMENT or diff > PROB_TOLERANCE:
        raise ExportError(
            f"{out} disagrees with PyTorch on {len(check_images)} images: {result.agreement_of} agreement "
            f"{agreement:.4%} (needs {TOP1_AGREEMENT:.1%}), max probability difference {diff:.2e} "
            f"(allowed {PROB_TOLERANCE:g})"
        )
    return result


def _layout(images: torch.Tensor, layout: str) -> torch.Tensor:
    return images.permute(0, 2, 3, 1).contiguous() if layout == "nhwc" else images.contiguous()


def _example(wrapper: RawImageModel, batch: int = 2) -> torch.Tensor:
    """A non-square example input, so tracing keeps height and width apart."""
    channels = wrapper.classify.model.meta.in_chans
    size = wrapper.preprocess.size
    shape = (
        (batch, size + 7, size + 3, channels)
        if wrapper.layout == "nhwc"
        else (batch, channels, size + 7, size + 3)
    )
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _export_onnx(wrapper: RawImageModel, out: Path, meta: dict[str, str]) -> None:
    import onnx

    batch, height, width = torch.export.Dim("batch"), torch.export.Dim("height"), torch.export.Dim("width")
    dims = {0: batch, 1: height, 2: width} if wrapper.layout == "nhwc" else {0: batch, 2: height, 3: width}
    example = (_example(wrapper),)
    try:
        # torch.export first: handed the module, the ONNX exporter's own tracing loses the static size of
        # the centre crop (an unbacked symbol) and fails; the exported program keeps it.
        exported = torch.export.export(wrapper, example, dynamic_shapes={"images": dims})
        program = torch.onnx.export(
            exported,
            example,
            input_names=["images"],
            output_names=["probabilities"],
            dynamo=True,
            verbose=False,
        )
    except Exception as e:  # the exporter fails in many ways; the message is what the user needs
        raise ExportError(f"ONNX export failed: {type(e).__name__}: {str(e)[:500]}") from None
    proto = program.model_proto
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(out))


def _export_torchscript(wrapper: RawImageModel, out: Path, meta: dict[str, str]) -> None:
    """The model traced at its fixed input size; the size-dependent preprocessing scripted around it."""
    size, channels = wrapper.preprocess.size, wrapper.classify.model.meta.in_chans
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated; we say so in README
        traced = torch.jit.trace(wrapper.classify, torch.rand(2, channels, size, size), check_trace=False)
        try:
            scripted = torch.jit.script(_Scripted(torch.jit.script(wrapper.preprocess), traced))
        except Exception as e:
            raise ExportError(f"TorchScript export failed: {type(e).__name__}: {str(e)[:500]}") from None
        torch.jit.save(scripted, str(out), _extra_files={"imgcls.json": json.dumps(meta)})


class _Scripted(nn.Module):
    def __init__(self, preprocess, classify) -> None:  # no annotations: TorchScript would try to resolve them
        super().__init__()
        self.preprocess, self.classify = preprocess, classify

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(self.preprocess(images))


def load_artifact(path: str | Path):
    """A callable (uint8 images as numpy/tensor) -> probabilities (numpy) for an exported file."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda images: session.run(None, {name: _numpy(images)})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    return lambda images: module(torch.as_tensor(_numpy(images))).detach().numpy()


def artifact_metadata(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime as ort

        props = (
            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            .get_modelmeta()
            .custom_metadata_map
        )
    else:
        extra = {"imgcls.json": ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        props = json.loads(extra["imgcls.json"])
    return {k: json.loads(v) if k not in ("imgcls_version", "task") else v for k, v in props.items()}


def _numpy(images):
    return images.numpy() if isinstance(images, torch.Tensor) else images


@torch.inference_mode()
def parity(model: Classifier, run, images: Sequence[torch.Tensor], layout: str) -> tuple[float, float]:
    """Top-1 agreement (with abstention: the same class or the same "I don't know"; multi-label: identical
    label sets at the model's thresholds) and the largest
    probability difference between `imgcls predict`'s PyTorch path (squared in Python, then the model) and
    the artifact fed each raw image as it is."""
    meta = model.meta
    square = to_square(meta.input_size)
    agree, diff = 0, 0.0
    for image in images:
        expected = meta.probabilities(model(to_float(square(image)[None])).float())
        got = torch.from_numpy(run(_layout(image[None], layout)))
        if meta.multilabel:
            agree += int((meta.label_sets(expected) == meta.label_sets(got)).all(1).sum())
        else:
            agree += int((meta.answers(expected) == meta.answers(got)).sum())  # abstentions included
        diff = max(diff, float((expected - got).abs().max()))
    return agree / max(1, len(images)), diff
