"""The web service: JSON endpoints, clear 4xx for bad requests, batching, and the page in Chromium."""

from __future__ import annotations

import io
import socket
import threading
import time
from contextlib import contextmanager
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


def test_explain_returns_the_map_as_png_and_refuses_clearly(client):
    from PIL import Image

    response = client.post("/explain", files=[("files", ("a.png", png(1), "image/png"))])
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.size[0] >= 224 and image.mode == "RGB" and len(image.getcolors(1 << 16) or []) > 10
    top = client.post("/predict", files=[("files", ("a.png", png(1), "image/png"))]).json()["predictions"][0]
    named = client.post(f"/explain?target={top['label']}", files=[("files", ("a.png", png(1), "image/png"))])
    assert named.content == response.content  # the default explains the predicted class
    unknown = client.post("/explain?target=giraffe", files=[("files", ("a.png", png(1), "image/png"))])
    assert unknown.status_code == 400 and "unknown class 'giraffe'" in unknown.json()["error"]
    two = client.post("/explain", files=[("files", ("a.png", png(0), "image/png"))] * 2)
    assert two.status_code == 400 and "exactly one image" in two.json()["error"]
    assert "/explain" in client.get("/openapi.json").text


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
            client.post("/predict", files={"files": ("big.png", b"\0" * 300_000, "image/png")}),
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
        ),
    }
    for name, (response, status) in cases.items():
        assert response.status_code == status, (name, response.text)
        assert response.headers["content-type"].startswith("application/json"), name
    assert client.post("/predict", files={"files": ("a.png", png(1), "image/png")}).status_code == 200


