"""TensorRT backend: a serialized engine (export `tensorrt-<precision>`) on an NVIDIA GPU, through the TensorRT
10.x / 11.x Python API (the same calls in both: asset/export/tensorrt.py TRT_API) and cuda-python
(cuda.bindings.runtime) for memory. No torch needed; `backend_status` checks both.

An engine runs only on the TensorRT version and the GPU model it was built for (`asset export --format tensorrt`
on that machine): model.json records both (and the compute capability), and an engine made elsewhere is refused
with how to rebuild it before TensorRT is asked to deserialise it. Its optimisation profile bounds the batch and
H x W it takes (recorded in model.json); larger batches are chunked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asset.backends.base import Backend, BackendError, export_entry, parse_device


def cudart_module():
    """cuda-python's runtime bindings (cuda.bindings, cuda-python >= 12.6: the pinned versions have it)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise BackendError("the TensorRT backend needs cuda-python for GPU memory: pip install -r "
                           "platforms/jetson/requirements-jetson.txt (Jetson) or platforms/x86-cuda/requirements-gpu.txt"
                           ) from None
    return cudart


def device_facts(cudart, index: int) -> dict:
    """{"gpu": name, "compute_capability": "M.m"} of CUDA device `index`: what an engine is built for."""
    props = check_cuda(cudart.cudaGetDeviceProperties(index))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return {"gpu": name.strip("\x00 "), "compute_capability": f"{int(props.major)}.{int(props.minor)}"}


def check_built_for(path: Path, entry: dict, tensorrt_version: str, here: dict, model_dir="MODEL") -> None:
    """Refuse an engine that another TensorRT version or another GPU model built (BackendError says how to fix)."""
    how = (f"rebuild it on this machine: asset export --model {model_dir} --format tensorrt --precision "
           f"{entry.get('precision', 'fp16')}")
    built = entry.get("tensorrt")
    if built and str(built) != str(tensorrt_version):
        raise BackendError(f"{path}: engine built with TensorRT {built}, this machine has TensorRT {tensorrt_version}"
                           f" (an engine runs only on the TensorRT version that built it): {how}")
    gpu, cc = entry.get("gpu"), entry.get("compute_capability")
    if (gpu and str(gpu).strip() != here["gpu"]) or (cc and str(cc) != here["compute_capability"]):
        raise BackendError(f"{path}: engine built for {gpu} (compute capability {cc or '?'}), this GPU is "
                           f"{here['gpu']} (compute capability {here['compute_capability']}): {how}")


def check_cuda(result):
    """cudart calls return (err, *values): raise on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else values


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, model_dir: Path, card: dict, *, precision: str = "fp16", device: str = "cuda",
                 threads: int = 1, file: str | Path | None = None) -> None:
        import tensorrt as trt

        kind, index = parse_device(device)
        if kind != "cuda":
            raise BackendError("the TensorRT backend runs on NVIDIA GPUs only (device cuda)")
        if file is None:
            entry, path = export_entry(card, model_dir, f"tensorrt-{precision}", self.name)
        else:
            path, entry = Path(file), {}  # an engine being verified, just built here
        cudart = cudart_module()
        check_cuda(cudart.cudaSetDevice(index))
        check_built_for(path, entry, trt.__version__, device_facts(cudart, index), model_dir)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise BackendError(f"{path}: TensorRT {trt.__version__} cannot deserialize the engine (corrupt, or built "
                               "elsewhere): rebuild it on this machine (asset export --format tensorrt)")
        self._engine = engine
        self._context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(f"{path}: expected one input and one output, got {inputs} / {outputs}")
        self._in, self._out = inputs[0], outputs[0]
        self._in_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._in)))
        self._out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._out)))
        _, _, max_shape = engine.get_tensor_profile_shape(self._in, 0)
        self.max_batch = int(max_shape[0])
        self._max_shape = tuple(int(v) for v in max_shape)
        self._cudart = cudart
        self._stream = check_cuda(cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self.file = path
        self.precision = precision
        self.device = f"cuda:{index}"

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                check_cuda(self._cudart.cudaFree(ptr))
            ptr = check_cuda(self._cudart.cudaMalloc(nbytes))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        if any(s > m for s, m in zip(batch.shape[1:], self._max_shape[1:])):
            raise BackendError(f"input {batch.shape} exceeds the engine's profile {self._max_shape}: re-export with "
                               "a larger size")
        x = np.ascontiguousarray(batch, dtype=self._in_dtype)
        self._context.set_input_shape(self._in, x.shape)
        out_shape = tuple(self._context.get_tensor_shape(self._out))
        out = np.empty(out_shape, dtype=self._out_dtype)
        d_in, d_out = self._buffer(self._in, x.nbytes), self._buffer(self._out, out.nbytes)
        self._context.set_tensor_address(self._in, d_in)
        self._context.set_tensor_address(self._out, d_out)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check_cuda(cudart.cudaMemcpyAsync(d_in, x.ctypes.data, x.nbytes, h2d, self._stream))
        if not self._context.execute_async_v3(self._stream):
            raise BackendError("TensorRT execution failed")
        check_cuda(cudart.cudaMemcpyAsync(out.ctypes.data, d_out, out.nbytes, d2h, self._stream))
        check_cuda(cudart.cudaStreamSynchronize(self._stream))
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for ptr, _ in self._buffers.values():
            cudart.cudaFree(ptr)
        self._buffers = {}
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        self._context = None
        self._engine = None
        self._cudart = None
