"""Inference backends: one small interface (`Backend`), several engines, one registry (a plain dict).

    from asset.backends import load_backend, backend_status
    backend_status()          # {"pytorch": None, "onnxruntime": None, "openvino": None, "tensorrt": "no CUDA GPU ..."}
    b = load_backend("onnxruntime", "models/m", precision="int8", threads=2)
    logits = b.infer(batch)   # float32 NCHW (Algorithm.preprocess) -> float32 N x 1 x H x W

| backend              | precisions       | devices   | runs                                                  | needs torch |
|----------------------|------------------|-----------|-------------------------------------------------------|-------------|
| pytorch              | fp32, fp16(cuda) | cpu, cuda | weights.pt through the SMP network                    | yes         |
| onnxruntime          | fp32, int8       | cpu, cuda | exports onnx / onnx-int8 (CPU; cuda: TensorRT, CUDA)  | no          |
| onnxruntime-cuda     | fp32, int8       | cuda      | exports onnx / onnx-int8 on the CUDA EP only          | no          |
| onnxruntime-tensorrt | fp32, fp16, int8 | cuda      | exports onnx / onnx-int8 on ONNX Runtime's TensorRT EP| no          |
| openvino             | fp32, int8       | cpu       | export openvino (IR), else the ONNX file; int8: QDQ   | no          |
| tensorrt             | fp32, fp16, int8 | cuda      | exports tensorrt-fp32/-fp16/-int8 (engine per GPU)    | no          |

The two `onnxruntime-*` backends need onnxruntime-gpu (the x86-CUDA image): they are there so that `asset
benchmark` can set ONNX Runtime's GPU execution providers beside the native TensorRT engines on the same GPU.

Importing this package imports no engine: each backend module is imported when it is loaded.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from asset.backends.base import PRECISIONS, Backend, BackendError, default_threads, parse_device


@dataclass(frozen=True)
class BackendSpec:
    module: str  # asset.backends.<module>
    cls: str
    requires: tuple[str, ...]  # importable top-level modules
    install: str  # how to install them
    precisions: tuple[str, ...]
    devices: tuple[str, ...]
    needs_gpu: bool = False
    provider: str | None = None  # ONNX Runtime execution provider this backend needs listed by onnxruntime


GPU_ORT = "pip install -r platforms/x86-cuda/requirements-gpu.txt (onnxruntime-gpu replaces onnxruntime)"
BACKENDS: dict[str, BackendSpec] = {
    "pytorch": BackendSpec("asset.backends.pytorch", "TorchBackend", ("torch", "segmentation_models_pytorch"),
                           "pip install -r asset/requirements.txt", ("fp32", "fp16"), ("cpu", "cuda")),
    "onnxruntime": BackendSpec("asset.backends.ort", "OnnxRuntimeBackend", ("onnxruntime",),
                               "pip install onnxruntime (or onnxruntime-gpu for CUDA)", ("fp32", "int8"),
                               ("cpu", "cuda")),
    "onnxruntime-cuda": BackendSpec("asset.backends.ort", "OnnxRuntimeCudaBackend", ("onnxruntime",), GPU_ORT,
                                    ("fp32", "int8"), ("cuda",), needs_gpu=True, provider="CUDAExecutionProvider"),
    "onnxruntime-tensorrt": BackendSpec("asset.backends.ort", "OnnxRuntimeTensorRTBackend", ("onnxruntime",),
                                        GPU_ORT, ("fp32", "fp16", "int8"), ("cuda",), needs_gpu=True,
                                        provider="TensorrtExecutionProvider"),
    "openvino": BackendSpec("asset.backends.ov", "OpenVinoBackend", ("openvino",), "pip install openvino",
                            ("fp32", "int8"), ("cpu",)),
    # cuda-python (module cuda.bindings) moves the engine's inputs and outputs to and from the GPU
    "tensorrt": BackendSpec("asset.backends.trt", "TensorRTBackend", ("tensorrt", "cuda.bindings"),
                            "TensorRT from JetPack (Jetson) or tensorrt-cu12 (x86), and pip install -r "
                            "platforms/jetson/requirements-jetson.txt or platforms/x86-cuda/requirements-gpu.txt",
                            ("fp32", "fp16", "int8"), ("cuda",), needs_gpu=True),
}


ALIASES = {"torch": "pytorch", "ort": "onnxruntime", "onnx": "onnxruntime", "ov": "openvino", "trt": "tensorrt",
           "ort-cuda": "onnxruntime-cuda", "ort-trt": "onnxruntime-tensorrt", "ort-tensorrt": "onnxruntime-tensorrt",
           "onnxruntime-trt": "onnxruntime-tensorrt"}


def _norm(name: str) -> str:
    return str(name).lower().replace("_", "").replace("-", "")


def get_spec(name: str) -> BackendSpec:
    key = _norm(name)
    key = next((_norm(v) for k, v in ALIASES.items() if _norm(k) == key), key)
    for k, spec in BACKENDS.items():
        if _norm(k) == key:
            return spec
    raise BackendError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")


def canonical_name(name: str) -> str:
    spec = get_spec(name)
    return next(k for k, v in BACKENDS.items() if v is spec)


def cuda_device_count() -> int:
    """NVIDIA GPUs visible through the driver (libcuda via ctypes: no torch, no CUDA toolkit needed)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return 0
    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(lib)
        except OSError:
            continue
        try:
            if cuda.cuInit(0) != 0:
                return 0
            count = ctypes.c_int(0)
            return count.value if cuda.cuDeviceGetCount(ctypes.byref(count)) == 0 else 0
        except AttributeError:
            return 0
    return 0


