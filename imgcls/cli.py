"""`imgcls` command line: parses arguments into a Config or a call, then hands over to imgcls.api."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from imgcls._version import __version__
from imgcls.config import ConfigError, parse_overrides
from imgcls.errors import ImgclsError

log = logging.getLogger("imgcls")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgcls", description="Train, evaluate and use image classifiers.")
    parser.add_argument("--version", action="version", version=f"imgcls {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser("train", help="train (and test) a model; with no flags: the default model on Fashion-MNIST",
                       description="Train a model, keep best/last checkpoints in a run folder, evaluate it on the test split.")  # fmt: skip
    t.add_argument(
        "--data",
        help="built-in name (fashion-mnist, mnist, cifar10, cifar100, digits), a folder, or a CSV manifest",
    )
    t.add_argument(
        "--model", help="model name (see `imgcls models`), e.g. smallnet, resnet18, timm/convnext_nano"
    )
    t.add_argument("--epochs", type=int)
    t.add_argument(
        "--time", help="time budget for the whole run, e.g. 90s, 5m, 1h (plans the schedule to end on time)"
    )
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=_lr, help="peak learning rate, or auto (an LR range test picks it)")
    t.add_argument(
        "--pretrained",
        action="store_true",
        default=None,
        help="start from the architecture's ImageNet weights (torchvision/timm) and fine-tune",
    )
    t.add_argument(
        "--weights",
        metavar="FILE|RUN_DIR",
        help="start from local weights: a torchvision/timm .pth/.safetensors, or an imgcls run folder",
    )
    t.add_argument(
        "--freeze",
        metavar="auto|none|N|backbone",
        help="fine-tuning: what stays frozen after the head-only phase (backbone: linear probing)",
    )
    t.add_argument("--patience", type=int, help="stop when validation accuracy has not improved for N epochs")
    t.add_argument("--out", help="run folder (default: runs/<data>-<model>-<time>)")
    t.add_argument("--config", help="a YAML file of config sections (see configs/)")
    t.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides, e.g. optim.name=adamw train.amp=off",
    )
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    t.add_argument(
        "--overwrite", action="store_true", help="--out names an earlier run folder: empty it and start anew"
    )
    t.add_argument("--strict", action="store_true", help="unreadable images are an error, not a counted skip")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "eval",
        help="evaluate a run's model on a data split",
        description="Evaluate a run's best model; writes eval.json and a confusion matrix into the run folder.",
    )
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--data", help="data to evaluate on (default: the data the run was trained on)")
    e.add_argument("--split", choices=["test", "val"], default="test")
    e.add_argument("--batch-size", type=int)
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true", help="print the metrics as one JSON object on stdout")
    e.add_argument(
        "--tta",
        choices=["flip", "off"],
        help="evaluate with/without flip TTA (both are reported); kept for the model",
    )
    e.add_argument(
        "--calibrate",
        action="store_true",
        help="fit temperature scaling on the validation split, store it with the model, report ECE before/after",
    )
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser(
        "report",
        help="re-render a run's report.html from its eval.json and metrics.csv",
        description="Re-render RUN_DIR/report.html (self-contained, opens offline) without the model or data.",
    )
    r.add_argument("run_dir", metavar="RUN_DIR")
    r.add_argument("--split", choices=["test", "val"], default="test")
    r.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "predict",
        help="classify image files or folders",
        description="Print the top-k classes of each image.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="image files, folders (searched recursively), globs ('photos/**/*.jpg') or a CSV manifest",
    )
    p.add_argument("--out", metavar="FILE", help="write predictions to FILE.csv or FILE.jsonl")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--backend",
        choices=["torch", "onnx", "torchscript"],
        default="torch",
        help="run the exported artifact (imgcls export) instead of PyTorch; RUN_DIR may be the file",
    )
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="one JSON object per line on stdout")
    p.set_defaults(func=cmd_predict)

    f = sub.add_parser(
        "lr-find",
        help="LR range test: plot loss against learning rate, suggest one",
        description="Train briefly with a growing learning rate; saves lr_find.png and prints a suggestion "
        "(use it with --lr, or let `train --lr auto` run this test itself).",
    )
    f.add_argument("--data")
    f.add_argument("--model")
    f.add_argument("--pretrained", action="store_true", default=None)
    f.add_argument("--weights", metavar="FILE|RUN_DIR")
    f.add_argument("--batch-size", type=int)
    f.add_argument("--config")
    f.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    f.add_argument("--out", help="folder for lr_find.png/json (default: runs/lr-find-<data>-<model>-<time>)")
    f.set_defaults(func=cmd_lr_find)

    d = sub.add_parser("data", help="dataset tools: `imgcls data check DATA`", description="Dataset tools.")
    data_sub = d.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    c = data_sub.add_parser(
        "check",
        help="diagnose a dataset: broken/odd files, class balance, duplicates and leakage, mean/std",
        description="Check a folder, CSV manifest or built-in dataset. Prints a summary, writes a JSON report; "
        "exit code 0 when there are no errors (warnings allowed), 1 when there are.",
    )
    c.add_argument("data", metavar="DATA")
    c.add_argument("--out", default="data-check.json", help="JSON report path (default: data-check.json)")
    c.add_argument("--no-near", action="store_true", help="skip the near-duplicate search")
    c.add_argument("--html", metavar="FILE", help="also write a page with thumbnails of every named image")
    c.add_argument(
        "--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="data.* settings, e.g. data.test_split=0.2"
    )
    c.set_defaults(func=cmd_data_check)

    x = sub.add_parser(
        "export",
        help="export a run's model (ONNX or TorchScript) with its preprocessing, and check it against PyTorch",
        description="Write an artifact that takes raw uint8 images and returns probabilities (resize, scaling, "
        "normalization, TTA and temperature inside), with class names and the input spec in its metadata; "
        "then check it against `imgcls predict` on raw images of many shapes (top-1 agreement >= 99.9%, "
        "probabilities within 1e-3).",
    )
    x.add_argument("run_dir", metavar="RUN_DIR")
    x.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    x.add_argument(
        "--layout", choices=["nhwc", "nchw"], default="nhwc", help="input layout (default N,H,W,C)"
    )
    x.add_argument(
        "--out", help="artifact path (default: RUN_DIR/model.onnx or RUN_DIR/model.torchscript.pt)"
    )
    x.add_argument(
        "--check-images",
        metavar="DIR",
        help="check the artifact on these images (default: the run's validation images; synthetic if gone)",
    )
    x.add_argument(
        "--int8",
        action="store_true",
        help="also write MODEL.int8.onnx (static quantization calibrated on training images); reports accuracy and speed",
    )
    x.set_defaults(func=cmd_export)

    v = sub.add_parser("serve", help="serve a run's model over HTTP, with a page to try it",
                       description="POST /predict (multipart images) -> top-k JSON; GET /health, /info; GET / is a page; "
                       "OpenAPI docs at /docs. Binds to loopback unless --host says otherwise.")  # fmt: skip
    v.add_argument("run_dir", metavar="RUN_DIR")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--device", default="auto")
    v.add_argument(
        "--batch-window-ms",
        type=float,
        default=5.0,
        help="batch requests arriving within this window; 0: off",
    )
    v.add_argument("--max-mb", type=float, default=10.0, help="upload size limit per file (MB)")
    v.set_defaults(func=cmd_serve)

    m = sub.add_parser(
        "models",
        help="list registered model names",
        description="List model names; timm models are used as timm/<name>.",
    )
    m.add_argument(
        "pattern", nargs="?", default="*", help="wildcard filter, e.g. 'resnet*' or 'timm/*convnext*'"
    )
    m.set_defaults(func=cmd_models)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from imgcls import api

    overrides = parse_overrides(args.set)
    if args.strict:
        overrides["data.strict"] = True
    flags = {"model.pretrained": args.pretrained, "model.weights": args.weights, "model.freeze": args.freeze,
             "train.patience": args.patience}  # fmt: skip
    overrides |= {k: v for k, v in flags.items() if v is not None}
    shorthands = {
        "data": args.data,
        "model": args.model,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "out": args.out,
        "time": args.time,
    }
    if args.overwrite and not args.out:
        raise ConfigError("--overwrite empties the run folder named by --out; give --out RUN_DIR")
    if args.resume and (args.config or args.out or args.overwrite):
        raise ConfigError(
            "--resume continues a run with its own config.yaml and folder; drop --config/--out/--overwrite"
        )
    result = api.train(config=args.config, resume=args.resume, overrides=overrides, count_startup=True,
                       overwrite=args.overwrite, **shorthands)  # fmt: skip
    if not _is_rank_zero():
        return 0
    if result.test:
        from imgcls.reporting import print_table

        print_table(result.test, f"{result.run_dir.name}: test split")
        print(f"test accuracy {result.test['accuracy']:.4f}  run folder: {result.run_dir}")
    else:
        print(f"run folder: {result.run_dir}")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from imgcls import api

    overrides = parse_overrides(args.set)
    overrides |= {
        k: v for k, v in {"model.pretrained": args.pretrained, "model.weights": args.weights}.items() if v
    }
    result = api.lr_find(
        config=args.config, overrides=overrides, out=args.out, data=args.data, model=args.model,
        batch_size=args.batch_size,
    )  # fmt: skip
    if _is_rank_zero():
        print(f"suggested lr {result['suggestion']:.3g} ({result['recipe']}, {result['optimizer']}; "
              f"loss was lowest at {result['min_loss_lr']:.3g})  plot: {result['out']}/lr_find.png")  # fmt: skip
        print(f"use it: imgcls train ... --lr {result['suggestion']:.3g}   (or --lr auto)")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from imgcls import api
    from imgcls.data.types import DataError
    from imgcls.reporting import data_report_text

    try:
        report = api.check_data(
            args.data, out=args.out, overrides=parse_overrides(args.set), near=not args.no_near, html=args.html
        )
    except DataError as e:  # no usable data at all (an empty folder or manifest) is the check's finding
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(data_report_text(report))
    print(f"report: {args.out}" + (f", {args.html}" if args.html else ""))
    return 0 if report["ok"] else 1


def cmd_report(args: argparse.Namespace) -> int:
    from imgcls import api

    print(f"report: {api.report(args.run_dir, args.split)}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from imgcls import api

    result = api.evaluate(
        args.run_dir,
        args.data,
        args.split,
        batch_size=args.batch_size,
        device=args.device,
        show=not args.json,
        tta=args.tta,
        calibrate=args.calibrate,
    )
    if args.json and _is_rank_zero():
        print(json.dumps(result))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from imgcls import api

    def show(pred: dict) -> None:
        if args.json:
            print(json.dumps(pred))
        elif not args.out:
            top = "  ".join(f"{t['label']} {t['probability']:.3f}" for t in pred["top_k"])
            print(f"{pred['path']}: {top}")

    summary = api.predict(args.run_dir, args.paths, out=args.out, top_k=args.top_k, device=args.device,
                          batch_size=args.batch_size, on_prediction=show, backend=args.backend)  # fmt: skip
    if args.out:
        print(f"{summary['count']} predictions written to {args.out}" + (f"; accuracy {summary['accuracy']:.4f} on "
              f"{summary['labelled']} labelled images" if "accuracy" in summary else ""))  # fmt: skip
    return 0 if summary["count"] else 1


def cmd_export(args: argparse.Namespace) -> int:
    from imgcls import api

    r = api.export(args.run_dir, args.format, out=args.out, layout=args.layout, int8=args.int8,
                   check_images=args.check_images)  # fmt: skip
    print(f"{r.path}: top-1 agreement with PyTorch {r.agreement:.2%}, max probability difference "
          f"{r.max_prob_diff:.1e} on {r.checked} images of many shapes ({r.check_source}; {r.seconds:.1f}s)")  # fmt: skip
    if r.int8:
        q = r.int8
        print(f"{q['path']}: accuracy {q['accuracy_fp32']:.4f} -> {q['accuracy_int8']:.4f}, top-1 agreement "
              f"{q['top1_agreement']:.2%}, {q['images_per_s_fp32']} -> {q['images_per_s_int8']} images/s "
              f"({q['speedup']:.2f}x)")  # fmt: skip
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from imgcls import api

    api.serve(args.run_dir, host=args.host, port=args.port, device=args.device,
              batch_window_ms=args.batch_window_ms, max_bytes=int(args.max_mb * (1 << 20)))  # fmt: skip
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from imgcls.models import MODELS

    names = MODELS.list(args.pattern)
    if args.pattern.startswith("timm/"):
        import timm

        names = [f"timm/{n}" for n in timm.list_models(args.pattern[len("timm/") :])]
    print("\n".join(names) if names else f"no model matches {args.pattern!r}")
    return 0 if names else 1


def _lr(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lr takes a number or auto, not {text!r}") from None


def _is_rank_zero() -> bool:
    """Under torchrun only rank 0 prints; the others log warnings and errors only."""
    return int(os.environ.get("RANK", "0")) == 0


def setup_logging(quiet: bool) -> None:
    """Rich output on a terminal; plain lines (no wrapping, no colour codes) in logs and CI."""
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_time=False, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PlainFormatter())
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet or not _is_rank_zero() else logging.INFO)
    log.propagate = False


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        return msg if record.levelno == logging.INFO else f"{record.levelname.lower()}: {msg}"


def _safe_streams() -> None:
    """Characters the terminal's encoding lacks (a C locale, a non-UTF-8 file name) print as escapes
    instead of raising UnicodeEncodeError halfway through a run."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _safe_streams()
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except ImgclsError as e:  # a user mistake, or a run that cannot go on: one line, never a traceback
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except FileNotFoundError as e:  # a path the user gave that is not there, met outside imgcls's own checks
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if "torch" in sys.modules:  # leave torchrun's process group cleanly
            from imgcls.utils import dist

            dist.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
