"""The FastAPI app factory. The model is loaded and warmed once, in the lifespan, in the background
(so /healthz answers at once and /readyz says 503 until the model is ready); the routes (asset/serve/routes.py)
read it from app.state. Every answer, errors included, is JSON described by a Pydantic model.

What a client sees of a failure is its kind and an error id; the details (exception text, file paths) go to
the server log only, on a line carrying the same id, so an operator can find them and a client learns nothing
about the machine. /model serves the card without the paths it records."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import asset
from asset.serve.access import AccessMiddleware
from asset.serve.batcher import DynamicBatcher, QueueFull
from asset.serve.imaging import InputError
from asset.serve.limits import BodyLimitMiddleware, BodyTooLarge
from asset.serve.metrics import ServerMetrics
from asset.serve.routes import router
from asset.serve.schemas import ErrorResponse, ModelRef
from asset.serve.settings import Settings

log = logging.getLogger("asset.serve")


def error(status: int, kind: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=kind, detail=detail).model_dump(), status_code=status, headers=headers)


KINDS = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
         415: "unsupported_media_type", 422: "validation_error", 500: "internal_error", 503: "unavailable"}


def error_id() -> str:
    """A short random id that ties a client's error answer to the server's log line with the details."""
    return uuid.uuid4().hex[:12]


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


async def on_input_error(request: Request, exc: InputError):
    headers = {"Retry-After": "1"} if exc.status == 503 else None
    detail = str(exc)
    if exc.log_detail:  # a library's words about the upload: the server log only, tied by an id
        eid = error_id()
        log.info("error %s: %s %s: %s (%s)", eid, request.method, request.url.path, detail, exc.log_detail)
        detail = f"{detail} (error id {eid})"
    return error(exc.status, KINDS.get(exc.status, "bad_request"), detail, headers=headers)


async def on_too_large(request: Request, exc: BodyTooLarge):
    return error(413, "too_large", f"request body over the limit of {request.app.state.settings.max_body_bytes} bytes")


async def on_queue_full(request: Request, exc: QueueFull):
    return error(503, "overloaded", f"{exc}; retry shortly", headers={"Retry-After": "1"})


async def on_validation(request: Request, exc: RequestValidationError):
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
    return error(422, "validation_error", "; ".join(parts) or "invalid request")


async def on_http(request: Request, exc: StarletteHTTPException):
    return error(exc.status_code, KINDS.get(exc.status_code, "error"), str(exc.detail), headers=exc.headers)


async def on_crash(request: Request, exc: Exception):
    eid = error_id()
    log.error("error %s: %s %s failed", eid, request.method, request.url.path, exc_info=exc)
    return error(500, "internal_error", f"internal error (error id {eid}; the details are in the server log)")


HANDLERS = {InputError: on_input_error, BodyTooLarge: on_too_large, QueueFull: on_queue_full,
            RequestValidationError: on_validation, StarletteHTTPException: on_http, Exception: on_crash}


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

    for kind, handler in HANDLERS.items():
        app.add_exception_handler(kind, handler)
    app.include_router(router)
    route_paths.update(getattr(r, "path", "") for r in (*app.routes, *router.routes))  # the router's own too
    route_paths.discard("")
    return app
