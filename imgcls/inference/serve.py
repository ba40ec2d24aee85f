"""A small web service over a Predictor (FastAPI): JSON endpoints, a page to try the model, safe defaults.

Requests that arrive together are batched into one forward pass: each request's images go onto a queue,
and a single worker takes everything that arrives within a short window (or up to a batch size), runs
the model once, and answers every request. The worker survives anything a request can do (a cancelled
or disconnected client, a failing model call); /health says whether it runs. Decoding happens in worker
threads, never on the event loop, and the request body is counted as it arrives, so neither a chunked
upload nor a client that stalls mid-body can exhaust the server.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgcls.data.decode import ImageDecodeError, open_image
from imgcls.errors import ImgclsError, MissingExtraError
from imgcls.inference.explain import overlay
from imgcls.inference.predict import Predictor
from imgcls.utils.templates import render

log = logging.getLogger("imgcls")
FORM_OVERHEAD = 65536  # bytes of multipart headers and boundaries allowed beside the files themselves


@dataclass
class ServeConfig:
    max_bytes: int = 10 << 20  # per upload
    max_files: int = 32  # per request
    batch_window_ms: float = 5.0  # 0: no batching across requests
    max_batch: int = 64
    top_k: int = 5
    read_timeout_s: float = 30.0  # a client that sends nothing for this long mid-body gets 408

    @property
    def max_body(self) -> int:
        return self.max_bytes * self.max_files + FORM_OVERHEAD


@dataclass
class _Job:
    images: torch.Tensor
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Batcher:
    """Collects jobs for up to `window` seconds (or `max_batch` images) and runs them as one batch."""

    def __init__(self, predictor: Predictor, cfg: ServeConfig) -> None:
        self.predictor, self.cfg = predictor, cfg
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.batches = self.requests = self.failures = 0
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    async def run(self) -> None:
        while True:
            jobs = await self._collect()
            try:
                await self._answer(jobs)
            except Exception as e:  # noqa: BLE001  (the worker must outlive any one batch)
                self.failures += 1
                log.exception("prediction failed for a batch of %d request(s)", len(jobs))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(e)

    async def _collect(self) -> list[_Job]:
        jobs = [await self.queue.get()]
        count = len(jobs[0].images)
        deadline = time.perf_counter() + self.cfg.batch_window_ms / 1000
        while count < self.cfg.max_batch and (left := deadline - time.perf_counter()) > 0:
            try:
                jobs.append(await asyncio.wait_for(self.queue.get(), left))
            except TimeoutError:  # not the builtin TimeoutError before Python 3.11
                break
            count += len(jobs[-1].images)
        return jobs

    async def _answer(self, jobs: list[_Job]) -> None:
        jobs = [job for job in jobs if not job.future.done()]  # cancelled while waiting: nobody listens
        if not jobs:
            return
        batch = torch.cat([j.images for j in jobs])
        preds = await asyncio.to_thread(self.predictor._classify, batch, self.cfg.top_k)
        self.batches, self.requests = self.batches + 1, self.requests + len(jobs)
        start = 0
        for job in jobs:
            if not job.future.done():
                job.future.set_result(preds[start : start + len(job.images)])
            start += len(job.images)

    async def submit(self, images: torch.Tensor) -> list[dict[str, Any]]:
        if not self.alive:
            raise HTTPException(503, "the prediction worker is not running")
        job = _Job(images)
        await self.queue.put(job)
        return await job.future


class BodyLimit:
    """Counts the request body as it arrives: over `limit` bytes (declared or streamed, chunked or not) is
    413, and a client silent for `timeout` seconds mid-body is 408, before the form is parsed or spooled."""

    def __init__(self, app: ASGIApp, limit: int, timeout: float) -> None:
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            response = JSONResponse({"error": f"request body over {self.limit} bytes"}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def counted() -> Message:
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except TimeoutError:
                raise HTTPException(408, f"no request data for {self.timeout:g}s") from None
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(413, f"request body over {self.limit} bytes")
            return message

        await self.app(scope, counted, send)


def create_app(predictor: Predictor, cfg: ServeConfig | None = None) -> FastAPI:
    """The service: POST /predict, POST /explain, GET /health, GET /info, GET / (a page), OpenAPI at /docs."""
    cfg = cfg or ServeConfig()
    batcher = Batcher(predictor, cfg)

    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="imgcls",
        description=f"{predictor.meta.name}: {len(predictor.classes)} classes",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.add_middleware(BodyLimit, limit=cfg.max_body, timeout=cfg.read_timeout_s)

    @app.exception_handler(StarletteHTTPException)  # FastAPI's and Starlette's own (form limits)
    async def _json_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    @app.get("/health")
    async def health() -> JSONResponse:
        body = {
            "status": "ok" if batcher.alive else "failed",
            "worker": "running" if batcher.alive else "stopped",
            "batches": batcher.batches,
            "requests": batcher.requests,
            "failures": batcher.failures,
        }
        return JSONResponse(body, status_code=200 if batcher.alive else 503)

    @app.get("/info")
    async def info() -> dict[str, Any]:
        m = predictor.meta
        return {
            "model": m.name,
            "task": m.task,
            "classes": m.classes,
            **({"thresholds": m.thresholds} if m.multilabel else {}),
            "input_size": m.input_size,
            "channels": m.in_chans,
            "limits": {"max_bytes": cfg.max_bytes, "max_files": cfg.max_files},
        }

    @app.post("/predict", openapi_extra=UPLOAD_SCHEMA)
    async def predict(request: Request) -> dict[str, Any]:
        """Multipart form with one or more `files` fields (images); returns the top-k classes of each."""
        uploads = await _uploads(request, cfg)
        images = [await _decode(upload, predictor, cfg) for upload in uploads]
        try:
            preds = await batcher.submit(torch.stack(images))
        except HTTPException:
            raise
        except Exception as e:  # the model failed: the worker lives on, this request gets a clear 500
            raise HTTPException(500, f"prediction failed: {type(e).__name__}: {str(e)[:200]}") from None
        return {"predictions": [{"filename": u.filename, **p} for u, p in zip(uploads, preds)]}

    _add_explain_route(app, predictor, cfg)
    page = render("serve.html", title=f"imgcls: {predictor.meta.name}")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    return app


async def _uploads(request: Request, cfg: ServeConfig) -> list[UploadFile]:
    """The request's `files` parts; the file count is limited while parsing, before anything is spooled."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(422, "send the images as multipart/form-data in fields named 'files'")
    form = await request.form(max_files=cfg.max_files, max_fields=cfg.max_files + 16)
    uploads = [v for v in form.getlist("files") if isinstance(v, UploadFile)]
    if not uploads:
        raise HTTPException(422, "no image in the request: send files in fields named 'files'")
    return uploads


