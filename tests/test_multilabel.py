"""Multi-label end to end: one trained run on tiny label-set data, then thresholds, eval, predict, export
(read by a plain onnxruntime client), serve, the report in Chromium, the data check, and resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgcls
from imgcls.api.runs import run_config
from imgcls.data.datasets import open_dataset
from imgcls.engine.state import read_state
from imgcls.inference.predict import Predictor
from imgcls.metrics import tune_thresholds
from tests.browser import chromium
from tests.engine.test_train import StopAfter
from tests.multilabel import LABELS, write_multilabel_manifest

FAST = {"train.amp": "off", "log.progress": False, "data.batch_size": 32, "optim.lr": 0.05}


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory) -> tuple[Path, Path]:
    """A smallnet trained on 120 images with 0-3 labels each (train/val/test from the manifest's split column)."""
    root = tmp_path_factory.mktemp("multilabel")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMGCLS_DATA", str(tmp_path_factory.getbasetemp() / "imgcls-data"))  # as every test has it
        manifest = write_multilabel_manifest(root / "data", n=120, splits=True)
        imgcls.train(data=str(manifest), model="smallnet", epochs=6, out=root / "run", overrides=FAST)
    return root / "run", manifest


def _true_sets(manifest: Path, split: str = "test") -> dict[str, set[str]]:
    """A split's images (absolute paths) and their label sets, read straight from the manifest."""
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {
        str(manifest.parent / r["path"]): {x for x in r["labels"].split(";") if x}
        for r in rows
        if r["split"] == split
    }


def test_thresholds_are_tuned_on_the_validation_split_and_stored(ml_run):
    run, _ = ml_run
    meta = json.loads((run / "model.json").read_text())
    assert meta["task"] == "multilabel" and meta["classes"] == sorted(LABELS)
    predictor = Predictor.from_run(run, device="cpu")
    val = open_dataset(run_config(run).data).val
    with torch.inference_mode():
        views = torch.stack([predictor.preprocess(p) for p in val.paths]).float() / 255
        probs = predictor.meta.probabilities(predictor.model(views))
    assert meta["thresholds"] == pytest.approx(tune_thresholds(probs, val.labels), abs=1e-5)
    assert meta["thresholds"] != [0.5, 0.5, 0.5]
    result = json.loads((run / "eval.json").read_text())
    assert result["task"] == "multilabel" and result["map_macro"] > 0.9
    assert [m["threshold"] for m in result["per_label"].values()] == pytest.approx(meta["thresholds"])
    for key in ("map_micro", "exact_match", "hamming_loss", "f1_micro", "pr_curves", "cooccurrence"):
        assert key in result, key
    assert (run / "pr_curves.png").stat().st_size > 5000 and not (run / "confusion_matrix.png").exists()
    history = (run / "metrics.csv").read_text().splitlines()
    assert "val_map" in history[0] and len(history) == 7


def test_predict_writes_label_sets_and_scores_exact_match(ml_run, tmp_path: Path):
    run, manifest = ml_run
    out = tmp_path / "p.csv"
    summary = imgcls.predict(run, [manifest], out=out)
    truth = {**_true_sets(manifest, "train"), **_true_sets(manifest, "val"), **_true_sets(manifest, "test")}
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "labels", "probabilities", "top_k", "true_labels"]
    assert len(rows) == summary["count"] == summary["labelled"] == 120  # each image once, one row per image
    predicted = {r["path"]: {x for x in r["labels"].split(";") if x} for r in rows}
    right = sum(predicted[p] == truth[p] for p in truth)
    assert summary["exact_match"] == pytest.approx(right / 120) and summary["exact_match"] > 0.7
    assert all({x for x in r["true_labels"].split(";") if x} == truth[r["path"]] for r in rows)
    one = imgcls.load(run).predict([next(iter(truth))])[0]
    assert set(one) == {"labels", "probabilities", "top_k"} and len(one["labels"]) == len(
        one["probabilities"]
    )


def test_an_onnx_client_gets_the_label_sets_predict_gives(ml_run, tmp_path: Path):
    """Plain onnxruntime, reading classes and thresholds from the export's metadata, on every test image
    (and the same images as non-square photos): label sets equal `imgcls predict`'s."""
    import onnxruntime as ort

    run, manifest = ml_run
    result = imgcls.export(run, "onnx", out=tmp_path / "m.onnx", check_limit=40)
    assert result.agreement_of == "label-set" and result.agreement == 1.0
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    classes, thresholds = json.loads(props["classes"]), np.array(json.loads(props["thresholds"]))
    assert props["task"] == "multilabel" and "sigmoid" in json.loads(props["input"])["output"]
    files = list(_true_sets(manifest))
    photos = []
    for i, f in enumerate(files):  # each test image also as a wide photo
        photo = tmp_path / f"wide{i}.png"
        Image.open(f).resize((64, 40)).save(photo)
        photos.append(str(photo))
    expected = {p["path"]: set(p["labels"]) for p in _predictions(run, files + photos)}
    for path in files + photos:
        pixels = np.asarray(Image.open(path).convert("RGB"))[None]
        probs = session.run(None, {session.get_inputs()[0].name: pixels})[0][0]
        assert {classes[j] for j in np.flatnonzero(probs >= thresholds)} == expected[path], path


