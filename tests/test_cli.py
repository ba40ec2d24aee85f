"""The command line end to end on tiny data: train, eval --json, predict, models, and clear errors."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("command", ["train", "eval", "predict", "models", "lr-find"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: imgcls " + command in capsys.readouterr().out


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
        (["train", "--set", "train.device=cuda", "--data", "digits"], "CUDA is not available"),
        (["eval", "/no/such/run"], "not an imgcls run folder"),
        (["predict", "/no/such/run", "x.png"], "not an imgcls run folder"),
        (["train", "--resume", "/no/such/run"], "cannot resume"),
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
