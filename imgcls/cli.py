"""`imgcls` command line: parses arguments into config overrides or a call, then hands over to imgcls.api.

Each flag is declared once, in `FLAGS` below or in a parent parser, with the config key it sets: a flag
with a key lands in the overrides under that key (flags win over --set); the rest are arguments of a call.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from imgcls._version import __version__
from imgcls.config import ConfigError, parse_overrides
from imgcls.errors import ImgclsError

log = logging.getLogger("imgcls")
KEY_PREFIX = "cfg:"  # the argparse dest of a flag that sets a config key: cfg:<section.key>


def _lr(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lr takes a number or auto, not {text!r}") from None


def cmd_train(args: argparse.Namespace) -> int:
    from imgcls import api

    overrides = overrides_of(args)
    if args.overwrite and "out" not in overrides:
        raise ConfigError("--overwrite empties the run folder named by --out; give --out RUN_DIR")
    if args.resume and (args.config or "out" in overrides or args.overwrite):
        raise ConfigError(
            "--resume continues a run with its own config.yaml and folder; drop --config/--out/--overwrite"
        )
    result = api.train(
        config=args.config,
        resume=args.resume,
        overrides=overrides,
        count_startup=True,
        overwrite=args.overwrite,
    )
    if not _is_rank_zero():
        return 0
    if result.test:
        from imgcls.api.evaluation import headline_text, show_table

        show_table(result.test, f"{result.run_dir.name}: test split")
        score = (
            f"accuracy {result.test['accuracy']:.4f}"
            if "accuracy" in result.test
            else headline_text(result.test)
        )
        print(f"test {score}  run folder: {result.run_dir}")
    else:
        print(f"run folder: {result.run_dir}")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from imgcls import api

    result = api.lr_find(config=args.config, overrides=overrides_of(args), out=args.out)
    if _is_rank_zero():
        print(
            f"suggested lr {result['suggestion']:.3g} ({result['recipe']}, {result['optimizer']}; "
            f"loss was lowest at {result['min_loss_lr']:.3g})  plot: {result['out']}/lr_find.png"
        )
        print(f"use it: imgcls train ... --lr {result['suggestion']:.3g}   (or --lr auto)")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from imgcls import api
    from imgcls.data.types import DataError
    from imgcls.reporting import data_report_text

    try:
        report = api.check_data(
            args.data,
            out=args.out,
            overrides=parse_overrides(args.set),
            near=not args.no_near,
            html=args.html,
        )
    except DataError as e:  # no usable data at all (an empty folder or manifest) is the check's finding
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(data_report_text(report))
    print(f"report: {args.out}" + (f", {args.html}" if args.html else ""))
    return 0 if report["ok"] else 1


def cmd_data_pack(args: argparse.Namespace) -> int:
    from imgcls import api

    r = api.pack_data(args.data, args.out, shard_size=args.shard_size, overrides=parse_overrides(args.set))
    counts = ", ".join(f"{n} {split}" for split, n in r["counts"].items())
    print(
        f"{len(r['shards'])} shard(s) in {r['out']}: {counts} images, {r['classes']} classes (classes.json)"
    )
    return 0


def cmd_data_manifest(args: argparse.Namespace) -> int:
    from imgcls import api

    r = api.manifest_data(args.folder, out=args.out)
    print(
        f"{r['manifest']}: {r['rows']} images of {len(r['by_class'])} classes; train: imgcls train --data {r['manifest']}"
    )
    return 0


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
        abstain=args.abstain,
        ood=args.ood,
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
            labels = f"[{', '.join(pred['labels'])}]  " if "labels" in pred else ""  # multi-label: the set
            unsure = f"  (I don't know: {pred['abstained']})" if "abstained" in pred else ""
            print(f"{pred['path']}: {labels}{top}{unsure}")

    summary = api.predict(
        args.run_dir,
        args.paths,
        out=args.out,
        top_k=args.top_k,
        device=args.device,
        batch_size=args.batch_size,
        on_prediction=show,
        backend=args.backend,
        explain=args.explain,
        explain_method=args.explain_method,
        sort_into=args.sort_into,
        accept=args.accept,
    )
    if args.out:
        print(
            f"{summary['count']} predictions written to {args.out}"
            + "".join(
                f"; {key.replace('_', ' ')} {summary[key]:.4f} on {summary['labelled']} labelled images"
                for key in ("accuracy", "exact_match")
                if key in summary
            )
        )
    if "sorting" in summary:
        s = summary["sorting"]
        right = f" ({s['sorted_accuracy']:.2%} of the labelled ones right)" if "sorted_accuracy" in s else ""
        print(
            f"sorted {s['sorted']} image(s) into {args.sort_into}/<class>/{right}, {s['review']} to review in "
            f"{args.sort_into}/_review/; page: {s['page']}"
        )
    return 0 if summary["count"] else 1


def cmd_export(args: argparse.Namespace) -> int:
    from imgcls import api

    r = api.export(
        args.run_dir,
        args.format,
        out=args.out,
        layout=args.layout,
        int8=args.int8,
        check_images=args.check_images,
    )
    print(
        f"{r.path}: {r.agreement_of} agreement with PyTorch {r.agreement:.2%}, max probability difference "
        f"{r.max_prob_diff:.1e} on {r.checked} images of many shapes ({r.check_source}; {r.seconds:.1f}s)"
    )
    if r.int8:
        q = r.int8
        print(
            f"{q['path']}: accuracy {q['accuracy_fp32']:.4f} -> {q['accuracy_int8']:.4f}, top-1 agreement "
            f"{q['top1_agreement']:.2%}, {q['images_per_s_fp32']} -> {q['images_per_s_int8']} images/s "
            f"({q['speedup']:.2f}x)"
        )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from imgcls import api

    api.serve(
        args.run_dir,
        host=args.host,
        port=args.port,
        device=args.device,
        batch_window_ms=args.batch_window_ms,
        max_bytes=int(args.max_mb * (1 << 20)),
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from imgcls.models import MODELS

    names = MODELS.list(args.pattern)
    if args.pattern.startswith("timm/"):
        import timm

        names = [f"timm/{n}" for n in timm.list_models(args.pattern[len("timm/") :])]
    print("\n".join(names) if names else f"no model matches {args.pattern!r}")
    return 0 if names else 1


# Every flag, declared once: name -> (config key or None, argparse options). Shared flags first; a command's
# own flags under its name (an --out or --batch-size means something different per command). Tables, one
# flag per line, so ruff's formatter (which would give each option a line of its own) is off for them.
# fmt: off
SHARED = {
    "--data": ("data.name", {"help": "built-in name (fashion-mnist, mnist, cifar10, cifar100, digits), a folder, a CSV manifest, hf:OWNER/NAME[:CONFIG] or a local Hugging Face dataset (imgcls[hf]), or tar shards 'shards/train-{000000..000009}.tar' (imgcls[wds])"}),
    "--model": ("model.name", {"help": "model name (see `imgcls models`), e.g. smallnet, resnet18, timm/convnext_nano"}),
    "--pretrained": ("model.pretrained", {"action": "store_const", "const": True, "help": "start from the architecture's ImageNet weights (torchvision/timm) and fine-tune"}),
    "--weights": ("model.weights", {"metavar": "FILE|RUN_DIR", "help": "start from local weights: a torchvision/timm .pth/.safetensors, or an imgcls run folder"}),
    "--batch-size": ("data.batch_size", {"type": int}),
    "--config": (None, {"help": "a YAML file of config sections (see configs/)"}),
    "--set": (None, {"nargs": "+", "action": "extend", "default": [], "metavar": "KEY=VALUE", "help": "config overrides, e.g. optim.name=adamw train.amp=off (repeatable)"}),
    "run_dir": (None, {"metavar": "RUN_DIR"}),
    "--device": (None, {"default": "auto", "help": "auto, cpu, cuda, cuda:1, mps"}),
}
OWN = {
    "train": {
        "--epochs": ("train.epochs", {"type": int}),
        "--time": ("train.time", {"help": "time budget for the whole run, e.g. 90s, 5m, 1h (plans the schedule to end on time)"}),
        "--lr": ("optim.lr", {"type": _lr, "help": "peak learning rate, or auto (an LR range test picks it)"}),
        "--freeze": ("model.freeze", {"metavar": "auto|none|N|backbone", "help": "fine-tuning: what stays frozen after the head-only phase (backbone: linear probing)"}),
        "--patience": ("train.patience", {"type": int, "help": "stop when validation accuracy has not improved for N epochs"}),
        "--abstain": ("train.abstain", {"metavar": "0.99|coverage=0.9", "help": "answer \"I don't know\" below a calibrated confidence chosen on the validation split for this precision (or coverage)"}),
        "--task": ("data.task", {"choices": ["auto", "multiclass", "multilabel"], "help": "multilabel: each image has a set of labels (a CSV manifest: 'dog;cat' cells or a row per label); auto: detected from the manifest, said in the log"}),
        "--strict": ("data.strict", {"action": "store_const", "const": True, "help": "unreadable images are an error, not a counted skip"}),
        "--out": ("out", {"help": "run folder (default: runs/<data>-<model>-<time>)"}),
        "--resume": (None, {"metavar": "RUN_DIR", "help": "continue a run from its last checkpoint"}),
        "--overwrite": (None, {"action": "store_true", "help": "--out names an earlier run folder: empty it and start anew"}),
    },
    "eval": {
        "--data": (None, {"help": "data to evaluate on (default: the data the run was trained on)"}),
        "--split": (None, {"choices": ["test", "val"], "default": "test"}),
        "--batch-size": (None, {"type": int}),
        "--json": (None, {"action": "store_true", "help": "print the metrics as one JSON object on stdout"}),
        "--tta": (None, {"choices": ["flip", "off"], "help": "evaluate with/without flip TTA (both are reported); kept for the model"}),
        "--calibrate": (None, {"action": "store_true", "help": "fit temperature scaling on the validation split, store it with the model, report ECE before/after"}),
        "--abstain": (None, {"metavar": "0.99|coverage=0.9", "help": "calibrate, then choose on the validation split the confidence below which the model answers \"I don't know\" (for this precision, or coverage); stored with the model"}),
        "--ood": (None, {"metavar": "DATA", "help": "images of none of the classes (a folder, manifest or dataset): report the AUROC of telling them apart by confidence"}),
    },
    "report": {"--split": (None, {"choices": ["test", "val"], "default": "test"})},
    "predict": {
        "paths": (None, {"nargs": "+", "metavar": "PATH", "help": "image files, folders (searched recursively), globs ('photos/**/*.jpg') or a CSV manifest"}),
        "--out": (None, {"metavar": "FILE", "help": "write predictions to FILE.csv or FILE.jsonl"}),
        "--batch-size": (None, {"type": int, "default": 256}),
        "--backend": (None, {"choices": ["torch", "onnx", "torchscript"], "default": "torch", "help": "run the exported artifact (imgcls export) instead of PyTorch; RUN_DIR may be the file"}),
        "--top-k": (None, {"type": int, "default": 5}),
        "--json": (None, {"action": "store_true", "help": "one JSON object per line on stdout"}),
        "--explain": (None, {"metavar": "OUT_DIR", "help": "also write each image's class-activation map (predicted class) as OUT_DIR/<name>.cam.png; needs imgcls[explain]"}),
        "--sort-into": (None, {"metavar": "OUT", "help": "also place each image in OUT/<class>/ when the model is confident, else in OUT/_review/ (hard links or copies; inputs never move), with OUT/review.html"}),
        "--accept": (None, {"type": float, "metavar": "P", "help": "--sort-into: the top probability that sorts an image into its class (default: the model's abstention threshold, else 0.9)"}),
        "--explain-method": (None, {"choices": ["gradcam++", "gradcam", "gradcam-elementwise", "hirescam", "layercam", "eigencam"], "default": "gradcam++"}),
    },
    "lr-find": {"--out": (None, {"help": "folder for lr_find.png/json (default: runs/lr-find-<data>-<model>-<time>)"})},
    "data check": {
        "data": (None, {"metavar": "DATA"}),
        "--out": (None, {"default": "data-check.json", "help": "JSON report path (default: data-check.json)"}),
        "--no-near": (None, {"action": "store_true", "help": "skip the near-duplicate search"}),
        "--html": (None, {"metavar": "FILE", "help": "also write a page with thumbnails of every named image"}),
        "--set": (None, {"nargs": "+", "action": "extend", "default": [], "metavar": "KEY=VALUE", "help": "data.* settings, e.g. data.test_split=0.2"}),
    },
    "data manifest": {
        "folder": (None, {"metavar": "FOLDER"}),
        "--out": (None, {"metavar": "FILE", "help": "the manifest (default FOLDER/labels.csv; in FOLDER or above)"}),
    },
    "data pack": {
        "data": (None, {"metavar": "DATA"}),
        "--out": (None, {"required": True, "metavar": "DIR", "help": "a new (or empty) folder for <split>-NNNNNN.tar and classes.json"}),
        "--shard-size": (None, {"default": "1GB", "metavar": "SIZE", "help": "start a new shard past this size, e.g. 500MB, 1GB (default 1GB)"}),
        "--set": (None, {"nargs": "+", "action": "extend", "default": [], "metavar": "KEY=VALUE", "help": "data.* settings, e.g. data.image_column=img"}),
    },
    "export": {
        "--format": (None, {"choices": ["onnx", "torchscript"], "default": "onnx"}),
        "--layout": (None, {"choices": ["nhwc", "nchw"], "default": "nhwc", "help": "input layout (default N,H,W,C)"}),
        "--out": (None, {"help": "artifact path (default: RUN_DIR/model.onnx or RUN_DIR/model.torchscript.pt)"}),
        "--check-images": (None, {"metavar": "DIR", "help": "check the artifact on these images (default: the run's validation images; synthetic if gone)"}),
        "--int8": (None, {"action": "store_true", "help": "also write MODEL.int8.onnx (static quantization calibrated on training images); reports accuracy and speed"}),
    },
    "serve": {
        "--host": (None, {"default": "127.0.0.1"}),
        "--port": (None, {"type": int, "default": 8000}),
        "--batch-window-ms": (None, {"type": float, "default": 5.0, "help": "batch requests arriving within this window; 0: off"}),
        "--max-mb": (None, {"type": float, "default": 10.0, "help": "upload size limit per file (MB)"}),
    },
    "models": {"pattern": (None, {"nargs": "?", "default": "*", "help": "wildcard filter, e.g. 'resnet*' or 'timm/*convnext*'"})},
}
SOURCE = ("--data", "--model", "--pretrained", "--weights", "--batch-size", "--config", "--set")  # train, lr-find
# command: (its function, the shared flags it takes, help line, description)
COMMANDS = {
    "train": (cmd_train, SOURCE, "train (and test) a model; with no flags: the default model on Fashion-MNIST",
              "Train a model, keep best/last checkpoints in a run folder, evaluate it on the test split."),
    "eval": (cmd_eval, ("run_dir", "--device"), "evaluate a run's model on a data split",
             "Evaluate a run's best model; writes eval.json and a confusion matrix into the run folder."),
    "report": (cmd_report, ("run_dir",), "re-render a run's report.html from its eval.json and metrics.csv",
               "Re-render RUN_DIR/report.html (self-contained, opens offline) without the model or data."),
    "predict": (cmd_predict, ("run_dir", "--device"), "classify image files or folders", "Print the top-k classes of each image."),
    "lr-find": (cmd_lr_find, SOURCE, "LR range test: plot loss against learning rate, suggest one",
                "Train briefly with a growing learning rate; saves lr_find.png and prints a suggestion "
                "(use it with --lr, or let `train --lr auto` run this test itself)."),
    "data check": (cmd_data_check, (), "diagnose a dataset: broken/odd files, class balance, duplicates and leakage, mean/std",
                   "Check a folder, CSV manifest or built-in dataset. Prints a summary, writes a JSON report; "
                   "exit code 0 when there are no errors (warnings allowed), 1 when there are."),
    "data pack": (cmd_data_pack, (), "write any dataset imgcls reads as WebDataset tar shards (needs imgcls[wds])",
                  "Write the splits of a folder, CSV, built-in or Hugging Face dataset as OUT/<split>-NNNNNN.tar shards "
                  "(image + .cls per sample, files' bytes unchanged) and OUT/classes.json; train on them with --data OUT."),
    "data manifest": (cmd_data_manifest, (), "write a training manifest of a folder of class folders (after a --sort-into review)",
                      "List every image in FOLDER/<class>/ (not _review/) as path,label in a CSV manifest that "
                      "`imgcls train --data` takes: the labels confirmed in review, back into training."),
    "export": (cmd_export, ("run_dir",), "export a run's model (ONNX or TorchScript) with its preprocessing, and check it against PyTorch",
               "Write an artifact that takes raw uint8 images and returns probabilities (resize, scaling, normalization, "
               "TTA and temperature inside), with class names and the input spec in its metadata; then check it against "
               "`imgcls predict` on raw images of many shapes (top-1 or, multi-label, label-set agreement >= 99.9%, probabilities within 1e-3)."),
    "serve": (cmd_serve, ("run_dir", "--device"), "serve a run's model over HTTP, with a page to try it",
              "POST /predict (multipart images) -> top-k JSON; GET /health, /info; GET / is a page; "
              "OpenAPI docs at /docs. Binds to loopback unless --host says otherwise."),
    "models": (cmd_models, (), "list registered model names", "List model names; timm models are used as timm/<name>."),
}
# fmt: on


def _add(parser: argparse.ArgumentParser, name: str, key: str | None, options: dict[str, Any]) -> None:
    """One flag (or positional argument); a flag with a config key stores under cfg:<key>, and its help names
    the key, so the flag and its --set / YAML spelling are found together."""
    options = dict(options)
    if key:
        options["help"] = f"{options.get('help', '')} [{key}]".lstrip()
        if "const" not in options:
            options.setdefault("metavar", name.lstrip("-").upper().replace("-", "_"))
        options["dest"] = KEY_PREFIX + key
    parser.add_argument(name, **options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgcls", description="Train, evaluate and use image classifiers.")
    parser.add_argument("--version", action="version", version=f"imgcls {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups = {"": sub}
    for command, (run, shared, summary, description) in COMMANDS.items():
        group, _, name = command.rpartition(" ")
        if group not in groups:  # "data check": the data command's first tool makes its group
            tools = sub.add_parser(
                group, help=f"{group} tools: `imgcls {command} ...`", description=f"{group} tools."
            )
            groups[group] = tools.add_subparsers(dest=f"{group}_command", metavar="SUBCOMMAND", required=True)
        command_parser = groups[group].add_parser(name, help=summary, description=description)
        for flag in shared:
            _add(command_parser, flag, *SHARED[flag])
        for flag, (key, options) in OWN[command].items():
            _add(command_parser, flag, key, options)
        command_parser.set_defaults(func=run)
    return parser


def overrides_of(args: argparse.Namespace) -> dict[str, Any]:
    """--set overrides, then every given flag that names a config key (flags win)."""
    overrides = parse_overrides(getattr(args, "set", []))
    given = {
        k.removeprefix(KEY_PREFIX): v
        for k, v in vars(args).items()
        if k.startswith(KEY_PREFIX) and v is not None
    }
    return overrides | given


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
    finally:
        if "torch" in sys.modules:  # leave torchrun's process group cleanly
            from imgcls.utils import dist

            dist.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
