"""A small web service over a Predictor (FastAPI): JSON endpoints, a page to try the model, safe defaults.

Requests that arrive together are batched into one forward pass: each request's images go onto a queue,
and a single worker takes everything that arrives within a short window (or up to a batch size), runs
the model once, and answers every request.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse

from imgcls.data.decode import ImageDecodeError, open_image
from imgcls.inference.predict import Predictor

log = logging.getLogger("imgcls")
IMAGE_TYPES = {
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/bmp",
    "image/webp",
    "image/tiff",
    "image/x-portable-anymap",
}


@dataclass
class ServeConfig:
    max_bytes: int = 10 << 20  # per upload
    max_files: int = 32  # per request
    batch_window_ms: float = 5.0  # 0: no batching across requests
    max_batch: int = 64
    top_k: int = 5


@dataclass
class _Job:
    images: torch.Tensor
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Batcher:
    """Collects jobs for up to `window` seconds (or `max_batch` images) and runs them as one batch."""

    def __init__(self, predictor: Predictor, cfg: ServeConfig) -> None:
        self.predictor, self.cfg = predictor, cfg
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.batches = self.requests = 0

    async def run(self) -> None:
        while True:
            jobs = [await self.queue.get()]
            count = len(jobs[0].images)
            deadline = time.perf_counter() + self.cfg.batch_window_ms / 1000
            while count < self.cfg.max_batch and (left := deadline - time.perf_counter()) > 0:
                try:
                    jobs.append(await asyncio.wait_for(self.queue.get(), left))
                    count += len(jobs[-1].images)
                except TimeoutError:
                    break
            try:
                preds = await asyncio.to_thread(
                    self.predictor._classify, torch.cat([j.images for j in jobs]), self.cfg.top_k
                )
            except Exception as e:  # answer every waiting request rather than leave it hanging
                for job in jobs:
                    job.future.set_exception(e)
                continue
            self.batches, self.requests = self.batches + 1, self.requests + len(jobs)
            start = 0
            for job in jobs:
                job.future.set_result(preds[start : start + len(job.images)])
                start += len(job.images)

    async def submit(self, images: torch.Tensor) -> list[dict[str, Any]]:
        job = _Job(images)
        await self.queue.put(job)
        return await job.future


def create_app(predictor: Predictor, cfg: ServeConfig | None = None) -> FastAPI:
    """The service: POST /predict, GET /health, GET /info, GET / (a page), OpenAPI at /docs."""
    cfg = cfg or ServeConfig()
    batcher = Batcher(predictor, cfg)

    async def lifespan(app: FastAPI):
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()

    app = FastAPI(
        title="imgcls",
        description=f"{predictor.meta.name}: {len(predictor.classes)} classes",
        lifespan=lifespan,
    )

    @app.middleware("http")
    async def _size_limit(request: Request, call_next):
        # Refuse an oversized body from its declared length, before any of it is parsed.
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > cfg.max_bytes * cfg.max_files + 65536:
            return JSONResponse(
                {"error": f"request too large or malformed length ({declared[:20]})"}, status_code=413
            )
        return await call_next(request)

    @app.exception_handler(HTTPException)
    async def _json_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "batches": batcher.batches, "requests": batcher.requests}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        m = predictor.meta
        return {"model": m.name, "classes": m.classes, "input_size": m.input_size, "channels": m.in_chans,
                "limits": {"max_bytes": cfg.max_bytes, "max_files": cfg.max_files}}  # fmt: skip

    @app.post("/predict")
    async def predict(request: Request, files: list[UploadFile] = File(...)) -> dict[str, Any]:  # noqa: B008
        if len(files) > cfg.max_files:
            raise HTTPException(413, f"at most {cfg.max_files} files per request")
        images = [await _decode(f, predictor, cfg) for f in files]
        preds = await batcher.submit(torch.stack(images))
        return {"predictions": [{"filename": f.filename, **p} for f, p in zip(files, preds)]}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE.replace("{{title}}", html.escape(f"imgcls: {predictor.meta.name}"))

    return app


async def _decode(upload: UploadFile, predictor: Predictor, cfg: ServeConfig) -> torch.Tensor:
    """One upload -> a uint8 square tensor, or a 4xx that names the file and the reason."""
    name = upload.filename or "upload"
    if (
        upload.content_type
        and upload.content_type not in IMAGE_TYPES
        and not upload.content_type.startswith("image/")
    ):
        raise HTTPException(415, f"{name}: {upload.content_type} is not an image type")
    data = await upload.read(cfg.max_bytes + 1)
    if len(data) > cfg.max_bytes:
        raise HTTPException(413, f"{name}: larger than {cfg.max_bytes} bytes")
    try:
        return predictor.square(open_image(data, predictor.meta.in_chans))
    except ImageDecodeError as e:
        raise HTTPException(422, f"{name}: {e.reason}") from None


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{{title}}</title>
<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:720px}#drop{border:2px dashed #888;padding:2em;
text-align:center;cursor:pointer}#preview{max-width:256px;max-height:256px;image-rendering:pixelated;margin:1em 0}
.bar{display:flex;align-items:center;gap:8px;margin:4px 0}.bar span{width:140px}.bar div{background:#36c;height:16px}
#error{color:#b00}</style></head><body><h1>{{title}}</h1>
<div id="drop">Drop an image here, or <label><u>pick one</u><input id="file" type="file" accept="image/*" hidden></label></div>
<img id="preview" alt="" hidden><div id="result"></div><p id="error"></p>
<script>
const drop = document.getElementById("drop"), input = document.getElementById("file");
drop.ondragover = e => { e.preventDefault(); };
drop.ondrop = e => { e.preventDefault(); if (e.dataTransfer.files.length) send(e.dataTransfer.files[0]); };
input.onchange = () => { if (input.files.length) send(input.files[0]); };
async function send(file) {
  const preview = document.getElementById("preview");
  preview.src = URL.createObjectURL(file); preview.hidden = false;
  document.getElementById("error").textContent = ""; document.getElementById("result").innerHTML = "";
  const form = new FormData(); form.append("files", file);
  const response = await fetch("/predict", {method: "POST", body: form});
  const body = await response.json();
  if (!response.ok) { document.getElementById("error").textContent = body.error; return; }
  const top = body.predictions[0].top_k, result = document.getElementById("result");
  const label = document.createElement("h2"); label.id = "label"; label.textContent = top[0].label; result.append(label);
  for (const t of top) {  // textContent: class names are never parsed as HTML
    const row = document.createElement("div"), name = document.createElement("span"), bar = document.createElement("div");
    row.className = "bar"; name.textContent = t.label; bar.style.width = Math.round(300 * t.probability) + "px";
    row.append(name, bar, (100 * t.probability).toFixed(1) + "%"); result.append(row);
  }
}
</script></body></html>"""
