"""The FastAPI app factory. The model is loaded and warmed once, in the lifespan, in the background
(so /healthz answers at once and /readyz says 503 until the model is ready); routes read it from
app.state. Every answer, errors included, is JSON described by a Pydantic model.

What a client sees of a failure is its kind and an error id; the details (exception text, file paths) go to
the server log only, on a line carrying the same id, so an operator can find them and a client learns nothing
about the machine. /model serves the card without the paths it records."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import cv2
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pycocotools import mask as coco_mask
from starlette.datastructures import UploadFile

import asset
from asset.serve.access import AccessMiddleware
from asset.serve.batcher import DynamicBatcher, QueueFull
from asset.serve.imaging import RAW_TYPES, InputError, decode_upload, header_pixels
from asset.serve.limits import BodyLimitMiddleware, BodyTooLarge
from asset.serve.metrics import ServerMetrics
from asset.serve.schemas import (
    Batching,
    BatchResponse,
    ErrorResponse,
    Health,
    Limits,
    ModelInfo,
    ModelRef,
    PredictionResponse,
    Timings,
)
from asset.serve.settings import Settings

PAGE = Path(__file__).with_name("page.html")
log = logging.getLogger("asset.serve")
ABSOLUTE_PATH = re.compile(r"^(/|[A-Za-z]:[\\/]|\\\\)")
IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                           "properties": {"image": {"type": "string", "format": "binary"}}}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        "image/bmp": {"schema": {"type": "string", "format": "binary"}},
    },
}
BATCH_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["images"],
        "properties": {"images": {"type": "array", "items": {"type": "string", "format": "binary"}}}},
        "encoding": {"images": {"contentType": "image/png, image/jpeg, image/bmp"}}}},
}
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 413, 415, 422, 500, 503)}


def json_answer(model) -> Response:
    """A Pydantic answer serialised once, by pydantic-core (FastAPI would validate it again, then encode it)."""
    return Response(model.model_dump_json(), media_type="application/json")


def error(status: int, kind: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=kind, detail=detail).model_dump(), status_code=status, headers=headers)


KINDS = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
         415: "unsupported_media_type", 422: "validation_error", 500: "internal_error", 503: "unavailable"}


def error_id() -> str:
    """A short random id that ties a client's error answer to the server's log line with the details."""
    return uuid.uuid4().hex[:12]


def public_card(card: dict) -> dict:
    """The model card as /model serves it: the dataset path dropped, any other absolute path cut to its name
    (where the model and its data live on this machine is no client's business)."""
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, str) and ABSOLUTE_PATH.match(value):
            return re.split(r"[\\/]", value.rstrip("/\\"))[-1]
        return value

    out = copy.deepcopy(card)
    if isinstance(out.get("dataset"), dict):
        out["dataset"].pop("path", None)
    return clean(out)


def model_ref(predictor, settings: Settings) -> ModelRef:
    card = predictor.card
    sums = Path(predictor.model_dir) / "SHA256SUMS"
    checksum = hashlib.sha256(sums.read_bytes()).hexdigest() if sums.exists() else ""
    return ModelRef(name=Path(predictor.model_dir).resolve().name, version=str(card.get("created", "")),
                    checksum=checksum, backend=predictor.backend.name, precision=predictor.backend.precision)


def _load_predictor(settings: Settings):
    from asset.predictor import Predictor

    return Predictor(settings.model, backend=settings.backend, batch_size=settings.max_batch,
                     max_input_factor=settings.max_input_factor, precision=settings.precision,
                     device=settings.device, threads=settings.threads)


def _warm(predictor, max_batch: int = 1) -> None:
    """Batch 1 twice, then one full batch: the engine's memory arena reaches its high-water mark before the first
    request (RSS then stays flat under load instead of growing the first time a full batch forms)."""
    alg = predictor.algorithm
    h, w = alg.size_policy.size or predictor.card.get("input", {}).get("train_size") or (256, 256)
    shape = (h, w) if alg.channels == 1 else (h, w, 3)
    for n in (1, 1, max_batch):
        predictor.predict([np.zeros(shape, np.uint8)] * n)


