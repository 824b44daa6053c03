"""ONNX Runtime backend: the `onnx` (fp32) or `onnx-int8` export, on the CPU, CUDA or TensorRT execution providers.
No torch needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asset.backends.base import Backend, BackendError, export_entry, parse_device

EXPORT_KEYS = {"fp32": "onnx", "int8": "onnx-int8"}


def default_providers(device: str) -> list:
    """Best available execution providers for `device` (cpu: CPU; cuda: TensorRT, CUDA, then CPU as fallback)."""
    import onnxruntime as ort

    kind, index = parse_device(device)
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    chosen = [(p, {"device_id": index}) for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
              if p in available]
    if not chosen:
        raise BackendError(f"device {device}: this onnxruntime has no CUDA/TensorRT execution provider "
                           f"(available: {', '.join(available)}); install onnxruntime-gpu")
    return chosen + ["CPUExecutionProvider"]


def session_options(threads: int):
    """Intra-op threads = cores, sequential execution, every graph optimisation (incl. layout transforms)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # Idle intra-op threads must not spin: on a small CPU they steal the cores the caller (a server's
    # event loop, the next engine) needs. Measured on 2 cores: spinning made the server 4x slower.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, model_dir: Path, card: dict, *, precision: str = "fp32", device: str = "cpu",
                 threads: int = 1, providers: list | None = None, file: str | Path | None = None) -> None:
        import onnxruntime as ort

        if file is None:
            _, path = export_entry(card, model_dir, EXPORT_KEYS[precision], self.name)
        else:
            path = Path(file)
        providers = providers or default_providers(device)
        available = set(ort.get_available_providers())
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        unknown = [p for p in names if p not in available]
        if unknown:
            raise BackendError(f"execution providers {unknown} are not available here "
                               f"(available: {', '.join(sorted(available))})")
        try:
            self._session = ort.InferenceSession(str(path), sess_options=session_options(threads), providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BackendError(f"{path}: onnxruntime cannot load it ({exc})") from None
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        self.file = path
        self.precision = precision
        self.providers = self._session.get_providers()
        self.device = device if self.providers[0] != "CPUExecutionProvider" else "cpu"

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self._output], {self._input: batch})[0]

    def info(self) -> dict:
        return {**super().info(), "providers": self.providers}

    def close(self) -> None:
        self._session = None
