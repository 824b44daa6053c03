"""The HTTP routes, one APIRouter: prediction (one image, a batch), health probes, the model card, Prometheus
metrics and the page. The settings, the metrics and the loaded model (predictor, batcher) come from the app's
state, which asset/serve/app.py sets up and fills once the model is loaded."""

from __future__ import annotations

import asyncio
import base64
import copy
import re
import time
from pathlib import Path

import cv2
import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pycocotools import mask as coco_mask
from starlette.datastructures import UploadFile

from asset.serve.imaging import RAW_TYPES, InputError, decode_upload, header_pixels
from asset.serve.schemas import (
    Batching,
    BatchResponse,
    ErrorResponse,
    Health,
    Limits,
    ModelInfo,
    PredictionResponse,
    Timings,
)

PAGE = Path(__file__).with_name("page.html")
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


def encode_mask(mask: np.ndarray, png: bool) -> tuple[dict, str | None]:
    """A HxW 0/1 mask -> (COCO compressed RLE {"size", "counts"}, base64 PNG or None)."""
    m = mask if mask.dtype == np.uint8 else mask.astype(np.uint8)
    rle = coco_mask.encode(np.asfortranarray(m))
    out = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
    return out, (base64.b64encode(cv2.imencode(".png", m * 255)[1].tobytes()).decode() if png else None)


def ready_or_503(request: Request) -> None:
    if not request.app.state.ready:
        why = request.app.state.load_error or "model is loading"
        raise InputError(503, f"not ready: {why}")


async def read_images(request: Request, field: str, many: bool) -> list[bytes]:
    settings = request.app.state.settings
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
    settings = state.settings
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
    metrics = state.metrics
    state.batcher.expect(len(blobs))  # the batcher waits (max_wait_ms at most) for images on their way
    try:
        images = [await asyncio.to_thread(decode_upload, b, state.settings.max_pixels) for b in blobs]
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


router = APIRouter()
THRESHOLD = Query(None, ge=0.0, le=1.0, description="image threshold for this request (default: the model's)")
MASK = Query("rle", pattern="^(rle|png)$", description="'png' adds the mask as a base64 PNG")


@router.post("/predict", response_model=PredictionResponse, responses=ERRORS, openapi_extra={"requestBody": IMAGE_BODY},
             summary="Predict one image", tags=["predict"])
async def predict(request: Request, threshold: float | None = THRESHOLD, mask: str = MASK):
    ready_or_503(request)
    blobs = await read_images(request, "image", many=False)
    return json_answer((await predict_many(request, blobs, threshold, mask))[0])


@router.post("/predict/batch", response_model=BatchResponse, responses=ERRORS,
             openapi_extra={"requestBody": BATCH_BODY}, summary="Predict several images, answers in order",
             tags=["predict"])
async def predict_batch(request: Request, threshold: float | None = THRESHOLD, mask: str = MASK):
    ready_or_503(request)
    blobs = await read_images(request, "images", many=True)
    return json_answer(BatchResponse(results=await predict_many(request, blobs, threshold, mask)))


@router.get("/healthz", response_model=Health, tags=["health"], summary="The process is alive")
async def healthz():
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": ErrorResponse}}, tags=["health"],
            summary="The model is loaded and warmed")
async def readyz(request: Request):
    ready_or_503(request)
    return Health(status="ready")


@router.get("/model", response_model=ModelInfo, responses=ERRORS, tags=["model"],
            summary="The model card (model.json) and the batching settings")
async def model_card(request: Request) -> ModelInfo:
    ready_or_503(request)
    state = request.app.state
    settings, card = state.settings, state.predictor.card
    return ModelInfo(model=state.model_ref, card=public_card(card),
                     batching=Batching(max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                                       queue_size=settings.queue_size),
                     limits=Limits(max_body_bytes=settings.max_body_bytes, max_pixels=settings.max_pixels,
                                   max_batch_images=settings.max_batch_images,
                                   max_batch_pixels=settings.max_batch_pixels,
                                   max_inflight_pixels=settings.max_inflight_pixels,
                                   max_input_factor=settings.max_input_factor,
                                   train_size=card.get("input", {}).get("train_size")))


@router.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=Response)
async def prometheus(request: Request):
    state = request.app.state
    if state.batcher is not None:
        state.metrics.queue_depth.set(state.batcher.depth)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page():
    return HTMLResponse(PAGE.read_text(encoding="utf-8"))
