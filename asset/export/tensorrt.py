"""TensorRT engine builder (TensorRT 10 Python API): ONNX -> serialized engine for the GPU it runs on.

FP32, FP16 (BuilderFlag.FP16) or INT8 (BuilderFlag.INT8 + FP16 fallback, with an entropy calibrator over
preprocessed dataset images). One optimisation profile: batch 1..max_batch, H x W from the verification image
(opt) up to the largest network size of the split (max), down to one divisor step (min) when H/W are dynamic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asset.backends.base import parse_device
from asset.export.formats import ExportError


def _calibrator(trt, batches: list[np.ndarray], cache: Path):
    from asset.backends.trt import check_cuda, cudart_module

    cudart = cudart_module()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self._batches = batches
            self._i = 0
            self._nbytes = max(b.nbytes for b in batches)
            self._ptr = check_cuda(cudart.cudaMalloc(self._nbytes))

        def get_batch_size(self):
            return int(self._batches[0].shape[0])

        def get_batch(self, names):
            if self._i >= len(self._batches):
                return None
            x = np.ascontiguousarray(self._batches[self._i], dtype=np.float32)
            self._i += 1
            check_cuda(cudart.cudaMemcpy(self._ptr, x.ctypes.data, x.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
            return [int(self._ptr)]

        def read_calibration_cache(self):
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data):
            cache.write_bytes(bytes(data))

        def free(self):
            if self._ptr:
                cudart.cudaFree(self._ptr)
                self._ptr = 0

    return EntropyCalibrator()


def gpu_name(index: int) -> str:
    from asset.backends.trt import check_cuda, cudart_module

    props = check_cuda(cudart_module().cudaGetDeviceProperties(index))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00 ")


def build_engine(onnx_path: Path, out_path: Path, *, precision: str, device: str, opt_shape, max_shape,
                 workspace_gb: float, calibration: list[np.ndarray] | None, log) -> dict:
    """Build and serialize an engine to out_path. Returns the facts recorded in model.json."""
    import tensorrt as trt

    from asset.backends.trt import check_cuda, cudart_module

    kind, index = parse_device(device)
    if kind != "cuda":
        raise ExportError("TensorRT engines are built on an NVIDIA GPU: --device cuda[:N]")
    check_cuda(cudart_module().cudaSetDevice(index))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    inp = network.get_input(0)
    n, c, h, w = (int(v) for v in opt_shape)
    mb, _, mh, mw = (int(v) for v in max_shape)
    dynamic_hw = inp.shape[2] == -1 or inp.shape[3] == -1
    min_shape = (1, c, min(32, h), min(32, w)) if dynamic_hw else (1, c, h, w)
    max_hw = (max(mh, h), max(mw, w)) if dynamic_hw else (h, w)
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, min_shape, (1, c, h, w), (mb, c, *max_hw))
    config.add_optimization_profile(profile)
    calibrator = None
    if precision in ("fp16", "int8"):
        if not builder.platform_has_fast_fp16:
            log("this GPU has no fast FP16: the engine may not be faster than FP32")
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        if not calibration:
            raise ExportError("TensorRT INT8 needs calibration images")
        config.set_flag(trt.BuilderFlag.INT8)
        calibrator = _calibrator(trt, calibration, Path(str(out_path) + ".calib"))
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profile)
    log(f"building the TensorRT {precision} engine (profile batch 1..{mb}, {h}x{w} opt, max {max_hw}); "
        "this takes minutes")
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.free()
            Path(str(out_path) + ".calib").unlink(missing_ok=True)
    if serialized is None:
        raise ExportError("TensorRT failed to build the engine (see the TensorRT log above)")
    Path(out_path).write_bytes(bytes(serialized))
    return {"gpu": gpu_name(index), "tensorrt": trt.__version__,
            "profile": {"min": list(min_shape), "opt": [1, c, h, w], "max": [mb, c, *max_hw]},
            "calibration_images": len(calibration) if calibration else None, "workspace_gb": workspace_gb}
