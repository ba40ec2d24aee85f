"""The evaluation report: bootstrap intervals, calibration (and temperature scaling), galleries, HTML."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgcls
from imgcls import cli
from imgcls.engine.calibrate import fit_temperature
from imgcls.metrics import bootstrap_ci, calibration, evaluation_report, top_confusions
from imgcls.reporting import render_html

SECTIONS = ("headline", "per-class", "confusion", "mistakes", "calibration", "curves")


def test_bootstrap_interval_contains_the_accuracy_and_narrows_with_more_samples():
    small = bootstrap_ci(torch.tensor([1] * 80 + [0] * 20))
    large = bootstrap_ci(torch.tensor([1] * 8000 + [0] * 2000))
    assert small[0] < 0.8 < small[1] and large[0] < 0.8 < large[1]
    assert large[1] - large[0] < (small[1] - small[0]) / 5


def test_calibration_error_and_temperature():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (4000,), generator=gen)
    logits = torch.randn(4000, 4, generator=gen)
    logits[torch.arange(4000), labels] += 1.5  # right ~60% of the time...
    overconfident = logits * 4  # ...but sure of itself
    before = calibration(overconfident.softmax(1), labels)["ece"]
    t = fit_temperature(overconfident, labels)
    after = calibration((overconfident / t).softmax(1), labels)["ece"]
    assert t > 2 and after < before / 4


def test_top_confusions_and_html_sections():
    matrix = [[5, 3, 0], [0, 6, 1], [4, 0, 2]]
    assert top_confusions(matrix, ["a", "b", "c"])[:2] == [
        {"true": "c", "predicted": "a", "count": 4},
        {"true": "a", "predicted": "b", "count": 3},
    ]
    logits, labels = torch.randn(60, 3), torch.randint(0, 3, (60,))
    result = {
        "model": "m",
        "data": "d",
        "split": "test",
        **evaluation_report(logits, labels, ["a", "b", "c"]),
    }
    page = render_html(result, [{"epoch": 1, "train_loss": 1.0, "val_acc": 0.5}])
    for section in SECTIONS:
        assert f'id="{section}"' in page
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing fetched from outside
    worst = min(result["per_class"], key=lambda c: result["per_class"][c]["f1"])
    assert page.index(f"<td>{worst}</td>") < min(page.index(f"<td>{c}</td>") for c in "abc" if c != worst)


def noisy_classes(root: Path, signal: int = 6) -> Path:
    """3 classes that differ by a faint colour cast in strong noise: a net memorizes them and is over-confident."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("val", 40), ("test", 40)):
        for label in range(3):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 200, (16, 16, 3), dtype=np.uint8)
                arr[..., label] += signal
                Image.fromarray(arr).save(folder / f"{i}.png")
    return root


@pytest.mark.slow  # 30 epochs to memorize noise (~17 s); fit_temperature itself is tested above in the default suite
def test_calibrate_lowers_the_error_of_an_overconfident_run(tmp_path: Path, capsys):
    over = {
        "train.amp": "off",
        "log.progress": False,
        "train.label_smoothing": 0.0,
        "model.width": 16,
        "data.augment": "none",
        "optim.weight_decay": 0.0,
        "data.batch_size": 30,
    }
    data = noisy_classes(tmp_path / "noisy")
    run = imgcls.train(
        data=str(data), model="smallnet", epochs=30, out=tmp_path / "r", overrides=over
    ).run_dir
    assert cli.main(["eval", str(run), "--calibrate", "--tta", "flip-shift"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["temperature"] > 1  # over-confident: probabilities get softened
    assert result["calibration_after"]["ece"] < result["calibration_before"]["ece"]
    assert json.loads((run / "model.json").read_text())["temperature"] == result["temperature"]
    # The stored temperature acts in the model: predictions now carry calibrated probabilities.
    model = imgcls.load(run, device="cpu")
    x = torch.rand(2, 3, 16, 16)
    logits = model.model(x)  # eval mode: divided by the stored temperature inside the forward
    model.model.meta.temperature = 1.0
    raw = model.model(x)
    assert torch.allclose(logits * result["temperature"], raw, atol=1e-4)
    assert set(result["tta"]) == {"off", "flip-shift"}
    page = (run / "report.html").read_text()
    for section in SECTIONS + ("tta",):
        assert f'id="{section}"' in page
    (run / "report.html").unlink()
    assert cli.main(["report", str(run)]) == 0 and (run / "report.html").is_file()
    assert len(result["samples"]["confident_mistakes"]) > 0
    assert result["samples"]["confident_mistakes"][0]["thumbnail"].startswith("data:image/png;base64,")


def test_a_tiny_runs_report_renders_in_chromium(tmp_path: Path):
    from tests.test_e2e import assert_report_renders_in_chromium

    run = imgcls.train(
        data="digits", model="tutorial-cnn", epochs=2, out=tmp_path / "run", overrides={"log.progress": False}
    ).run_dir
    assert_report_renders_in_chromium(run / "report.html", tmp_path, class_name="7", maps=True)
