"""Training throughput and model FLOPs utilization (MFU) against this machine's measured conv peak.

    .venv/bin/python bench/throughput.py [--device cpu|cuda] [--seconds 6] [--nonfinite-only] [--kernels-only]

The peak is measured in the same run: a large 3x3 convolution, forward + backward, in fp32 and in
bf16 channels_last. FLOPs per image come from torch.utils.flop_counter (forward + backward).

On a CPU it first checks which oneDNN kernels the training steps of every benchmarked model run (a child
process with ONEDNN_VERBOSE=1) and fails loudly (exit 1) when any training primitive runs a reference
(`ref`) kernel: a slow generic fallback that a library update can bring without any other sign.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.common import machine, save
from imgcls.engine.evaluate import autocast
from imgcls.models import build_model
from imgcls.utils.env import bf16_supported


def train_step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, foreach=True)

    def step() -> None:
        with autocast(x.device, dtype):
            out = model(x)
        loss = nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def finite_check_step_fn(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None, every: int
):
    """A training step with the loop's non-finite-loss check: read on the host every step (every=1, before
    issue 11) or kept as a device-side flag read every `every` steps (what `fit` does now)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, foreach=True)
    flag, count = torch.zeros(1, device=x.device), [0]

    def checked() -> None:
        nonlocal flag
        with autocast(x.device, dtype):
            out = model(x)
        loss = nn.functional.cross_entropy(out.float(), y)
        flag = torch.maximum(flag, (~torch.isfinite(loss.detach())).float().reshape(1))
        count[0] += 1
        if count[0] % every == 0 and bool(flag[0]):  # the host waits for the device here
            raise RuntimeError("non-finite loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return checked


def flops_per_image(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(model(x).float(), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(x)


def rate(step, n_items: int, seconds: float, device: torch.device) -> float:
    """Items per second of `step`, after warm-up, over about `seconds`."""
    for _ in range(3):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds or n < 3:
        step()
        n += 1
    sync()
    return n * n_items / (time.perf_counter() - start)


def conv_peak(device: torch.device, dtype: torch.dtype | None, seconds: float) -> float:
    """Best FLOP/s of 3x3 convs (64 ch at 56x56, 128 at 28x28, 256 at 14x14; batch 64), forward + backward."""
    best = 0.0
    for channels, side in ((64, 56), (128, 28), (256, 14)):
        conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(
            device, memory_format=torch.channels_last
        )
        x = torch.randn(64, channels, side, side, device=device).contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        flops = 3 * 2 * 64 * side * side * channels * channels * 9  # forward, grad input, grad weight

        def step(conv: nn.Module = conv, x: torch.Tensor = x) -> None:
            with autocast(device, dtype):
                out = conv(x)
            out.float().sum().backward()

        best = max(best, rate(step, 1, seconds / 3, device) * flops)
    return best


MODELS = [
    ("smallnet", {"width": 8}),
    ("smallnet", {"width": 16}),
    ("smallnet", {"width": 32}),
    ("tutorial-cnn", {}),
    ("resnet18", {}),
    ("resnet18", {"small_stem": True}),
]


def run_training_steps(batch: int, size: int) -> None:
    """Two training steps of every model, fp32 and bf16 (the child process that oneDNN reports on)."""
    device = torch.device("cpu")
    for name, arch in MODELS:
        model = build_model(name, num_classes=10, in_chans=1, input_size=size, **arch)
        model = model.to(memory_format=torch.channels_last)
        x = torch.rand(batch, 1, size, size).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,))
        for dtype in (None, torch.bfloat16) if bf16_supported(device) else (None,):
            step = train_step_fn(model, x, y, dtype)
            for _ in range(2):
                step()


def onednn_kernels(batch: int, size: int) -> Counter:
    """(primitive, implementation, propagation) -> times executed, from ONEDNN_VERBOSE in a child process."""
    env = {**os.environ, "ONEDNN_VERBOSE": "1"}
    command = [
        sys.executable,
        "-m",
        "bench.throughput",
        "--probe-kernels",
        "--batch",
        str(batch),
        "--size",
        str(size),
    ]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=True).stdout
    kernels: Counter = Counter()
    for line in out.splitlines():
        fields = line.split(",")
        if fields[0] == "onednn_verbose" and "exec" in fields:
            i = fields.index("exec")
            kernels[tuple(fields[i + 2 : i + 5])] += 1  # after "exec, cpu": primitive, impl, propagation
    return kernels


def is_reference(impl: str) -> bool:
    """oneDNN's generic reference implementations: `ref:any`, `gemm:ref`, `ref_convolution_int8`...

    Example:
        >>> is_reference("ref:any"), is_reference("gemm:ref"), is_reference("brg_conv_fwd:avx512_core")
        (True, True, False)
    """
    return any(part.startswith("ref") for part in impl.replace("_", ":").split(":"))


