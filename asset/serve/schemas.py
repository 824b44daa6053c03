"""Pydantic models of every answer, errors included (they document the OpenAPI schema)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class RLE(BaseModel):
    size: list[int] = Field(description="[height, width]", examples=[[128, 128]])
    counts: str = Field(description="COCO compressed RLE (pycocotools), column-major", examples=["`h03:0e0"])


class ModelRef(BaseModel):
    name: str = Field(examples=["demo"])
    version: str = Field(description="when the model was trained (model.json 'created')", examples=["2026-11-25T01:14:13Z"])
    checksum: str = Field(description="SHA-256 of the model directory's SHA256SUMS file")
    backend: str = Field(examples=["onnxruntime"])
    precision: str = Field(examples=["fp32"])


class Timings(BaseModel):
    decode_ms: float
    queue_ms: float = Field(description="waiting for the batcher and the backend")
    inference_ms: float = Field(description="backend call of the batch this image ran in, pre/post-processing included")
    total_ms: float


class PredictionResponse(BaseModel):
    defective: bool = Field(description="defect_fraction >= threshold, or score >= threshold for a model with a "
                                        "decision head (model.json decision.rule)")
    defect_fraction: float = Field(description="share of pixels whose defect probability >= the pixel threshold")
    score: float = Field(description="image score used for AP/AUROC: the fraction, ties broken by the max "
                                     "probability; or the decision head's probability (model.json decision.rule)")
    threshold: float = Field(description="image threshold applied (the model's calibrated one unless overridden)")
    width: int
    height: int
    mask: RLE
    mask_png: str | None = Field(None, description="base64 PNG of the mask (0/255), only with ?mask=png")
    model: ModelRef
    timings: Timings

    model_config = {"json_schema_extra": {"examples": [{
        "defective": True, "defect_fraction": 0.0123, "score": 0.0123, "threshold": 0.0006, "width": 128,
        "height": 128, "mask": {"size": [128, 128], "counts": "`h03:0e0"}, "mask_png": None,
        "model": {"name": "demo", "version": "2026-11-25T01:14:13Z", "checksum": "3f2a...", "backend": "onnxruntime",
                  "precision": "fp32"},
        "timings": {"decode_ms": 0.4, "queue_ms": 0.2, "inference_ms": 9.1, "total_ms": 10.3}}]}}


class BatchResponse(BaseModel):
    results: list[PredictionResponse]


class Batching(BaseModel):
    max_batch: int = Field(description="largest batch the dynamic batcher forms", examples=[8])
    max_wait_ms: float = Field(description="longest wait for a batch to fill (only while requests are on their way)",
                               examples=[5.0])
    queue_size: int = Field(description="requests waiting at most; beyond it: 503 with Retry-After", examples=[64])


class Limits(BaseModel):
    max_body_bytes: int = Field(description="larger request bodies: 413")
    max_pixels: int = Field(description="larger images (width x height): 413")
    max_batch_images: int = Field(description="more images in one POST /predict/batch: 413")
    max_batch_pixels: int = Field(description="more pixels in all images of one request: 413")
    max_inflight_pixels: int = Field(description="more decoded pixels held by all requests at once: 503 + Retry-After")
    max_input_factor: float = Field(description="network pixels per image at most this x train_size; larger images "
                                    "run as tiles of train_size")
    train_size: list[int] | None = Field(description="[H, W] the model was trained at (model.json input.train_size)")


class ModelInfo(BaseModel):
    model: ModelRef
    card: dict = Field(description="the model directory's model.json, without the paths it records")
    batching: Batching
    limits: Limits


class ErrorResponse(BaseModel):
    error: str = Field(examples=["unsupported_media_type"])
    detail: str = Field(examples=["not a PNG, JPEG or BMP image (unrecognised file signature)"])


class Health(BaseModel):
    status: str = Field(examples=["ok"])