def encode_mask(mask: np.ndarray, png: bool) -> tuple[dict, str | None]:
    """A HxW 0/1 mask -> (COCO compressed RLE {"size", "counts"}, base64 PNG or None)."""
    m = mask if mask.dtype == np.uint8 else mask.astype(np.uint8)
    rle = coco_mask.encode(np.asfortranarray(m))
    out = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
    return out, (base64.b64encode(cv2.imencode(".png", m * 255)[1].tobytes()).decode() if png else None)


def create_app(settings: Settings, predictor=None, on_fatal=None) -> FastAPI:
    """An app serving `settings.model` (or an already built `predictor`, for tests and benchmarks).

    A model that fails to load is tried again (settings.load_attempts in all, waiting load_retry_s, then twice as
    long each time: a GPU or a network mount that is not there yet at boot); after the last failure
    `on_fatal()` is called (`asset serve` stops the server, which exits non-zero so that the container's restart
    policy or a supervisor acts); without it the app stays up, unready, answering /healthz."""
    metrics = ServerMetrics()

    async def load_once(app: FastAPI) -> None:
        start = time.perf_counter()
        pred = predictor or await asyncio.to_thread(_load_predictor, settings)
        batcher = DynamicBatcher(pred.predict, settings.max_batch, settings.max_wait_ms, settings.queue_size,
                                 observe_batch=metrics.batch_size.observe)
        batcher.start()
        app.state.predictor, app.state.batcher = pred, batcher  # from here on, shutdown stops and closes them
        if settings.warmup:
            await batcher.run_blocking(_warm, pred, settings.max_batch)
        app.state.model_ref = model_ref(pred, settings)
        metrics.model_load.set(time.perf_counter() - start)
        app.state.ready = True

    async def unload(app: FastAPI) -> None:
        if app.state.batcher is not None:
            await app.state.batcher.stop()
        if app.state.predictor is not None and predictor is None:
            await asyncio.to_thread(app.state.predictor.close)
        app.state.predictor = app.state.batcher = None

    async def load(app: FastAPI) -> None:
        attempts = max(1, settings.load_attempts)
        for attempt in range(1, attempts + 1):
            try:
                await load_once(app)
                app.state.load_error = None
                return
            except Exception as exc:  # the model could not load: keep serving health probes; the why goes to the log
                eid = error_id()
                log.error("error %s: the model did not load (attempt %d of %d): %s: %s", eid, attempt, attempts,
                          type(exc).__name__, exc, exc_info=not isinstance(exc, (ValueError, OSError)))
                app.state.load_error = f"the model failed to load (error id {eid}; the details are in the server log)"
                try:
                    await unload(app)
                except Exception:  # noqa: BLE001 - a half-made predictor that cannot even close: try again anyway
                    log.exception("error %s: cleaning up after the failed load", eid)
                if attempt < attempts:
                    app.state.load_error += f"; trying again ({attempt + 1} of {attempts})"
                    await asyncio.sleep(settings.load_retry_s * 2 ** (attempt - 1))
        app.state.load_failed = True
        log.error("the model did not load after %d attempts%s", attempts,
                  "; stopping the server" if on_fatal is not None else "")
        if on_fatal is not None:
            on_fatal()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.ready, app.state.load_error, app.state.inflight_pixels = False, None, 0
        app.state.load_failed = False
        app.state.predictor = app.state.batcher = None
        loader = asyncio.create_task(load(app))
        yield
        loader.cancel()
        await unload(app)

    app = FastAPI(
        title="Defect detector", version=asset.__version__, lifespan=lifespan,
        description="Segment defects in an image and decide whether it is defective. Send a PNG, JPEG or BMP "
        "image as a multipart field `image` or as the raw body. 16-bit images are scaled to 8 bits, alpha "
        "channels are dropped, palette images expanded. With an API key configured, every route but /healthz "
        "and /readyz needs the `X-API-Key` header.",
    )
    app.state.settings, app.state.metrics = settings, metrics
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)

    route_paths: set[str] = set()  # filled once the routes below exist
    app.add_middleware(AccessMiddleware, metrics=metrics, api_key=settings.api_key, route_paths=route_paths)

    @app.exception_handler(InputError)
    async def on_input_error(request: Request, exc: InputError):
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        detail = str(exc)
        if exc.log_detail:  # a library's words about the upload: the server log only, tied by an id
            eid = error_id()
            log.info("error %s: %s %s: %s (%s)", eid, request.method, request.url.path, detail, exc.log_detail)
            detail = f"{detail} (error id {eid})"
        return error(exc.status, KINDS.get(exc.status, "bad_request"), detail, headers=headers)

    @app.exception_handler(BodyTooLarge)
    async def on_too_large(request: Request, exc: BodyTooLarge):
        return error(413, "too_large", f"request body over the limit of {settings.max_body_bytes} bytes")

    @app.exception_handler(QueueFull)
    async def on_queue_full(request: Request, exc: QueueFull):
        return error(503, "overloaded", f"{exc}; retry shortly", headers={"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError):
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
        return error(422, "validation_error", "; ".join(parts) or "invalid request")

    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, KINDS.get(exc.status_code, "error"), str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception):
        eid = error_id()
        log.error("error %s: %s %s failed", eid, request.method, request.url.path, exc_info=exc)
        return error(500, "internal_error", f"internal error (error id {eid}; the details are in the server log)")

    def ready_or_503(request: Request):
        if not request.app.state.ready:
            why = request.app.state.load_error or "model is loading"
            raise InputError(503, f"not ready: {why}")

    async def read_images(request: Request, field: str, many: bool) -> list[bytes]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            form = await request.form(max_part_size=settings.max_body_bytes, max_files=settings.max_batch_images + 1)
            files = [v for v in form.getlist(field) if isinstance(v, UploadFile)]
            if not files:
                names = ", ".join(sorted(set(form.keys()))) or "none"
                raise InputError(422, f"multipart field '{field}' is missing (fields sent: {names})")
            if len(files) > settings.max_batch_images:
                raise InputError(413, f"{len(files)} images in one request; the limit is {settings.max_batch_images}")
            return [await f.read() for f in (files if many else files[:1])]
        if many:
            raise InputError(415, f"send the images as multipart/form-data fields named '{field}'")
        if ctype and ctype not in RAW_TYPES:
            raise InputError(415, f"unsupported content type {ctype!r}: send image/png, image/jpeg, image/bmp "
                                  "or multipart/form-data with a field 'image'")
        return [await request.body()]

    def reserve_pixels(state, pixels: int) -> int:
        """Refuse a request whose images hold too many pixels together (413), or that would take the pixels held by
        all requests at once over their budget (503, retry later); else count its pixels in. `pixels` comes from
        the headers (read on a worker thread)."""
        if pixels > settings.max_batch_pixels:
            raise InputError(413, f"the images of this request hold {pixels} pixels together, over the limit of "
                                  f"{settings.max_batch_pixels} (ASSET_MAX_BATCH_PIXELS): send fewer or smaller images")
        if state.inflight_pixels + pixels > settings.max_inflight_pixels:
            raise InputError(503, f"busy with large images ({state.inflight_pixels} pixels in flight, limit "
                                  f"{settings.max_inflight_pixels}); retry shortly")
        state.inflight_pixels += pixels
        return pixels

    async def predict_many(request: Request, blobs: list[bytes], threshold: float | None, mask: str):
        state = request.app.state
        counted = await asyncio.to_thread(lambda: sum(header_pixels(b) for b in blobs))  # Image.open: off the loop
        pixels = reserve_pixels(state, counted)
        try:
            return await _predict_many(request, blobs, threshold, mask)
        finally:
            state.inflight_pixels -= pixels

    async def _predict_many(request: Request, blobs: list[bytes], threshold: float | None, mask: str):
        t0 = time.perf_counter()
        state = request.app.state
        state.batcher.expect(len(blobs))  # the batcher waits (max_wait_ms at most) for images on their way
        try:
            images = [await asyncio.to_thread(decode_upload, b, settings.max_pixels) for b in blobs]
        except BaseException:
            state.batcher.expect(-len(blobs))  # not coming after all
            raise
        decoded = time.perf_counter()
        metrics.queue_depth.set(state.batcher.depth)
        predictions, backend_s = await state.batcher.submit(images, announced=True)  # withdraws the expect()
        metrics.queue_depth.set(state.batcher.depth)
        done = time.perf_counter()
        shapes = [image.shape[:2] for image in images]
        del images  # the decoded pixels are not needed while the masks are encoded
        # RLE / PNG / base64 of full-size masks cost tens of ms for a large image: on a worker thread, so the event
        # loop (health probes, other clients) never waits for them
        encoded = await asyncio.to_thread(lambda: [encode_mask(p.mask, mask == "png") for p in predictions])
        results = []
        for (height, width), p, (rle, png) in zip(shapes, predictions, encoded):
            t = p.threshold if threshold is None else threshold
            defective = bool(p.value >= t)  # the model's decision rule: defect fraction or decision head score
            metrics.images.labels("defective" if defective else "ok").inc()
            results.append(PredictionResponse(
                defective=defective, defect_fraction=float(p.defect_fraction), score=float(p.score), threshold=float(t),
                width=int(width), height=int(height), mask=rle, mask_png=png, model=state.model_ref,
                timings=Timings(decode_ms=1000 * (decoded - t0) / len(shapes),
                                queue_ms=max(0.0, 1000 * ((done - decoded) - backend_s)),
                                inference_ms=1000 * backend_s, total_ms=1000 * (time.perf_counter() - t0)),
            ))
        return results

    threshold_q = Query(None, ge=0.0, le=1.0, description="image threshold for this request (default: the model's)")
    mask_q = Query("rle", pattern="^(rle|png)$", description="'png' adds the mask as a base64 PNG")

    @app.post("/predict", response_model=PredictionResponse, responses=ERRORS, openapi_extra={"requestBody": IMAGE_BODY},
              summary="Predict one image", tags=["predict"])
    async def predict(request: Request, threshold: float | None = threshold_q, mask: str = mask_q):
        ready_or_503(request)
        blobs = await read_images(request, "image", many=False)
        return json_answer((await predict_many(request, blobs, threshold, mask))[0])

    @app.post("/predict/batch", response_model=BatchResponse, responses=ERRORS,
              openapi_extra={"requestBody": BATCH_BODY}, summary="Predict several images, answers in order",
              tags=["predict"])
    async def predict_batch(request: Request, threshold: float | None = threshold_q, mask: str = mask_q):
        ready_or_503(request)
        blobs = await read_images(request, "images", many=True)
        return json_answer(BatchResponse(results=await predict_many(request, blobs, threshold, mask)))

    @app.get("/healthz", response_model=Health, tags=["health"], summary="The process is alive")
    async def healthz():
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, responses={503: {"model": ErrorResponse}}, tags=["health"],
             summary="The model is loaded and warmed")
    async def readyz(request: Request):
        ready_or_503(request)
        return Health(status="ready")

    @app.get("/model", response_model=ModelInfo, responses=ERRORS, tags=["model"],
             summary="The model card (model.json) and the batching settings")
    async def model_card(request: Request) -> ModelInfo:
        ready_or_503(request)
        return ModelInfo(model=request.app.state.model_ref, card=public_card(request.app.state.predictor.card),
                         batching=Batching(max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                                           queue_size=settings.queue_size),
                         limits=Limits(max_body_bytes=settings.max_body_bytes, max_pixels=settings.max_pixels,
                                       max_batch_images=settings.max_batch_images,
                                       max_batch_pixels=settings.max_batch_pixels,
                                       max_inflight_pixels=settings.max_inflight_pixels,
                                       max_input_factor=settings.max_input_factor,
                                       train_size=request.app.state.predictor.card.get("input", {}).get("train_size")))

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=Response)
    async def prometheus():
        if app.state.batcher is not None:
            metrics.queue_depth.set(app.state.batcher.depth)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    route_paths.update(getattr(r, "path", "") for r in app.routes)
    return app
