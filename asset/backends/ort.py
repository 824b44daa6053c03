"""ONNX Runtime backends: the `onnx` (fp32) or `onnx-int8` export, no torch needed.

- `onnxruntime`: the CPU provider on device cpu; on cuda the best of TensorRT, CUDA (then CPU for the rest).
- `onnxruntime-cuda` / `onnxruntime-tensorrt`: one GPU execution provider each (onnxruntime-gpu, x86-CUDA image),
  so that the benchmark can set them beside the native TensorRT backend. Each refuses to start rather than fall
  back silently to another provider. fp16 on the TensorRT provider is its `trt_fp16_enable` over the fp32 export;
  int8 is the onnx-int8 Q/DQ model (TensorRT provider: `trt_int8_enable`, no calibration table: the Q/DQ scales).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asset.backends.base import Backend, BackendError, export_for, parse_device


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
                 threads: int = 1, providers: list | None = None, file: str | Path | None = None,
                 fallback: bool = True) -> None:
        import onnxruntime as ort

        if file is None:
            path = export_for(card, model_dir, self.name, precision)[2]  # the export contract (asset/modeldir.py)
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
            self._session = ort.InferenceSession(str(path), sess_options=session_options(threads), providers=providers,
                                                 enable_fallback=int(fallback))
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


# provider -> why it may be listed by onnxruntime and still not start
PROVIDER_NEEDS = {
    "CUDAExecutionProvider": "onnxruntime-gpu's CUDA 12 and cuDNN 9 libraries (pip install -r "
                             "platforms/x86-cuda/requirements-gpu.txt pulls them) and an NVIDIA driver for CUDA 12",
    "TensorrtExecutionProvider": "the TensorRT libraries onnxruntime-gpu was built against (libnvinfer, TensorRT 10.x "
                                 "for onnxruntime-gpu 1.31) on the library path, besides those of CUDAExecutionProvider",
}


def provider_options(provider: str, precision: str, index: int) -> dict:
    """Options of one GPU execution provider for `precision` on CUDA device `index`."""
    if provider == "TensorrtExecutionProvider":
        return {"device_id": index, "trt_fp16_enable": precision == "fp16", "trt_int8_enable": precision == "int8",
                "trt_max_workspace_size": 4 << 30}
    return {"device_id": index}


class _GpuProviderBackend(OnnxRuntimeBackend):
    """One GPU execution provider (CUDA as the fallback for nodes TensorRT does not take), never silently the CPU."""

    provider = ""

    def __init__(self, model_dir: Path, card: dict, *, precision: str = "fp32", device: str = "cuda",
                 threads: int = 1, file: str | Path | None = None) -> None:
        import onnxruntime as ort

        kind, index = parse_device(device)
        if kind != "cuda":
            raise BackendError(f"backend {self.name!r} runs on NVIDIA GPUs only: use --device cuda")
        available = ort.get_available_providers()
        if self.provider not in available:
            raise BackendError(f"{self.provider} is not in this onnxruntime ({ort.__version__}: "
                               f"{', '.join(available)}): install onnxruntime-gpu (pip install -r "
                               "platforms/x86-cuda/requirements-gpu.txt)")
        chain = [(self.provider, provider_options(self.provider, precision, index))]
        if self.provider != "CUDAExecutionProvider" and "CUDAExecutionProvider" in available:
            chain.append(("CUDAExecutionProvider", {"device_id": index}))
        super().__init__(model_dir, card, precision=precision, device=device, threads=threads,
                         providers=chain + ["CPUExecutionProvider"], file=file, fallback=False)
        if self.providers[0] != self.provider:
            got = ", ".join(self.providers)
            self.close()
            raise BackendError(f"{self.provider} did not start (onnxruntime runs {got} instead; its log says why): it "
                               f"needs {PROVIDER_NEEDS[self.provider]}")
        self.device = f"cuda:{index}"


class OnnxRuntimeCudaBackend(_GpuProviderBackend):
    name = "onnxruntime-cuda"
    provider = "CUDAExecutionProvider"


class OnnxRuntimeTensorRTBackend(_GpuProviderBackend):
    name = "onnxruntime-tensorrt"
    provider = "TensorrtExecutionProvider"