def installed(module: str) -> bool:
    """Whether `module` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder refusing it, or a broken install
        return False


# module -> the package that provides it, where the names differ
PACKAGE_OF = {"cuda.bindings": "cuda-python", "segmentation_models_pytorch": "segmentation-models-pytorch"}


def _missing(spec: BackendSpec) -> list[str]:
    return [PACKAGE_OF.get(m, m) for m in spec.requires if not installed(m)]


def provider_missing(provider: str) -> str | None:
    """Why this onnxruntime cannot offer `provider` (None: it lists it)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider in available:
        return None
    return (f"onnxruntime-gpu not installed (this onnxruntime {ort.__version__} has {', '.join(available)}, no "
            f"{provider}: {GPU_ORT})")


def backend_status() -> dict[str, str | None]:
    """name -> None when the backend can run on this machine, else the reason (not installed, no GPU)."""
    out: dict[str, str | None] = {}
    gpus = None
    for name, spec in BACKENDS.items():
        missing = _missing(spec)
        if missing:
            out[name] = f"not installed ({', '.join(missing)} missing: {spec.install})"
            continue
        if spec.provider:
            why = provider_missing(spec.provider)
            if why:
                out[name] = why
                continue
        if spec.needs_gpu:
            gpus = cuda_device_count() if gpus is None else gpus
            if not gpus:
                out[name] = (f"no CUDA GPU on this machine ({'TensorRT engines' if name == 'tensorrt' else name} "
                             "runs on NVIDIA GPUs only)")
                continue
        out[name] = None
    return out


def check_backend(name: str, precision: str = "fp32", device: str = "cpu") -> str:
    """Raise BackendError (with the reason) unless `name` can run `precision` on `device` here. Returns the name."""
    spec = get_spec(name)
    name = canonical_name(name)
    if precision not in PRECISIONS:
        raise BackendError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision not in spec.precisions:
        raise BackendError(f"backend {name!r} runs {', '.join(spec.precisions)}, not {precision}")
    kind, _ = parse_device(device)
    if spec.needs_gpu and kind != "cuda":
        raise BackendError(f"backend {name!r} runs on NVIDIA GPUs only: use --device cuda")
    if kind not in spec.devices:
        raise BackendError(f"backend {name!r} runs on {', '.join(spec.devices)}, not {device}")
    reason = backend_status()[name]
    if reason:
        raise BackendError(f"backend {name!r} cannot run here: {reason}")
    return name


def load_backend(name: str, model_dir: str | os.PathLike, *, precision: str = "fp32", device: str = "cpu",
                 threads: int | None = None, providers: list | None = None, verify: bool = True,
                 card: dict | None = None, **options) -> Backend:
    """Open MODEL_DIR with backend `name`. `threads` defaults to the usable cores, `providers` (ONNX Runtime
    only) to the best available for `device`. verify=True checks the model directory's checksums first.
    Raises BackendError (or ModelDirError) with the reason."""
    from asset import modeldir

    name = check_backend(name, precision, device)
    if threads is not None and int(threads) < 1:
        raise BackendError(f"threads must be >= 1, got {threads}")
    if providers is not None and name != "onnxruntime":
        raise BackendError(f"providers apply to the onnxruntime backend only, not {name!r}")
    if card is None:
        card = modeldir.verify(model_dir) if verify else modeldir.read_card_unverified(model_dir)
    spec = BACKENDS[name]
    cls = getattr(importlib.import_module(spec.module), spec.cls)
    kwargs = dict(options)
    if providers is not None:
        kwargs["providers"] = providers
    return cls(Path(model_dir), card, precision=precision, device=device,
               threads=int(threads) if threads else default_threads(), **kwargs)


__all__ = ["BACKENDS", "Backend", "BackendError", "BackendSpec", "PRECISIONS", "backend_status", "check_backend",
           "cuda_device_count", "default_threads", "get_spec", "load_backend"]