def _add_explain_route(app: FastAPI, predictor: Predictor, cfg: ServeConfig) -> None:
    """POST /explain: the class-activation map of one uploaded image, as PNG."""
    explaining = threading.Lock()  # one Explainer (its own model copy and hooks): one image at a time

    @app.post("/explain", openapi_extra=UPLOAD_SCHEMA, response_class=Response)
    async def explain(request: Request, target: str | None = None) -> Response:
        """One image (a `files` field) -> PNG: where the model looked for `target` (a class name; default:
        the predicted class), as a heat map over the square it sees. Needs the explain extra."""
        uploads = await _uploads(request, cfg)
        if len(uploads) != 1:
            raise HTTPException(400, "send exactly one image to explain")
        image = await _decode(uploads[0], predictor, cfg)
        try:
            png = await asyncio.to_thread(_explain_png, predictor, image, target, explaining)
        except MissingExtraError as e:
            raise HTTPException(501, str(e)) from None
        except ImgclsError as e:  # an unknown target class
            raise HTTPException(400, str(e)) from None
        except Exception as e:
            raise HTTPException(500, f"explanation failed: {type(e).__name__}: {str(e)[:200]}") from None
        return Response(png, media_type="image/png")


def _explain_png(
    predictor: Predictor, image: torch.Tensor, target: str | None, lock: threading.Lock
) -> bytes:
    """The overlay PNG of one uint8 (C, S, S) image, for `target` or the class the model predicts for it."""
    with lock:
        explainer = predictor.explainer()
        label = target if target is not None else predictor._classify(image[None], 1)[0]["top_k"][0]["label"]
        cam = explainer.maps(image[None], [predictor.class_index(label)])[0]
        buffer = io.BytesIO()
        Image.fromarray(overlay(image.permute(1, 2, 0).numpy(), cam, side=224)).save(buffer, format="PNG")
        return buffer.getvalue()


async def _decode(upload: UploadFile, predictor: Predictor, cfg: ServeConfig) -> torch.Tensor:
    """One upload -> a uint8 square tensor (decoded in a worker thread), or a 4xx that names the file."""
    name = upload.filename or "upload"
    content_type = upload.content_type or ""
    if content_type and not content_type.startswith("image/") and content_type != "application/octet-stream":
        raise HTTPException(415, f"{name}: {content_type} is not an image type")
    data = await upload.read(cfg.max_bytes + 1)
    if len(data) > cfg.max_bytes:
        raise HTTPException(413, f"{name}: larger than {cfg.max_bytes} bytes")
    try:
        return await asyncio.to_thread(lambda: predictor.square(open_image(data, predictor.meta.in_chans)))
    except ImageDecodeError as e:
        raise HTTPException(422, f"{name}: {e.reason}") from None


UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            }
        },
    }
}