def test_requests_arriving_together_share_a_batch(run_dir: Path):
    # A window far longer than the requests take and a batch of 8: the 8 concurrent requests are one batch.
    app = create_app(imgcls.load(run_dir, device="cpu"), ServeConfig(batch_window_ms=60_000, max_batch=8))
    with TestClient(app) as c:
        statuses = []
        threads = [
            threading.Thread(
                target=lambda: statuses.append(
                    c.post("/predict", files={"files": ("a.png", png(), "image/png")}).status_code
                )
            )
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        health = c.get("/health").json()
    assert statuses == [200] * 8 and health["requests"] == 8 and health["batches"] == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(app):
    """The app under uvicorn on a free loopback port, for clients that speak raw HTTP."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(400):
            if server.started:
                break
            time.sleep(0.025)
        assert server.started, "the server did not start"
        yield f"http://127.0.0.1:{port}", port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def assert_serving(base: str) -> None:
    """After a fault: /predict still answers correctly and /health reports the worker alive."""
    import httpx

    response = httpx.post(f"{base}/predict", files={"files": ("b.png", png(2), "image/png")}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] == "square"
    health = httpx.get(f"{base}/health", timeout=30)
    assert health.status_code == 200 and health.json()["worker"] == "running"


@pytest.fixture(scope="module")
def server(run_dir: Path):
    app = create_app(
        imgcls.load(run_dir, device="cpu"), ServeConfig(max_bytes=200_000, max_files=4, read_timeout_s=1.0)
    )
    with live_server(app) as (base, port):
        yield app, base, port


def _raw_request(port: int, head: bytes, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(head + body)
    return sock


def _read_response(sock: socket.socket) -> str:
    """One HTTP response, headers and body (which may come in a later segment than the headers)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode()


MULTIPART_HEAD = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"


def test_a_client_that_disconnects_mid_upload(server):
    _, base, port = server
    sock = _raw_request(
        port,
        MULTIPART_HEAD + b"Content-Length: 100000\r\n\r\n",
        b'--B\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n' + png()[:100],
    )
    sock.close()
    assert_serving(base)


def test_a_stalled_client_gets_408_and_others_are_served_meanwhile(server):
    _, base, port = server
    sock = _raw_request(port, MULTIPART_HEAD + b"Content-Length: 100000\r\n\r\n", b"--B\r\n")
    assert_serving(base)  # while the stalled upload is open
    reply = _read_response(sock)  # the server gives up after read_timeout_s (1 s)
    sock.close()
    assert reply.startswith("HTTP/1.1 408") and "no request data" in reply, reply
    assert_serving(base)


def test_a_chunked_upload_over_the_limit_is_413(server):
    import httpx

    _, base, _ = server

    def chunks():  # no Content-Length: the body arrives in chunks, 2 MB in all (the limit is ~0.9 MB)
        yield b'--B\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
        for _ in range(32):
            yield b"\0" * 65536

    response = httpx.post(
        f"{base}/predict",
        content=chunks(),
        timeout=30,
        headers={"Content-Type": "multipart/form-data; boundary=B"},
    )
    assert response.status_code == 413 and "request body over" in response.json()["error"]
    assert_serving(base)


def test_more_files_than_allowed_is_a_clear_4xx(server):
    import httpx

    _, base, _ = server
    files = [("files", (f"{i}.png", png(i % 3), "image/png")) for i in range(5)]  # max_files is 4
    response = httpx.post(f"{base}/predict", files=files, timeout=30)
    assert 400 <= response.status_code < 500 and "files" in response.json()["error"].lower(), response.text
    assert_serving(base)


def test_a_cancelled_request_and_a_failing_model_leave_the_worker_alive(run_dir: Path, monkeypatch):
    import asyncio

    import httpx

    predictor = imgcls.load(run_dir, device="cpu")
    app = create_app(predictor, ServeConfig(batch_window_ms=0))
    real = predictor._classify
    slow = threading.Event()

    def classify(batch, top_k):
        if slow.is_set():
            time.sleep(0.5)  # long enough for the client below to give up while its job waits
        return real(batch, top_k)

    monkeypatch.setattr(predictor, "_classify", classify)

    async def scenario():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                slow.set()
                with pytest.raises(asyncio.TimeoutError):  # the request task is cancelled mid-wait
                    await asyncio.wait_for(
                        client.post("/predict", files={"files": ("a.png", png(), "image/png")}), 0.1
                    )
                await asyncio.sleep(0.8)  # the batch finishes for a waiter that is gone
                slow.clear()
                monkeypatch.setattr(predictor, "_classify", lambda batch, top_k: 1 / 0)
                failed = await client.post("/predict", files={"files": ("a.png", png(), "image/png")})
                monkeypatch.setattr(predictor, "_classify", real)
                ok = await client.post("/predict", files={"files": ("b.png", png(2), "image/png")})
                health = await client.get("/health")
                return failed, ok, health

    failed, ok, health = asyncio.run(scenario())
    assert failed.status_code == 500 and "prediction failed: ZeroDivisionError" in failed.json()["error"]
    assert ok.status_code == 200 and ok.json()["predictions"][0]["label"] == "square"
    assert (
        health.status_code == 200 and health.json()["worker"] == "running" and health.json()["failures"] == 1
    )


def test_health_reports_a_dead_worker(run_dir: Path):
    app = create_app(imgcls.load(run_dir, device="cpu"))
    with TestClient(app) as c:
        assert c.get("/health").json()["worker"] == "running"
        c.portal.call(app.state.batcher.stop)  # the worker is gone, as after a crash
        health = c.get("/health")
        refused = c.post("/predict", files={"files": ("a.png", png(), "image/png")})
    assert health.status_code == 503 and health.json()["status"] == "failed"
    assert refused.status_code == 503 and "not running" in refused.json()["error"]


def test_decoding_runs_off_the_event_loop(client, monkeypatch):
    from imgcls.inference import serve

    threads = []
    real = serve.open_image

    def spy(data, channels):
        threads.append(threading.current_thread())
        return real(data, channels)

    monkeypatch.setattr(serve, "open_image", spy)
    assert client.post("/predict", files={"files": ("a.png", png(), "image/png")}).status_code == 200
    loop_thread = client.portal.call(lambda: threading.current_thread())
    assert threads and all(t is not loop_thread for t in threads)


def test_loopback_load_with_good_and_bad_requests(server):
    """A bounded load test (240 requests, 8 clients, loopback only): every request answered, none 5xx."""
    import httpx

    _, base, _ = server
    kinds = [
        ("good", ("a.png", png(0), "image/png")),
        ("not an image", ("x.png", b"hello", "image/png")),
        ("text", ("n.txt", b"hi", "text/plain")),
        ("too large", ("big.png", b"\0" * 300_000, "image/png")),
    ]
    results: list[tuple[str, int]] = []

    def worker(offset: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as c:
            for i in range(30):
                name, file = kinds[(offset + i) % len(kinds)]
                results.append((name, c.post("/predict", files={"files": file}).status_code))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(results) == 240  # none lost
    assert not [r for r in results if r[1] >= 500]
    assert {code for name, code in results if name == "good"} == {200}
    assert_serving(base)


def test_the_page_in_headless_chromium(run_dir: Path, tmp_path: Path):
    import numpy as np

    image = tmp_path / "square.png"
    make_image(2, np.random.default_rng(7)).save(image)
    browser = None
    with live_server(create_app(imgcls.load(run_dir, device="cpu"))) as (base, _):
        try:
            browser = chromium(tmp_path)
            browser.get(f"{base}/")
            browser.find_element("id", "file").send_keys(str(image))
            for _ in range(200):
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
            browser.find_element("id", "explain").click()  # the map of the top class, on request
            for _ in range(200):
                maps = browser.find_elements("id", "map")
                if maps and browser.execute_script(
                    "return arguments[0].complete && arguments[0].naturalWidth", maps[0]
                ):
                    break
                time.sleep(0.05)
            assert (
                browser.execute_script("return arguments[0].naturalWidth", browser.find_element("id", "map"))
                >= 224
            )
            shot = tmp_path / "page.png"
            browser.get_screenshot_as_file(str(shot))
            from PIL import Image as PILImage

            with PILImage.open(shot) as page:  # a real rendering: the page's size, more than one colour
                assert page.size[0] >= 300 and len(page.convert("RGB").getcolors(1 << 20) or []) > 2
        finally:
            if browser is not None:
                browser.quit()
