"""Abstention: a confidence threshold chosen on validation, stored with the run, used by eval, predict,
serve and the export (read by a plain onnxruntime client); out-of-distribution AUROC."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgcls
from imgcls.api.runs import run_config
from imgcls.config import ConfigError, DataConfig, parse_abstain
from imgcls.data.datasets import SYSTEM_FASHION_MNIST, open_dataset
from imgcls.inference.predict import Predictor
from imgcls.metrics import abstention_summary, abstention_threshold, risk_coverage
from tests.conftest import FASHION_CLASSES
from tests.multilabel import write_multilabel_manifest
from tests.test_e2e import needs_fmnist

FAST = {"train.amp": "off", "log.progress": False, "data.batch_size": 64, "optim.lr": 0.05}


pytestmark = needs_fmnist


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> Path:
    """Fashion-MNIST as a person has it: PNG files in class folders, 2,000 for training (10% become the
    validation split) and 200 for testing, from the Debian package's test-set files (read as IDX)."""
    root = tmp_path_factory.mktemp("fmnist-pngs")
    with gzip.open(SYSTEM_FASHION_MNIST / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(SYSTEM_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    for split, index in (("train", range(2000)), ("test", range(2000, 2200))):
        for i in index:
            folder = root / "data" / split / FASHION_CLASSES[labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(folder / f"{split}{i}.png")
    return root / "data"


@pytest.fixture(scope="module")
def unsure_run(fmnist: Path, tmp_path_factory) -> Path:
    """tutorial-cnn, 4 epochs on the 1,800 training images, abstaining for precision 0.9."""
    out = fmnist.parent / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMGCLS_DATA", str(tmp_path_factory.getbasetemp() / "imgcls-data"))
        imgcls.train(
            data=str(fmnist),
            model="tutorial-cnn",
            epochs=4,
            out=out,
            overrides={**FAST, "train.abstain": "0.9"},
        )
    return out


@pytest.fixture(scope="module")
def photos(fmnist: Path) -> list[Path]:
    """The 200 test images, and 60 of them again as non-square photos (enlarged, 40x24)."""
    files = sorted((fmnist / "test").rglob("*.png"))
    wide = fmnist.parent / "wide"
    wide.mkdir(exist_ok=True)
    for f in files[:60]:
        Image.open(f).resize((40, 24), Image.Resampling.BILINEAR).save(wide / f.name)
    return files + sorted(wide.glob("*.png"))


def test_the_threshold_rules_on_hand_worked_examples():
    conf = torch.tensor([0.95, 0.9, 0.8, 0.7, 0.6])
    hits = torch.tensor([True, True, False, True, False])
    # 5 images can vouch for no precision with 95% confidence: the most confident alone is answered
    assert abstention_threshold(conf, hits, precision=0.75) == pytest.approx(0.925)
    many, right = torch.linspace(1, 0, 2000), torch.arange(2000) % 50 != 0  # 98% right at every confidence
    assert abstention_threshold(many, right, precision=0.99) > 0.99  # never vouched for: almost nothing
    lower = abstention_threshold(many, right, precision=0.95)  # 98% +- noise: vouched for 0.95 nearly all
    assert lower < 0.2
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
    with pytest.raises(ConfigError, match="--abstain must look like"):  # the eval flag names itself
        imgcls.evaluate("no-such-run", abstain="recall=0.9")


def test_the_threshold_is_chosen_on_validation_for_the_target_precision(unsure_run: Path):
    meta = json.loads((unsure_run / "model.json").read_text())
    assert meta["temperature"] != 1.0 and meta["abstain_rule"] == "precision 0.9 on the validation split"
    predictor = Predictor.from_run(unsure_run, device="cpu")
    val = open_dataset(run_config(unsure_run).data).val
    with torch.inference_mode():
        views = torch.stack([predictor.preprocess(p) for p in val.paths]).float() / 255
        probs = predictor.model(views).softmax(1)  # calibrated: the temperature is inside the model
    answered = probs.max(1).values >= meta["abstain_threshold"]
    assert 0 < answered.sum() < len(val)
    assert (probs.argmax(1) == val.labels)[answered].float().mean() >= 0.9
    result = json.loads((unsure_run / "eval.json").read_text())
    a = result["abstention"]
    assert a["threshold"] == meta["abstain_threshold"] and a["answered"] + a["abstained"] == 200
    assert a["accuracy_answered"] > result["accuracy"]  # answering only when sure is more accurate
    assert "risk_coverage" in result and 'id="abstention"' in (unsure_run / "report.html").read_text()


def test_predict_says_i_dont_know_with_the_reason(unsure_run: Path, photos: list[Path], tmp_path: Path):
    out = tmp_path / "p.csv"
    summary = imgcls.predict(unsure_run, [str(p) for p in photos], out=out)
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0].keys() >= {"label", "abstained"} and summary["abstained"] > 0
    unsure = [r for r in rows if r["abstained"]]
    assert len(unsure) == summary["abstained"] and all(r["label"] == "" for r in unsure)
    assert "below" in unsure[0]["abstained"] and "precision 0.9 " in unsure[0]["abstained"]
    pred = imgcls.load(unsure_run).predict([unsure[0]["path"]])[0]
    assert pred["label"] is None and pred["abstained"] == unsure[0]["abstained"]


def test_an_onnx_client_abstains_on_exactly_the_images_predict_does(
    unsure_run: Path, photos: list[Path], tmp_path: Path
):
    import onnxruntime as ort

    imgcls.export(unsure_run, "onnx", out=tmp_path / "m.onnx", check_limit=40)  # its own check: 40 images
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    classes, threshold = json.loads(props["classes"]), json.loads(props["abstain_threshold"])
    expected = {p["path"]: p["label"] for p in _predictions(unsure_run, photos)}
    decided = {}
    for path in photos:
        pixels = np.asarray(Image.open(path).convert("L"))[None, :, :, None]  # a grayscale model: N,H,W,1
        probs = session.run(None, {session.get_inputs()[0].name: pixels})[0][0]
        decided[str(path)] = classes[int(probs.argmax())] if probs.max() >= threshold else None
    assert decided == expected and None in decided.values()


def _predictions(run: Path, paths) -> list[dict]:
    preds: list[dict] = []
    imgcls.predict(run, [str(p) for p in paths], on_prediction=preds.append)
    return preds


def test_the_server_says_i_dont_know(unsure_run: Path, photos: list[Path]):
    from fastapi.testclient import TestClient

    from imgcls.inference.serve import create_app

    unsure = next(p for p in _predictions(unsure_run, photos) if p["label"] is None)
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
    write_multilabel_manifest(ood, n=40)  # colour-noise pictures: no garment at all
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


def test_sorting_into_class_folders_and_a_review_queue(unsure_run: Path, fmnist: Path, tmp_path: Path):
    inputs = fmnist / "test"
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    before = {p: (digest(p), p.stat().st_mtime_ns) for p in inputs.rglob("*") if p.is_file()}
    out = tmp_path / "sorted"
    first = imgcls.predict(unsure_run, [inputs], sort_into=out)["sorting"]
    accept = json.loads((unsure_run / "model.json").read_text())["abstain_threshold"]
    assert first["sorted"] > 0 and first["review"] > 0 and first["sorted"] + first["review"] == 200
    preds = {Path(p["path"]).name: p for p in _predictions(unsure_run, [inputs])}
    placed = sorted(out.rglob("*.png"))
    assert len(placed) == 200
    for path in placed:
        pred = preds[path.name]
        assert path.samefile(pred["path"])  # a hard link to the input: no copy, no change
        if path.parent.name == "_review":
            assert pred["label"] is None or pred["probability"] < accept
        else:
            assert pred["label"] == path.parent.name and pred["probability"] >= accept
    truth = {name: Path(p["path"]).relative_to(inputs).parts[0] for name, p in preds.items()}
    sorted_right = [preds[p.name]["label"] == truth[p.name] for p in placed if p.parent.name != "_review"]
    assert first["sorted_accuracy"] == pytest.approx(sum(sorted_right) / len(sorted_right), abs=1e-6)
    page = (out / "review.html").read_text()
    queue = [Path(m).name for m in re.findall(r'<img alt="([^"]+)"', page)]
    assert len(queue) == first["review"]
    assert [preds[n]["probability"] for n in queue] == sorted(preds[n]["probability"] for n in queue)

    again = imgcls.predict(unsure_run, [inputs], sort_into=out)["sorting"]  # idempotent
    assert sorted(out.rglob("*.png")) == placed and again == first | {"kept": 200}

    reviewed = next((out / "_review").glob("*.png"))  # a person files one image under its true class
    (out / truth[reviewed.name]).mkdir(exist_ok=True)
    reviewed.rename(out / truth[reviewed.name] / reviewed.name)
    imgcls.predict(unsure_run, [inputs], sort_into=out)
    assert not (out / "_review" / reviewed.name).exists() and len(list(out.rglob("*.png"))) == 200
    assert {p: (digest(p), p.stat().st_mtime_ns) for p in inputs.rglob("*") if p.is_file()} == before

    manifest = imgcls.manifest_data(out)
    assert manifest["rows"] == first["sorted"] + 1
    bundle = open_dataset(DataConfig(name=manifest["manifest"], val_split=0, test_split=0))
    assert len(bundle.train) == manifest["rows"] and "_review" not in bundle.classes
    assert str(out / truth[reviewed.name] / reviewed.name) in {str(p) for p in bundle.train.paths}
