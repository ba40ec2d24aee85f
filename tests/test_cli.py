"""The command line end to end on tiny data: train, eval --json, predict, models, and clear errors."""

import csv
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imgcls import cli
from tests.conftest import CLASSES, RUN_FILES, make_image, write_class_tree

TINY = [
    "--epochs",
    "4",
    "--batch-size",
    "16",
    "--lr",
    "0.05",
    "--set",
    "train.amp=off",
    "log.progress=false",
    "data.image_size=16",
]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> tuple[Path, Path]:
    from tests.conftest import write_class_tree

    root = tmp_path_factory.mktemp("cli")
    write_class_tree(root / "data", per_class=20)
    run = root / "run"
    code = cli.main(
        ["train", "--data", str(root / "data"), "--model", "tutorial-cnn", "--out", str(run), *TINY]
    )
    assert code == 0
    return root / "data", run


def test_console_script_and_module_entry_points():
    console_script = str(Path(sys.executable).parent / "imgcls")
    for cmd in ([console_script], [sys.executable, "-m", "imgcls"]):
        out = subprocess.run([*cmd, "models", "resnet*"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["resnet18", "resnet34", "resnet50"]


def commands(parser=None, prefix=()) -> list[tuple[tuple[str, ...], object]]:
    """Every (sub)command of the CLI with its parser, found by walking argparse's subparsers."""
    import argparse

    parser = parser or cli.build_parser()
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append(((*prefix, name), sub))
                found += commands(sub, (*prefix, name))
    return found


@pytest.mark.parametrize("command", [c for c, _ in commands()], ids=" ".join)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: imgcls " + " ".join(command) in capsys.readouterr().out


def test_repeated_set_flags_accumulate_for_every_command_that_takes_them():
    taking = [c for c, sub in commands() if any("--set" in a.option_strings for a in sub._actions)]
    assert {("train",), ("lr-find",), ("data", "check")} <= set(taking)
    positional = {
        ("data", "check"): ["DATA"],
        ("data", "labels"): ["DATA"],
        ("data", "pack"): ["DATA", "--out", "shards"],
    }
    for command in taking:
        argv = [*command, *positional.get(command, []), "--set", "a.b=1", "--set", "c.d=2", "e.f=3"]
        assert cli.build_parser().parse_args(argv).set == ["a.b=1", "c.d=2", "e.f=3"], command


def test_each_flag_sets_its_config_key_and_wins_over_set():
    argv = [
        "train",
        "--data",
        "digits",
        "--epochs",
        "3",
        "--lr",
        "auto",
        "--strict",
        "--pretrained",
        "--out",
        "r",
        "--time",
        "20s",
        "--set",
        "train.epochs=9",
        "optim.momentum=0.8",
    ]
    overrides = cli.overrides_of(cli.build_parser().parse_args(argv))
    assert overrides == {
        "data.name": "digits",
        "train.epochs": 3,
        "optim.lr": "auto",
        "data.strict": True,
        "model.pretrained": True,
        "out": "r",
        "train.time": "20s",
        "optim.momentum": 0.8,
    }
    assert cli.overrides_of(cli.build_parser().parse_args(["train"])) == {}  # absent flags set nothing


def test_every_config_flag_names_a_real_key():
    from imgcls.config import Config

    tables = [cli.SHARED, *cli.OWN.values()]
    keys = {key for table in tables for key, _ in table.values() if key}
    assert len(keys) >= 12
    for key in keys:
        *section, name = key.split(".")
        assert hasattr(getattr(Config(), section[0]) if section else Config(), name), key


def test_settings_given_by_repeated_set_reach_the_run(image_tree: Path, tmp_path: Path):
    run = tmp_path / "run"
    argv = [
        "train",
        "--data",
        str(image_tree),
        "--model",
        "tutorial-cnn",
        "--out",
        str(run),
        "--epochs",
        "1",
        "--set",
        "train.deterministic=true",
        "--set",
        "train.checkpoint_every=2",
        "--set",
        "log.progress=false",
    ]
    assert cli.main(argv) == 0
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["train"]["deterministic"] is True and config["train"]["checkpoint_every"] == 2


def test_train_writes_a_complete_run_folder(folder_run):
    _, run = folder_run
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    meta = json.loads((run / "model.json").read_text())
    assert meta["classes"] == list(CLASSES) and meta["in_chans"] == 3 and meta["input_size"] == 16


def test_eval_json(folder_run, capsys):
    data, run = folder_run
    assert cli.main(["eval", str(run), "--data", str(data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "num_samples", "per_class"):
        assert key in result
    assert "top5_accuracy" not in result  # only 3 classes
    assert set(result["per_class"]) == set(CLASSES)
    assert {"precision", "recall", "f1", "support"} <= set(result["per_class"]["cross"])
    assert result["accuracy"] >= 0.9  # the colour task is easy: the model must have learned it
    assert json.loads((run / "eval.json").read_text())["accuracy"] == result["accuracy"]


def test_eval_val_split(folder_run, capsys):
    _, run = folder_run
    assert cli.main(["eval", str(run), "--split", "val", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["split"] == "val"
    assert (run / "eval-val.json").is_file()


def test_predict_names_the_right_classes(folder_run, tmp_path: Path, capsys):
    _, run = folder_run
    import numpy as np

    rng = np.random.default_rng(99)
    files = []
    for label, name in enumerate(CLASSES):
        path = tmp_path / f"new_{name}.jpg"
        make_image(label, rng).save(path)
        files.append(path)
    (tmp_path / "broken.png").write_bytes(b"nope")
    assert cli.main(["predict", str(run), str(tmp_path), "--top-k", "2", "--json"]) == 0
    captured = capsys.readouterr()
    preds = [json.loads(line) for line in captured.out.splitlines()]
    assert len(preds) == 3
    for pred in preds:
        assert pred["label"] == Path(pred["path"]).stem.removeprefix("new_")
        assert len(pred["top_k"]) == 2 and 0 < pred["probability"] <= 1
    assert "skipped 1" in captured.err and "broken.png" in captured.err


def test_batch_prediction_writes_csv_and_jsonl_and_scores_labelled_inputs(folder_run, tmp_path: Path, capsys):
    data, run = folder_run
    tree = tmp_path / "tree"
    write_class_tree(tree, per_class=5, seed=7)  # class folders: true labels known
    (tree / "circle" / "broken.png").write_bytes(b"nope")
    out_csv = tmp_path / "preds.csv"
    assert cli.main(["predict", str(run), str(tree), "--out", str(out_csv), "--batch-size", "4"]) == 0
    captured = capsys.readouterr()
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 15 and {r["true_label"] for r in rows} == set(CLASSES)
    assert all(len(r["top_k"].split(";")) == 3 for r in rows)
    assert "15 predictions written" in captured.out and "accuracy" in captured.out
    assert "skipped 1" in captured.err and "broken.png" in captured.err

    manifest = tmp_path / "list.csv"
    manifest.write_text(
        "path,label\n" + "".join(f"tree/{c}/{c}_0.png,{c}\n" for c in CLASSES) + "tree/gone.png,circle\n"
    )
    out_jsonl = tmp_path / "preds.jsonl"
    assert (
        cli.main(["predict", str(run), str(manifest), str(tree / "cross" / "*.png"), "--out", str(out_jsonl)])
        == 0
    )
    lines = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
    assert len(lines) == 3 + 5 and sum("true_label" in line for line in lines) == 4  # cross_0 is in both
    assert "gone.png" in capsys.readouterr().err
    assert cli.main(["predict", str(run), str(tree), "--out", str(tmp_path / "preds.txt")]) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--data", "/no/such/dir"], "neither an existing folder"),
        (["train", "--model", "resnet81", "--data", "digits"], "Did you mean: resnet18"),
        (["train", "--set", "optim.lrr=0.1"], "Did you mean lr"),
        pytest.param(
            ["train", "--set", "train.device=cuda", "--data", "digits"],
            "CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
        (["eval", "/no/such/run"], "not an imgcls run folder"),
        (["predict", "/no/such/run", "x.png"], "not an imgcls run folder"),
        (["train", "--resume", "/no/such/run"], "cannot resume"),
        (["train", "--overwrite"], "--overwrite empties the run folder named by --out"),
        (["train", "--data", "digits", "--weights", "/no/such.pth"], "no weights at /no/such.pth"),
        (["train", "--data", "digits", "--model", "tutorial-cnn", "--pretrained"], "no pretrained weights"),
        (["train", "--data", "digits", "--freeze", "most"], "model.freeze must be"),
    ],
)
def test_user_mistakes_are_one_line_errors(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_data_through_a_real_process_has_no_traceback(tmp_path: Path):
    out = subprocess.run(
        [sys.executable, "-m", "imgcls", "train", "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "error: no class folders" in out.stderr and "Traceback" not in out.stderr


def test_csv_dataset_trains_and_evaluates(csv_manifest: Path, tmp_path: Path, capsys):
    run = tmp_path / "csvrun"
    assert (
        cli.main(["train", "--data", str(csv_manifest), "--model", "tutorial-cnn", "--out", str(run), *TINY])
        == 0
    )
    assert cli.main(["eval", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["num_samples"] == 3 and set(result["per_class"]) == set(CLASSES)


def test_lr_find_prints_a_suggestion_train_can_use(tmp_path: Path, capsys):
    argv = [
        "lr-find",
        "--data",
        "digits",
        "--model",
        "tutorial-cnn",
        "--out",
        str(tmp_path / "lrf"),
        "--set",
        "train.amp=off",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "suggested lr" in out and "--lr auto" in out
    assert json.loads((tmp_path / "lrf" / "lr_find.json").read_text())["suggestion"] > 0
    with pytest.raises(SystemExit):
        cli.main(["train", "--lr", "fast"])
    assert "--lr takes a number or auto" in capsys.readouterr().err


def test_a_non_empty_out_is_refused_unless_resumed_or_overwritten(folder_run, tmp_path: Path, capsys):
    data, run = folder_run
    argv = [
        "train",
        "--data",
        str(data),
        "--model",
        "tutorial-cnn",
        "--epochs",
        "1",
        "--set",
        "log.progress=false",
    ]
    assert cli.main([*argv, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"--out {run} is not empty" in err and "--resume" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "model.onnx").write_bytes(b"stale")
    assert cli.main([*argv, "--out", str(copy), "--overwrite"]) == 0
    assert not (copy / "model.onnx").exists() and (copy / "model.safetensors").is_file()

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert cli.main([*argv, "--out", str(mine), "--overwrite"]) == 2
    assert (
        "not an imgcls run folder" in capsys.readouterr().err
        and (mine / "notes.txt").read_text() == "keep me"
    )


def test_an_out_that_cannot_be_created_is_one_error_line(tmp_path: Path, capsys):
    (tmp_path / "file").write_text("x")
    assert (
        cli.main(["train", "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "file" / "run")]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: cannot create the run folder") and len(err.strip().splitlines()) == 1


def test_run_files_honour_the_umask(image_tree: Path, tmp_path: Path):
    old = os.umask(0o022)
    try:
        run = tmp_path / "run"
        assert (
            cli.main(
                [
                    "train",
                    "--data",
                    str(image_tree),
                    "--model",
                    "tutorial-cnn",
                    "--epochs",
                    "1",
                    "--out",
                    str(run),
                    "--set",
                    "log.progress=false",
                ]
            )
            == 0
        )
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in run.iterdir() if p.is_file()}
    assert {"model.safetensors", "model.json", "state.pt", "eval.json", "report.html"} <= modes.keys()
    assert set(modes.values()) == {0o644}, modes


def test_a_run_folder_without_its_config_is_a_clear_error_and_export_needs_no_data(
    folder_run, tmp_path: Path, capsys
):
    data, run = folder_run
    copy = tmp_path / "copied"
    shutil.copytree(run, copy)
    (copy / "config.yaml").unlink()
    assert cli.main(["eval", str(copy)]) == 2
    assert "has no config.yaml" in capsys.readouterr().err  # never a silent fall-back to Fashion-MNIST
    assert cli.main(["eval", str(copy), "--data", str(data), "--json"]) == 0  # told the data, it goes on
    capsys.readouterr()

    assert cli.main(["export", str(copy)]) == 0  # the data it was trained on is unknown here
    out = capsys.readouterr()
    assert "synthetic images only" in out.out and "--check-images" in out.err  # (--check-images: test_export)
