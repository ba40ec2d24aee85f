"""End to end on real data (Fashion-MNIST from the Debian package).

All marked slow (`make test-slow`): one epoch through the CLI (~45 s) and the acceptance runs of the
foundation issue (minutes). The default suite renders a digits run's report in Chromium (test_report.py).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imgcls.data import datasets
from tests.browser import chromium
from tests.conftest import FASHION_CLASSES

REPO = Path(__file__).resolve().parents[1]
needs_fmnist = pytest.mark.skipif(
    not (datasets.SYSTEM_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist not installed (make setup installs it where apt works)",
)


def run_cli(*args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "imgcls", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow
@needs_fmnist
def test_fashion_mnist_one_epoch_through_the_cli(tmp_path: Path):
    run = tmp_path / "run"
    run_cli(
        "train",
        "--config",
        str(REPO / "configs" / "tutorial.yaml"),
        "--epochs",
        "1",
        "--out",
        str(run),
        "--set",
        "log.progress=false",
    )
    result = json.loads(run_cli("eval", str(run), "--json").stdout)
    assert result["num_samples"] == 10000 and result["accuracy"] > 0.84
    assert set(result["per_class"]) == set(FASHION_CLASSES)
    pred = json.loads(
        run_cli("predict", str(run), str(REPO / "tests" / "assets"), "--json").stdout.splitlines()[0]
    )
    assert pred["label"] in result["per_class"]
    assert 0 < result["accuracy_ci"][0] < result["accuracy"] < result["accuracy_ci"][1] < 1
    assert_report_renders_in_chromium(run / "report.html", tmp_path)
    exported = run_cli("export", str(run), "--format", "onnx").stdout
    assert "top-1 agreement with PyTorch" in exported and (run / "model.onnx").is_file()


SECTIONS = ("headline", "per-class", "confusion", "mistakes", "calibration", "abstention", "curves")


def assert_report_renders_in_chromium(
    page: Path, tmp_path: Path, class_name: str = "T-shirt/top", maps: bool = False
) -> None:
    """Opens the report offline in headless Chromium: every section shows, every image decodes; with `maps`,
    the class-activation maps show beside the mistakes and their toggle hides them; a screenshot."""
    browser = chromium(tmp_path)
    try:
        browser.get(page.as_uri())
        for section in SECTIONS:
            element = browser.find_element("id", section)
            assert element.is_displayed() and element.size["height"] > 20, section
        broken = browser.execute_script(
            "return [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt)"
        )
        assert broken == [] and len(browser.find_elements("tag name", "img")) >= 5
        assert class_name in browser.find_element("id", "per-class").text
        if maps:
            cams = browser.find_elements("css selector", "img[alt='map for the predicted class']")
            assert len(cams) >= 2 and all(c.is_displayed() for c in cams)
            browser.find_element("id", "mistakes").screenshot(str(tmp_path / "mistakes-with-maps.png"))
            browser.find_element("id", "toggle-cams").click()
            assert not any(c.is_displayed() for c in cams)
        shot = tmp_path / "report.png"
        browser.get_screenshot_as_file(str(shot))
        assert shot.stat().st_size > 10_000
        print(f"screenshots: {tmp_path}")
    finally:
        browser.quit()


@pytest.mark.slow
@needs_fmnist
def test_tutorial_recipe_reaches_90_percent(tmp_path: Path):
    run_cli("train", "--config", str(REPO / "configs" / "tutorial.yaml"), "--out", str(tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["accuracy"] >= 0.90


@pytest.mark.slow
@needs_fmnist
def test_default_train_reaches_92_percent(tmp_path: Path):
    run_cli("train", "--out", str(tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["accuracy"] >= 0.92
