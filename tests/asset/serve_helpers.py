"""A served model for the server tests: the session's trained tiny model, exported to ONNX."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image


def exported_copy(trained_model: Path, dst: Path) -> Path:
    from asset.export import export_model

    model = Path(shutil.copytree(trained_model, dst))
    export_model(model, "onnx", log=lambda m: None)
    return model


def split_images(dataset: Path, split: str = "test") -> list[tuple[str, bool, bytes]]:
    """(id, defective, PNG bytes) of a split of a standard-format dataset."""
    doc = json.loads((Path(dataset) / "dataset.json").read_text())
    return [(s["id"], s["defective"], (Path(dataset) / s["image"]).read_bytes())
            for s in doc["samples"] if s["split"] == split]


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()
