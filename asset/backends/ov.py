"""OpenVINO backend (Intel CPUs): the `openvino` IR export, else the ONNX export read directly; int8 runs the
`onnx-int8` QDQ model (OpenVINO turns QDQ into int8 kernels). No torch needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asset.backends.base import Backend, BackendError, export_for, parse_device


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(self, model_dir: Path, card: dict, *, precision: str = "fp32", device: str = "cpu",
                 threads: int = 1, hint: str = "LATENCY", file: str | Path | None = None) -> None:
        import openvino as ov

        parse_device(device)
        # fp32: the IR, else the ONNX export; int8: the onnx-int8 QDQ model (modeldir.export_keys_for)
        path = Path(file) if file is not None else export_for(card, model_dir, self.name, precision)[2]
        if hint not in ("LATENCY", "THROUGHPUT"):
            raise BackendError(f"openvino hint must be LATENCY or THROUGHPUT, got {hint!r}")
        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": hint,
                  "INFERENCE_PRECISION_HINT": "f32"}
        try:
            self._compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as exc:
            raise BackendError(f"{path}: OpenVINO cannot compile it ({exc})") from None
        self._request = self._compiled.create_infer_request()
        self.file = path
        self.precision = precision
        self.device = "cpu"

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        self._request.infer({0: batch})
        return np.array(self._request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def close(self) -> None:
        self._request = None
        self._compiled = None