def _predictions(run: Path, paths: list[str]) -> list[dict]:
    preds: list[dict] = []
    imgcls.predict(run, paths, on_prediction=preds.append)
    return preds


def test_the_server_answers_label_sets(ml_run):
    from fastapi.testclient import TestClient

    from imgcls.inference.serve import create_app

    run, manifest = ml_run
    path = next(iter(_true_sets(manifest)))
    with TestClient(create_app(Predictor.from_run(run, device="cpu"))) as client:
        info = client.get("/info").json()
        assert info["task"] == "multilabel" and len(info["thresholds"]) == 3
        body = client.post(
            "/predict", files={"files": ("x.png", Path(path).read_bytes(), "image/png")}
        ).json()
    pred = body["predictions"][0]
    assert set(pred["labels"]) == set(_predictions(run, [path])[0]["labels"])
    assert [t["label"] for t in pred["top_k"]][:1] and "label" not in pred


def test_the_multilabel_report_renders_in_chromium(ml_run, tmp_path: Path):
    run, _ = ml_run
    browser = chromium(tmp_path)
    try:
        browser.get((run / "report.html").as_uri())
        for section in (
            "headline",
            "per-label",
            "pr-curves",
            "frequent-mistakes",
            "mistakes",
            "cooccurrence",
            "curves",
        ):
            element = browser.find_element("id", section)
            assert element.is_displayed() and element.size["height"] > 20, section
        broken = browser.execute_script(
            "return [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt)"
        )
        assert broken == [] and len(browser.find_elements("tag name", "img")) >= 3
        table = browser.find_element("id", "per-label").text
        assert all(label in table for label in LABELS) and "threshold" in table
        assert "mAP (macro)" in browser.find_element("id", "headline").text
        browser.get_screenshot_as_file(str(tmp_path / "report.png"))
    finally:
        browser.quit()


def test_the_data_check_reports_label_sets(ml_run, tmp_path: Path):
    _, manifest = ml_run
    report = imgcls.check_data(str(manifest), out=tmp_path / "check.json", near=False)
    labels = report["labels"]
    assert set(labels["no_label"]) == {"train", "val", "test"} and labels["no_label"]["train"] > 0
    assert set(labels["positive_rate"]) == set(LABELS) and labels["frequent_pairs"][0]["count"] > 0
    train = _true_sets(manifest, "train").values()
    assert report["class_counts"]["train"] == {c: sum(c in s for s in train) for c in LABELS}


def test_resume_of_a_multilabel_run_equals_an_uninterrupted_one(tmp_path: Path):
    manifest = write_multilabel_manifest(tmp_path / "data", n=40)
    over = {**FAST, "data.mixup": 0.3, "data.augment": "crop", "model.drop_rate": 0.2, "data.batch_size": 16}
    args = {"data": str(manifest), "model": "smallnet", "epochs": 2, "overrides": over}
    straight = imgcls.train(out=tmp_path / "a", **args)
    imgcls.train(out=tmp_path / "b", callbacks=[StopAfter(1)], **args)
    resumed = imgcls.train(resume=tmp_path / "b")
    a, b = read_state(tmp_path / "a" / "state.pt"), read_state(tmp_path / "b" / "state.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]
    thresholds = [json.loads((tmp_path / run / "model.json").read_text())["thresholds"] for run in "ab"]
    assert thresholds[0] == thresholds[1]
    assert straight.test["map_macro"] == resumed.test["map_macro"]


def test_eval_and_report_commands_on_a_multilabel_run(ml_run, capsys):
    from imgcls import cli

    run, _ = ml_run
    assert cli.main(["eval", str(run), "--json", "--tta", "flip"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "multilabel" and set(result["tta"]) == {"off", "flip"}
    stored = json.loads((run / "model.json").read_text())
    assert [m["threshold"] for m in result["per_label"].values()] == pytest.approx(stored["thresholds"])
    assert cli.main(["eval", str(run), "--calibrate"]) == 2
    assert "--calibrate and --abstain fit a softmax temperature" in capsys.readouterr().err
    (run / "report.html").unlink()
    assert cli.main(["report", str(run)]) == 0 and "mAP (macro)" in (run / "report.html").read_text()


@pytest.mark.slow  # torchrun start-up and two processes: ~25 s; tutorial-cnn: no BatchNorm, whose statistics
# are per rank
def test_two_process_ddp_multilabel_run_matches_one_process(tmp_path: Path):
    from safetensors.torch import load_file

    from tests.utils.test_dist import WEIGHT_ATOL, _imgcls

    manifest = write_multilabel_manifest(tmp_path / "data", n=90, splits=True)
    args = [
        "train",
        "--data",
        str(manifest),
        "--model",
        "tutorial-cnn",
        "--epochs",
        "3",
        "--batch-size",
        "32",
    ]
    args += ["--set", "train.amp=off", "log.progress=false"]
    _imgcls(*args, "--out", str(tmp_path / "ddp"), nproc=2)
    _imgcls(*args, "--out", str(tmp_path / "single"))
    a, b = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("ddp", "single"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < WEIGHT_ATOL
    ea, eb = (json.loads((tmp_path / run / "eval.json").read_text()) for run in ("ddp", "single"))
    assert ea["num_samples"] == eb["num_samples"] == 15
    assert abs(ea["map_macro"] - eb["map_macro"]) < 0.01
