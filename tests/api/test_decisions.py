"""Abstention: a confidence threshold chosen on validation, stored with the run, used by eval, predict,
serve and the export (read by a plain onnxruntime client); out-of-distribution AUROC."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgcls
from imgcls.api.runs import run_config
from imgcls.config import ConfigError, DataConfig, parse_abstain
from imgcls.data.datasets import open_dataset
from imgcls.inference.predict import Predictor
from imgcls.metrics import abstention_summary, abstention_threshold, risk_coverage
from tests.multilabel import write_multilabel_manifest

FAST = {"train.amp": "off", "log.progress": False, "data.batch_size": 64, "optim.lr": 0.05}


@pytest.fixture(scope="module")
def unsure_run(tmp_path_factory) -> Path:
    """tutorial-cnn on digits for 2 epochs (unsure enough to abstain often), abstaining for precision 0.98."""
    out = tmp_path_factory.mktemp("abstain") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMGCLS_DATA", str(out.parent / "cache"))
        imgcls.train(
            data="digits",
            model="tutorial-cnn",
            epochs=2,
            out=out,
            overrides={**FAST, "train.abstain": "0.98"},
        )
    return out


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory) -> list[Path]:
    """60 digits test images as PNG files, half of them enlarged to non-square photos."""
    root = tmp_path_factory.mktemp("digit-pngs")
    test = open_dataset(DataConfig(name="digits")).test
    paths = []
    for i in range(60):
        image = Image.fromarray(test.images[i, 0].numpy())
        if i % 2:
            image = image.resize((40, 24), Image.Resampling.BILINEAR)
        paths.append(root / f"{i:02d}.png")
        image.save(paths[-1])
    return paths


def test_the_threshold_rules_on_hand_worked_examples():
    conf = torch.tensor([0.95, 0.9, 0.8, 0.7, 0.6])
    hits = torch.tensor([True, True, False, True, False])
    assert abstention_threshold(conf, hits, precision=0.99) == pytest.approx(0.85)  # the first two only
    assert abstention_threshold(conf, hits, precision=0.75) == pytest.approx(0.65)  # 3 of 4 right
    assert abstention_threshold(conf, hits, coverage=0.6) == pytest.approx(0.75)
    summary = abstention_summary(conf, hits, 0.65)
    assert summary == {
        "threshold": 0.65,
        "coverage": 0.8,
        "answered": 4,
        "abstained": 1,
        "accuracy_answered": 0.75,
    }
    curve = risk_coverage(conf, hits)
    assert curve["risk"] == [0.0, 0.0, pytest.approx(1 / 3), 0.25, 0.4] and curve["coverage"][-1] == 1.0
    assert parse_abstain("0.99") == ("precision", 0.99) and parse_abstain("coverage=0.9") == ("coverage", 0.9)
    for bad in ("1.5", "recall=0.9", "x"):
        with pytest.raises(ConfigError, match="train.abstain must look like"):
            parse_abstain(bad)


def test_the_threshold_is_chosen_on_validation_for_the_target_precision(unsure_run: Path):
    meta = json.loads((unsure_run / "model.json").read_text())
    assert meta["temperature"] != 1.0 and meta["abstain_rule"] == "precision 0.98 on the validation split"
    predictor = Predictor.from_run(unsure_run, device="cpu")
    val = open_dataset(run_config(unsure_run).data).val
    with torch.inference_mode():
        probs = predictor.model(val.images.float() / 255).softmax(1)  # calibrated: T inside the model
    answered = probs.max(1).values >= meta["abstain_threshold"]
    assert 0 < answered.sum() < len(val)
    assert (probs.argmax(1) == val.labels)[answered].float().mean() >= 0.98
    result = json.loads((unsure_run / "eval.json").read_text())
    a = result["abstention"]
    assert a["threshold"] == meta["abstain_threshold"] and a["answered"] + a["abstained"] == 359
    assert a["accuracy_answered"] > result["accuracy"]  # answering only when sure is more accurate
    assert "risk_coverage" in result and 'id="abstention"' in (unsure_run / "report.html").read_text()


def test_predict_says_i_dont_know_with_the_reason(unsure_run: Path, digit_pngs: list[Path], tmp_path: Path):
    out = tmp_path / "p.csv"
    summary = imgcls.predict(unsure_run, [str(p) for p in digit_pngs], out=out)
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0].keys() >= {"label", "abstained"} and summary["abstained"] > 0
    unsure = [r for r in rows if r["abstained"]]
    assert len(unsure) == summary["abstained"] and all(r["label"] == "" for r in unsure)
    assert "below" in unsure[0]["abstained"] and "precision 0.98" in unsure[0]["abstained"]
    pred = imgcls.load(unsure_run).predict([unsure[0]["path"]])[0]
    assert pred["label"] is None and pred["abstained"] == unsure[0]["abstained"]


def test_an_onnx_client_abstains_on_exactly_the_images_predict_does(
    unsure_run: Path, digit_pngs: list[Path], tmp_path: Path
):
    import onnxruntime as ort

    imgcls.export(unsure_run, "onnx", out=tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    classes, threshold = json.loads(props["classes"]), json.loads(props["abstain_threshold"])
    expected = {p["path"]: p["label"] for p in _predictions(unsure_run, digit_pngs)}
    decided = {}
    for path in digit_pngs:
        pixels = np.asarray(Image.open(path).convert("L"))[None, :, :, None]
        probs = session.run(None, {session.get_inputs()[0].name: pixels})[0][0]
        decided[str(path)] = classes[int(probs.argmax())] if probs.max() >= threshold else None
    assert decided == expected and None in decided.values()


def _predictions(run: Path, paths) -> list[dict]:
    preds: list[dict] = []
    imgcls.predict(run, [str(p) for p in paths], on_prediction=preds.append)
    return preds


def test_the_server_says_i_dont_know(unsure_run: Path, digit_pngs: list[Path]):
    from fastapi.testclient import TestClient

    from imgcls.inference.serve import create_app

    unsure = next(p for p in _predictions(unsure_run, digit_pngs) if p["label"] is None)
    with TestClient(create_app(Predictor.from_run(unsure_run, device="cpu"))) as client:
        body = client.post(
            "/predict", files={"files": ("x.png", Path(unsure["path"]).read_bytes(), "image/png")}
        )
    pred = body.json()["predictions"][0]
    assert pred["label"] is None and pred["abstained"] == unsure["abstained"]


def test_eval_chooses_a_coverage_and_measures_out_of_distribution_images(
    unsure_run: Path, tmp_path: Path, capsys
):
    from imgcls import cli

    run = tmp_path / "run"
    shutil.copytree(unsure_run, run)  # a copy: the other tests read the original's threshold
    ood = tmp_path / "ood"
    write_multilabel_manifest(ood, n=40)  # colour-noise pictures: no digit at all
    assert (
        cli.main(["eval", str(run), "--abstain", "coverage=0.7", "--ood", str(ood / "images"), "--json"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    meta = json.loads((run / "model.json").read_text())
    assert meta["abstain_rule"] == "coverage 0.7 on the validation split"
    assert result["ood"]["images"] == 40 and 0 <= result["ood"]["auroc"] <= 1
    assert result["ood"]["abstained_ood"] >= 0 and "abstained_in" in result["ood"]


def test_abstention_is_refused_where_it_cannot_be_chosen(tmp_path: Path):
    manifest = write_multilabel_manifest(tmp_path / "m", n=24)
    with pytest.raises(ConfigError, match="train.abstain is for single-label data"):
        imgcls.train(
            data=str(manifest), epochs=1, out=tmp_path / "a", overrides={**FAST, "train.abstain": "0.9"}
        )
    with pytest.raises(ConfigError, match="validation split"):
        imgcls.train(
            data="digits",
            epochs=1,
            out=tmp_path / "b",
            overrides={**FAST, "train.abstain": "0.9", "data.val_split": 0},
        )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
