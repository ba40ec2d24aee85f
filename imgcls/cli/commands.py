"""The `imgcls` commands: each turns parsed arguments into one call of imgcls.api and prints its outcome.
`COMMANDS` is the table the parser is built from."""

from __future__ import annotations

import argparse
import json
import sys

from imgcls.cli.flags import SOURCE, is_rank_zero, overrides_of
from imgcls.config import ConfigError, parse_overrides


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
    if not is_rank_zero():
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
    if is_rank_zero():
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


def cmd_data_labels(args: argparse.Namespace) -> int:
    from imgcls import api

    r = api.review_labels(
        args.data,
        out=args.out,
        folds=args.folds,
        time_budget=args.time,
        rank_by=args.rank_by,
        config=args.config,
        overrides=overrides_of(args),
        count_startup=True,
    )
    issues = ", ".join(f"{n} {kind}" for kind, n in r["issues"].items())
    print(
        f"{sum(r['issues'].values())} of {r['images']} images to review ({issues}); estimated wrong labels "
        f"{100 * r['estimated_noise_rate']:.2f}%\nreview: {r['review']}  page: {r['page']}\n"
        f"then fill the action column and: imgcls data apply {r['review']} --out fixed.csv"
    )
    return 0


def cmd_data_apply(args: argparse.Namespace) -> int:
    from imgcls import api

    r = api.apply_review(args.review, out=args.out)
    print(
        f"{r['manifest']}: {r['rows']} images ({r['relabelled']} relabelled, {r['dropped']} dropped); "
        f"train: imgcls train --data {r['manifest']}"
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
    if args.json and is_rank_zero():
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


# command: (its function, the shared flags it takes, help line, description); one per line, unformatted
# fmt: off
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
    "data labels": (cmd_data_labels, (), "find likely label errors (cross-fitted confident learning), conflicts and outliers for review",
                    "Train a model per fold (default 5) so every image is predicted by a model that never saw its label; rank "
                    "the images whose label is likely wrong (confident learning), after the same picture filed under two "
                    "classes and before the outliers of each class. Writes review.csv and review.html; files are only read."),
    "data apply": (cmd_data_apply, (), "write a new manifest from a filled-in review.csv (keep / relabel / drop)",
                   "Write every image of the reviewed data as path,label[,split] with the review's decisions applied; "
                   "the images and the original labels are not changed."),
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