def check_kernels(args: argparse.Namespace) -> dict:
    kernels = onednn_kernels(args.batch, args.size)
    compute = {k: n for k, n in kernels.items() if k[0] != "reorder"}
    print("oneDNN kernels of the training steps (primitive, implementation, propagation: times):")
    for (primitive, impl, prop), n in sorted(compute.items()):
        print(f"  {primitive:22s} {impl:32s} {prop:18s} {n}")
    reference = sorted(k for k in compute if is_reference(k[1]))
    if not compute:
        raise SystemExit("error: oneDNN reported no training primitive (is ONEDNN_VERBOSE supported here?)")
    if reference:
        lines = "\n".join(f"  {p} {i} {q}" for p, i, q in reference)
        raise SystemExit(f"error: oneDNN runs reference (ref) kernels for training primitives:\n{lines}")
    return {f"{p} {i} {q}": n for (p, i, q), n in sorted(compute.items())}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--nonfinite-only", action="store_true", help="only the non-finite-check comparison")
    parser.add_argument("--kernels-only", action="store_true", help="only the oneDNN reference-kernel check")
    parser.add_argument("--probe-kernels", action="store_true", help=argparse.SUPPRESS)  # the check's child
    args = parser.parse_args()
    device = torch.device(args.device)
    bf16 = torch.bfloat16 if bf16_supported(device) else None
    if args.probe_kernels:
        run_training_steps(args.batch, args.size)
        return
    if args.nonfinite_only:
        finite_check_rows(device, bf16, args)
        return
    kernels = check_kernels(args) if device.type == "cpu" else {}
    if args.kernels_only:
        print("no reference kernels")
        return
    peaks = {"fp32": conv_peak(device, None, args.seconds)}
    if bf16:
        peaks["bf16"] = conv_peak(device, bf16, args.seconds)
    print(f"machine: {machine()}")
    print("conv 3x3 peak (fwd+bwd): " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()))

    rows = []
    for name, arch in MODELS:
        model = build_model(name, num_classes=10, in_chans=1, input_size=args.size, **arch).to(device)
        model = model.to(memory_format=torch.channels_last)
        x = torch.rand(args.batch, 1, args.size, args.size, device=device).contiguous(
            memory_format=torch.channels_last
        )
        y = torch.randint(0, 10, (args.batch,), device=device)
        flops = flops_per_image(model, x, y)
        for label, dtype in (("fp32", None), ("bf16", bf16)):
            if label == "bf16" and dtype is None:
                continue
            img_s = rate(train_step_fn(model, x, y, dtype), args.batch, args.seconds, device)
            mfu = img_s * flops / peaks[label]
            rows.append(
                {
                    "model": name,
                    **arch,
                    "dtype": label,
                    "img_s": round(img_s),
                    "gflop_per_img": round(flops / 1e9, 6),
                    "mfu": round(mfu, 3),
                }
            )
            arch_txt = ",".join(f"{k}={v}" for k, v in arch.items())
            print(
                f"{name:13s} {arch_txt:16s} {label}: {img_s:8.0f} img/s  {flops / 1e6:8.1f} MFLOP/img  MFU {mfu:5.1%} of the {label} conv peak"
            )
    # The peak again at the end: a busy moment at the start must not make the models look better.
    end_peaks = {
        label: conv_peak(device, dtype, args.seconds)
        for label, dtype in (("fp32", None), ("bf16", bf16))
        if label in peaks
    }
    if any(end_peaks[k] > peaks[k] for k in peaks):
        peaks = {k: max(peaks[k], end_peaks[k]) for k in peaks}
        for r in rows:
            r["mfu"] = round(r["img_s"] * r["gflop_per_img"] * 1e9 / peaks[r["dtype"]], 3)
    print(
        "conv 3x3 peak, best of start and end: "
        + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items())
    )
    print(
        "MFU: "
        + ", ".join(
            f"{r['model']}{r.get('width', '')}{'-small-stem' if r.get('small_stem') else ''} {r['dtype']} {r['mfu']:.0%}"
            for r in rows
        )
    )
    base = next(
        r
        for r in rows
        if r["model"] == "resnet18" and "small_stem" not in r and r["dtype"] == rows[-1]["dtype"]
    )
    for r in rows:
        if r["dtype"] == base["dtype"]:
            r["speed_vs_resnet18"] = round(r["img_s"] / base["img_s"], 2)
    print(
        f"images/s relative to resnet18 ({base['dtype']}): "
        + ", ".join(
            f"{r['model']}{r.get('width', '')}{'-small-stem' if r.get('small_stem') else ''} {r['speed_vs_resnet18']}x"
            for r in rows
            if "speed_vs_resnet18" in r
        )
    )
    finite_check_rows(device, bf16, args)
    print(
        f"saved {save(f'throughput-{device.type}', {'peak_flops': peaks, 'batch': args.batch, 'size': args.size, 'rows': rows, 'onednn_kernels': kernels})}"
    )


def finite_check_rows(device: torch.device, dtype: torch.dtype | None, args: argparse.Namespace) -> dict:
    """The default model's step with a host sync per step (before) and every 50 steps (after), same run."""
    model = build_model("smallnet", num_classes=10, in_chans=1, input_size=args.size, width=8).to(device)
    model = model.to(memory_format=torch.channels_last)
    x = torch.rand(args.batch, 1, args.size, args.size, device=device).contiguous(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, 10, (args.batch,), device=device)
    result = {}
    for _ in range(2):  # alternate, so a busy moment does not favour one side
        for name, every in (("sync_every_step", 1), ("sync_every_50_steps", 50)):
            img_s = rate(
                finite_check_step_fn(model, x, y, dtype, every), args.batch, args.seconds / 2, device
            )
            result[name] = max(result.get(name, 0.0), round(img_s))
    result["speedup"] = round(result["sync_every_50_steps"] / result["sync_every_step"], 3)
    print(
        f"non-finite check, smallnet w8: every step {result['sync_every_step']} img/s, every 50 steps "
        f"{result['sync_every_50_steps']} img/s ({result['speedup']}x); "
        f"saved {save(f'nonfinite-check-{device.type}', {'batch': args.batch, 'size': args.size, **result})}"
    )
    return result


if __name__ == "__main__":
    main()
