"""The web service: JSON endpoints, clear 4xx for bad requests, batching, and the page in Chromium."""

from __future__ import annotations

import io
import socket
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

import imgcls
from imgcls.inference.serve import ServeConfig, create_app
from tests.browser import chromium
from tests.conftest import make_image


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from tests.conftest import write_class_tree

    root = tmp_path_factory.mktemp("serve")
    write_class_tree(root / "data", per_class=12)
    over = {"train.amp": "off", "log.progress": False, "data.batch_size": 8}
    return imgcls.train(
        data=str(root / "data"), model="tutorial-cnn", epochs=3, out=root / "run", overrides=over
    ).run_dir


@pytest.fixture(scope="module")
def client(run_dir: Path):
    app = create_app(imgcls.load(run_dir, device="cpu"), ServeConfig(max_bytes=200_000, batch_window_ms=20))
    with TestClient(app) as c:
        yield c


def png(label: int = 0) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    make_image(label, np.random.default_rng(label)).save(buf, "PNG")
    return buf.getvalue()


def test_predict_health_info_and_docs(client):
    response = client.post(
        "/predict",
        files=[("files", ("a.png", png(0), "image/png")), ("files", ("b.png", png(2), "image/png"))],
    )
    assert response.status_code == 200
    preds = response.json()["predictions"]
    assert [p["filename"] for p in preds] == ["a.png", "b.png"] and len(preds[0]["top_k"]) == 3
    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/info").json()["classes"] == ["circle", "cross", "square"]
    assert client.get("/docs").status_code == 200 and "/predict" in client.get("/openapi.json").text
    assert "Drop an image" in client.get("/").text


def test_bad_requests_get_clear_4xx_and_the_server_keeps_serving(client):
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(jpeg, "JPEG")
    cases = {
        "no file": (client.post("/predict"), 422),
        "text file": (client.post("/predict", files={"files": ("notes.txt", b"hello", "text/plain")}), 415),
        "not an image": (client.post("/predict", files={"files": ("x.png", b"hello", "image/png")}), 422),
        "truncated": (
            client.post("/predict", files={"files": ("t.jpg", jpeg.getvalue()[:300], "image/jpeg")}),
            422,
        ),
        "too large": (
            client.post("/predict", files={"files": ("big.png", b"\\0" * 300_000, "image/png")}),
            413,
        ),
        "wrong field": (client.post("/predict", files={"image": ("a.png", png(), "image/png")}), 422),
        "huge declared size": (
            client.post(
                "/predict",
                content=b"x",
                headers={"content-length": str(10**12), "content-type": "multipart/form-data; boundary=x"},
            ),
            413,
        ),  # fmt: skip
    }
    for name, (response, status) in cases.items():
        assert response.status_code == status, (name, response.text)
        assert response.headers["content-type"].startswith("application/json"), name
    assert client.post("/predict", files={"files": ("a.png", png(1), "image/png")}).status_code == 200


def test_requests_arriving_together_share_a_batch(client):
    before = client.get("/health").json()
    threads = [
        threading.Thread(
            target=lambda: client.post("/predict", files={"files": ("a.png", png(), "image/png")})
        )
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = client.get("/health").json()
    assert after["requests"] - before["requests"] == 8
    assert after["batches"] - before["batches"] < 8  # at least two requests went through one forward pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_page_in_headless_chromium(run_dir: Path, tmp_path: Path):
    import uvicorn

    port = _free_port()
    app = create_app(imgcls.load(run_dir, device="cpu"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    browser = None
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        image = tmp_path / "square.png"
        import numpy as np

        make_image(2, np.random.default_rng(7)).save(image)
        browser = chromium(tmp_path)
        browser.get(f"http://127.0.0.1:{port}/")
        browser.find_element("id", "file").send_keys(str(image))
        for _ in range(100):
            labels = browser.find_elements("id", "label")
            if labels and labels[0].text:
                break
            time.sleep(0.05)
        assert (
            browser.find_element("id", "label").text
            == imgcls.load(run_dir).predict(image)[0]["label"]
            == "square"
        )
        assert len(browser.find_elements("class name", "bar")) == 3
        shot = tmp_path / "page.png"
        browser.get_screenshot_as_file(str(shot))
        assert shot.stat().st_size > 5_000
    finally:
        if browser is not None:
            browser.quit()
        server.should_exit = True
        thread.join(timeout=10)
