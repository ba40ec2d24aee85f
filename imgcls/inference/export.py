"""Export a run's model with its preprocessing inside the graph (ONNX or TorchScript), then check parity.

The artifact takes raw uint8 images, (N, H, W, C) by default or (N, C, H, W), resizes them to the
model's input size, scales, normalizes (inside the Classifier), applies TTA and temperature as trained,
and returns class probabilities. Class names, the input spec and the imgcls version travel in its
metadata, so no re-implemented preprocessing can disagree with PyTorch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from imgcls.config import ConfigError
from imgcls.data.transforms import to_float
from imgcls.models import Classifier

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
TOP1_AGREEMENT = 0.999  # the export fails below this share of identical top-1 classes...
PROB_TOLERANCE = 1e-4  # ...or when a probability differs by more than this (fp32 artifacts)


class ExportError(RuntimeError):
    """The exported artifact disagrees with PyTorch, or the export itself failed."""


class RawImageModel(nn.Module):
    """uint8 images in, probabilities out: layout, resize and scaling in the graph, then the Classifier."""

    def __init__(self, model: Classifier, layout: str = "nhwc") -> None:
        super().__init__()
        self.model, self.layout = model.eval(), layout
        self.size = model.meta.input_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2) if self.layout == "nhwc" else images
        # Always resized (an exact copy at the model's size), so the graph keeps H and W dynamic.
        x = F.interpolate(to_float(x), size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.model(x).float().softmax(1)


@dataclass
class ExportResult:
    path: Path
    agreement: float
    max_prob_diff: float
    checked: int
    seconds: float
    int8: dict[str, Any] | None = None  # path, accuracy fp32/int8, agreement, images/s fp32/int8


def quantize_int8(
    fp32_path: Path, out: Path, calibration: torch.Tensor, check: torch.Tensor, labels: torch.Tensor, layout: str
) -> dict[str, Any]:  # fmt: skip
    """onnxruntime static quantization (QDQ, per-channel int8 weights) of the convolutions and matmuls,
    calibrated on training images; reports accuracy against `labels` and the speed of both models."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    batches = [{"images": _layout(chunk, layout).numpy()} for chunk in calibration.split(64)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self) -> dict | None:
            return next(self.items, None)

    quantize_static(str(fp32_path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                    op_types_to_quantize=["Conv", "MatMul", "Gemm"])  # fmt: skip
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
    from imgcls import __version__

    meta = model.meta
    shape = ["N", "H", "W", str(meta.in_chans)] if layout == "nhwc" else ["N", str(meta.in_chans), "H", "W"]
    spec = {"dtype": "uint8", "layout": layout.upper(), "shape": shape, "resized_to": meta.input_size,
            "range": "0-255", "output": "probabilities (N, classes)"}  # fmt: skip
    return {
        "imgcls_version": __version__,
        "classes": json.dumps(meta.classes),
        "input": json.dumps(spec),
        "model": json.dumps(meta.to_dict()),
    }


def export(
    model: Classifier, out: str | Path, fmt: str, layout: str, check_images: torch.Tensor
) -> ExportResult:
    """Writes the artifact to `out` and checks it against PyTorch on `check_images` (uint8 N, C, S, S)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if layout not in ("nhwc", "nchw"):
        raise ConfigError(f"--layout must be nhwc or nchw, not {layout!r}")
    start = time.perf_counter()
    model = model.cpu().float().eval()
    wrapper = RawImageModel(model, layout).eval()
    example = _layout(check_images[:2], layout)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    {"onnx": _export_onnx, "torchscript": _export_torchscript}[fmt](
        wrapper, example, out, metadata(model, layout)
    )
    run = load_artifact(out)
    agreement, diff = parity(wrapper, run, check_images, layout)
    result = ExportResult(out, agreement, diff, len(check_images), time.perf_counter() - start)
    if agreement < TOP1_AGREEMENT or diff > PROB_TOLERANCE:
        raise ExportError(
            f"{out} disagrees with PyTorch on {len(check_images)} validation images: top-1 agreement "
            f"{agreement:.4%} (needs {TOP1_AGREEMENT:.1%}), max probability difference {diff:.2e} "
            f"(allowed {PROB_TOLERANCE:g})"
        )
    return result


def _layout(images: torch.Tensor, layout: str) -> torch.Tensor:
    return images.permute(0, 2, 3, 1).contiguous() if layout == "nhwc" else images.contiguous()


def _export_onnx(wrapper: nn.Module, example: torch.Tensor, out: Path, meta: dict[str, str]) -> None:
    import onnx

    batch, height, width = torch.export.Dim("batch"), torch.export.Dim("height"), torch.export.Dim("width")
    dims = {0: batch, 1: height, 2: width} if wrapper.layout == "nhwc" else {0: batch, 2: height, 3: width}
    try:
        program = torch.onnx.export(
            wrapper, (example,), input_names=["images"], output_names=["probabilities"],
            dynamic_shapes={"images": dims}, dynamo=True, verbose=False,
        )  # fmt: skip
    except Exception as e:  # the exporter fails in many ways; the message is what the user needs
        raise ExportError(f"ONNX export failed: {type(e).__name__}: {str(e)[:500]}") from None
    proto = program.model_proto
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(out))


def _export_torchscript(wrapper: nn.Module, example: torch.Tensor, out: Path, meta: dict[str, str]) -> None:
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, (example,), check_trace=False)
    torch.jit.save(traced, str(out), _extra_files={"imgcls.json": json.dumps(meta)})


def load_artifact(path: str | Path):
    """A callable (uint8 images as numpy/tensor) -> probabilities (numpy) for an exported file."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda images: session.run(None, {name: _numpy(images)})[0]
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
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        props = json.loads(extra["imgcls.json"])
    return {k: json.loads(v) if k != "imgcls_version" else v for k, v in props.items()}


def _numpy(images):
    return images.numpy() if isinstance(images, torch.Tensor) else images


@torch.inference_mode()
def parity(
    wrapper: nn.Module, run, images: torch.Tensor, layout: str, batch: int = 256
) -> tuple[float, float]:
    """Top-1 agreement and the largest probability difference between PyTorch and the artifact."""
    agree, diff = 0, 0.0
    for chunk in images.split(batch):
        x = _layout(chunk, layout)
        expected = wrapper(x).numpy()
        got = run(x)
        agree += int((expected.argmax(1) == got.argmax(1)).sum())
        diff = max(diff, float(abs(expected - got).max()))
    return agree / max(1, len(images)), diff
