"""Predictor = Algorithm (the shared pre/post-processing) + Backend (the engine). No torch unless backend="pytorch".

    from asset.predictor import Predictor
    with Predictor("models/m", backend="onnxruntime", threads=2) as p:
        preds = p.predict([image_uint8])                  # list[Prediction]: mask, defect_fraction, score, defective
        preds = p.predict_bytes([png_bytes], image_threshold=0.01)
    p.card                                                # model.json

Thread-unsafe by design: one call at a time (the server serialises calls). Images are grouped by the network
size they reach and run `batch_size` at a time, so a list of mixed sizes works with any size policy.

`max_input_factor=F` (what the server passes) bounds the cost of any image by the training size T of the model
(`asset.tiling`): an image reaching more than F x T network pixels runs as at most F tiles of size T, and a
backend call never takes more than F x T pixels of images. Without it (the default) images run whole.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from asset.algorithm import Algorithm, AlgorithmError, Prediction
from asset.backends import Backend, load_backend


class Predictor:
    def __init__(self, model_dir: str | os.PathLike, backend: str = "onnxruntime", *, batch_size: int = 8,
                 verify: bool = True, max_input_factor: float | None = None, **backend_opts) -> None:
        """backend_opts go to `load_backend`: precision, device, threads, providers."""
        from asset import modeldir
        from asset.tiling import Tiler, train_size

        if int(batch_size) < 1:
            raise AlgorithmError(f"batch_size must be >= 1, got {batch_size}")
        self.model_dir = Path(model_dir)
        self.card: dict = modeldir.verify(model_dir) if verify else modeldir.read_card_unverified(model_dir)
        self.algorithm = Algorithm.from_card(self.card)
        self.batch_size = int(batch_size)
        self.tiler: Tiler | None = None  # only a free `pad` policy lets the network input grow with the image
        self.max_call_pixels: int | None = None
        if max_input_factor is not None:
            t = train_size(self.card)
            self.max_call_pixels = int(max_input_factor * t[0] * t[1])
            policy = self.algorithm.size_policy
            if policy.mode == "pad" and policy.size is None:
                self.tiler = Tiler(self.algorithm, t, max_input_factor)
        self.backend: Backend = load_backend(backend, model_dir, card=self.card, **backend_opts)

    @property
    def image_threshold(self) -> float:
        return self.algorithm.image_threshold

    def info(self) -> dict:
        c = self.card
        return {**self.backend.info(), "model": str(self.model_dir), "arch": c.get("arch"), "encoder": c.get("encoder"),
                "image_threshold": self.algorithm.image_threshold, "pixel_threshold": self.algorithm.pixel_threshold}

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """The backend on a preprocessed batch (N x C x H x W float32)."""
        return self.backend.infer(batch)

    def predict(self, images: list[np.ndarray], image_threshold: float | None = None,
                keep_prob: bool = False) -> list[Prediction]:
        """uint8 HxW / HxWxC images -> one Prediction each, in order."""
        if isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype == np.uint8:
            images = [images]
        images = list(images)
        if not images:
            return []
        alg = self.algorithm
        groups: dict[tuple[int, int], list[int]] = {}
        tiled: list[int] = []
        for i, img in enumerate(images):
            arr = np.asarray(img)
            if arr.ndim < 2:
                raise AlgorithmError(f"image {i}: expected HxW or HxWxC, got shape {arr.shape}")
            if self.tiler is not None and self.tiler.needs_tiles(*arr.shape[:2]):
                tiled.append(i)
                continue
            shape = alg.size_policy.network_shape(*arr.shape[:2]) if alg.size_policy.mode == "pad" \
                else alg.size_policy.size
            groups.setdefault(tuple(shape), []).append(i)
        out: list[Prediction | None] = [None] * len(images)
        for (h, w), idx in groups.items():
            step = self.batch_size
            if self.max_call_pixels is not None:  # large images run fewer at a time (always at least one)
                step = max(1, min(step, self.max_call_pixels // (h * w)))
            for start in range(0, len(idx), step):
                part = idx[start:start + step]
                x, metas = alg.preprocess([images[i] for i in part])
                preds = alg.postprocess(self.backend.infer(x), metas, image_threshold=image_threshold,
                                        keep_prob=keep_prob)
                for i, p in zip(part, preds):
                    out[i] = p
        for i in tiled:
            out[i] = self.tiler.predict(np.asarray(images[i]), self.backend.infer, self.batch_size, image_threshold,
                                        keep_prob)
        return out  # type: ignore[return-value]

    def predict_bytes(self, data: bytes | list[bytes], image_threshold: float | None = None,
                      keep_prob: bool = False) -> list[Prediction]:
        """Encoded images (PNG, JPEG, BMP, TIFF, ...) -> predictions. Raises AlgorithmError on undecodable bytes."""
        items = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
        return self.predict([Algorithm.decode(bytes(b)) for b in items], image_threshold, keep_prob)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
