"""TensorRT export, without torch: the model directory's ONNX exports -> a serialized engine for the GPU it runs on.

Engines are built on the device that runs them (a Jetson's image has TensorRT and ONNX Runtime, no torch), so this
module needs neither torch nor the network: it starts from the ONNX exports (made and verified against PyTorch by
`asset export --format onnx / onnx-int8` where torch is installed) and verifies the engine against the fp32 ONNX
model under ONNX Runtime, on the dataset's validation images when the dataset can be read here, else on random
images (recorded in model.json either way).

One code path for the TensorRT versions the images ship: TensorRT 11.4 in the x86-CUDA image (tensorrt-cu12, PyPI)
and TensorRT 10.x on the Jetson (JetPack 7.0, L4T r38.2, ships TensorRT 10.13 as python3-libnvinfer). Networks are
strongly typed (NetworkDefinitionCreationFlag.STRONGLY_TYPED: required for this in 10.x, the only mode of 11.x,
where the flag is kept and ignored), so each tensor's precision comes from the ONNX model, never from builder flags
(TensorRT 11 removed BuilderFlag.FP16/INT8, platform_has_fast_fp16, int8_calibrator and set_calibration_profile):
- fp32: exports/model.onnx as it is;
- fp16: exports/model.onnx converted to mixed precision (asset/export/mixed_precision.py: float32 I/O, float32
  where FP16 is not enough), staged and removed after the build;
- int8: exports/model-int8.onnx, the onnx-int8 export's explicit Q/DQ model: one calibration, shared with ONNX
  Runtime. TensorRT takes only signed symmetric INT8 Q/DQ (int8 zero points, all 0, float biases): the model is
  spelled that way exactly (`asset.export.onnx_int8.signed_for_tensorrt`: uint8 zero point 128 -> int8 0, int32
  biases -> float) and `check_int8_qdq` refuses anything else (asymmetric) before the build, with how to fix it.
One optimisation profile: batch 1..max_batch, H x W from the first verification image (opt) up to the largest of
them (max), down to 32 (min) when H/W are dynamic. The engine's facts (TensorRT version, GPU name, compute
capability, profile, source ONNX) are recorded in model.json; the backend refuses an engine built by another
TensorRT version or for another GPU before deserialising it.

Every TensorRT / cuda-python name used here and in asset/backends/trt.py is listed in TRT_API / CUDART_API: the
tests check them against the installed modules where they import, and run the whole build path against fakes that
offer only those names (tests/asset/test_trt_build.py), so a removed API fails a test on machines without a GPU.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from asset import modeldir
from asset.algorithm import Algorithm
from asset.backends.base import parse_device
from asset.export.common import install_and_record
from asset.export.formats import ExportError, check_arguments
from asset.export.verify import compare

DEFAULTS = {"precision": "fp16", "verify_images": 128, "atol": 1e-3, "max_accuracy_drop": 0.02, "workspace": 4.0,
            "max_batch": 16}
ONNX_ONLY = ("opset", "simplify", "dynamic")  # options of making the ONNX file, which already exists here
RANDOM_IMAGES = 8  # verification inputs when no dataset can be read on this machine
RANDOM_SIZE = (256, 256)  # their size when the model card records none
SOURCES = {"fp32": "onnx", "fp16": "onnx", "int8": "onnx-int8"}  # the export each engine precision is built from
REFERENCE = "the ONNX export (onnxruntime fp32, exports/model.onnx)"  # what every engine is verified against

# Every `tensorrt` attribute this module and asset/backends/trt.py use (Class.member for members). Checked against
# the real module where it imports (test_trt_build.py), and the only names the tests' fake module offers.
TRT_API = (
    "__version__", "nptype",
    "Logger", "Logger.WARNING", "Builder", "Builder.create_network", "Builder.create_builder_config",
    "Builder.create_optimization_profile", "Builder.build_serialized_network",
    "NetworkDefinitionCreationFlag", "NetworkDefinitionCreationFlag.STRONGLY_TYPED",
    "INetworkDefinition", "INetworkDefinition.num_inputs", "INetworkDefinition.num_outputs", "INetworkDefinition.get_input",
    "ITensor", "ITensor.name", "ITensor.shape",
    "OnnxParser", "OnnxParser.parse", "OnnxParser.num_errors", "OnnxParser.get_error",
    "IBuilderConfig", "IBuilderConfig.set_memory_pool_limit", "IBuilderConfig.add_optimization_profile", "MemoryPoolType",
    "MemoryPoolType.WORKSPACE", "IOptimizationProfile", "IOptimizationProfile.set_shape",
    "Runtime", "Runtime.deserialize_cuda_engine",
    "ICudaEngine", "ICudaEngine.num_io_tensors", "ICudaEngine.get_tensor_name", "ICudaEngine.get_tensor_mode",
    "ICudaEngine.get_tensor_dtype", "ICudaEngine.get_tensor_profile_shape", "ICudaEngine.create_execution_context",
    "TensorIOMode", "TensorIOMode.INPUT", "TensorIOMode.OUTPUT",
    "IExecutionContext", "IExecutionContext.set_input_shape", "IExecutionContext.get_tensor_shape",
    "IExecutionContext.set_tensor_address",
    "IExecutionContext.execute_async_v3",
)
# Removed in TensorRT 11 (NVIDIA's "Removed Python APIs and Replacements"): must never be used again.
TRT_REMOVED = ("Builder.platform_has_fast_fp16", "BuilderFlag.FP16", "BuilderFlag.INT8",
               "IBuilderConfig.int8_calibrator", "IBuilderConfig.set_calibration_profile", "IInt8EntropyCalibrator2")
# cuda-python's cuda.bindings.runtime names used (GPU memory, streams, device facts).
CUDART_API = ("cudaSetDevice", "cudaGetDeviceProperties", "cudaMalloc", "cudaFree", "cudaMemcpyAsync",
              "cudaMemcpyKind", "cudaMemcpyKind.cudaMemcpyHostToDevice", "cudaMemcpyKind.cudaMemcpyDeviceToHost",
              "cudaStreamCreate", "cudaStreamSynchronize", "cudaStreamDestroy")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def tensorrt_missing() -> str | None:
    """Why this machine cannot build engines (None: it can). Imports neither TensorRT nor torch."""
    from asset.backends import cuda_device_count, installed

    if not installed("tensorrt"):
        return ("TensorRT is not installed: engines are built where they run, with that machine's TensorRT "
                "(Jetson: JetPack's python3-libnvinfer, in the jetson image; x86 + NVIDIA GPU: "
                "pip install -r platforms/x86-cuda/requirements-gpu.txt)")
    if not installed("cuda.bindings"):
        return ("cuda-python is not installed (TensorRT's GPU memory goes through it): pip install -r "
                "platforms/jetson/requirements-jetson.txt on a Jetson, platforms/x86-cuda/requirements-gpu.txt on x86")
    if not installed("onnxruntime"):
        return "onnxruntime is not installed (the engine is verified against the ONNX export under it)"
    if not cuda_device_count():
        return ("no CUDA GPU visible: TensorRT builds an engine for the GPU it runs on; run this on that machine "
                "(in a container: --runtime nvidia or --gpus all)")
    return None


def onnx_source(model_dir: Path, card: dict) -> Path:
    """The model directory's fp32 ONNX export, which the engine is built from; ExportError when there is none."""
    entry = (card.get("exports") or {}).get("onnx")
    path = Path(model_dir) / entry["file"] if entry and entry.get("file") else None
    if path is None or not path.is_file():
        raise ExportError(f"{model_dir} has no ONNX export (model.json exports['onnx']): TensorRT engines are built "
                          f"from it, without torch. Make it where torch is installed (`asset export --model "
                          f"{model_dir} --format onnx`), copy the model directory here, then run this again")
    return path


def random_images(card: dict, n: int = RANDOM_IMAGES) -> list[np.ndarray]:
    """Uniform noise images of the model's training size and channels (fixed seed: the same inputs every run)."""
    inp = card.get("input") or {}
    h, w = inp.get("train_size") or (inp.get("size_policy") or {}).get("size") or RANDOM_SIZE
    channels = int(inp.get("channels", 3))
    rng = np.random.default_rng(0)
    shape = (int(h), int(w)) if channels == 1 else (int(h), int(w), channels)
    return [rng.integers(0, 256, size=shape, dtype=np.uint8) for _ in range(n)]


def verification_inputs(card: dict, data, limit: int, log) -> tuple[str | None, list, list[np.ndarray], list | None]:
    """(split, items, images, masks) of the dataset when it can be read here, else (None, [], random images, None).
    An explicit --data that cannot be read is an error."""
    from asset.export import data as D
    from asset.modeldir import ModelDirError

    try:
        split, items = D.first_split(card, data, limit=limit)
        return split, items, [D.load_image(i.path) for i in items], [D.load_mask(i.rle) for i in items]
    except (ImportError, ModelDirError) as exc:
        if data is not None:
            raise ExportError(f"cannot read --data {data}: {exc}") from None
        log(f"tensorrt: the dataset cannot be read here ({exc}); verifying on {RANDOM_IMAGES} random images")
        return None, [], random_images(card), None


def int8_source(model_dir: Path, card: dict) -> Path:
    """The onnx-int8 export's Q/DQ model, which INT8 engines are built from; ExportError when there is none."""
    entry = (card.get("exports") or {}).get("onnx-int8")
    path = Path(model_dir) / entry["file"] if entry and entry.get("file") else None
    if path is None or not path.is_file():
        raise ExportError(f"{model_dir} has no ONNX INT8 export (model.json exports['onnx-int8']): INT8 engines are "
                          f"built from its Q/DQ model, so that TensorRT and ONNX Runtime share one calibration. Make "
                          f"it where torch is installed (`asset export --model {model_dir} --format onnx-int8`), copy "
                          "the model directory here, then run this again")
    return path


def _constant(model, name: str):
    """The value of initializer or Constant output `name` as numpy, else None (computed at run time)."""
    from onnx import numpy_helper

    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def check_int8_qdq(path: Path) -> dict:
    """Refuse a Q/DQ model TensorRT cannot take: it needs signed symmetric INT8 (zero points int8 and all 0, or
    absent), constant positive scales, and int8 constants only behind DequantizeLinear (ONNX Runtime quantises
    biases to int32 unless told not to). Returns the facts recorded with the engine."""
    try:
        import onnx
    except ImportError:
        raise ExportError("onnx is not installed: INT8 engines check the onnx-int8 export's Q/DQ nodes with it "
                          "(pip install -r platforms/x86-cuda/requirements-gpu.txt or "
                          "platforms/jetson/requirements-jetson.txt)") from None
    model = onnx.load(str(path))
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not any(n.op_type == "QuantizeLinear" for n in qdq):
        raise ExportError(f"{path} has no QuantizeLinear nodes: INT8 engines are built from an explicit Q/DQ model "
                          "(re-export it: asset export --format onnx-int8)")
    bad: dict[str, list[str]] = {}
    for n in qdq:
        x = _constant(model, n.input[0]) if n.op_type == "DequantizeLinear" else None
        if x is not None and x.dtype != np.int8:
            bad.setdefault(f"{x.dtype} constants dequantised (TensorRT dequantises int8 only: quantise without "
                           "QuantizeBias, biases stay float)", []).append(n.name)
            continue
        scale = _constant(model, n.input[1])
        if scale is None or not np.all(np.asarray(scale, dtype=np.float64) > 0):
            bad.setdefault("scales that are not constant and positive", []).append(n.name)
        if len(n.input) < 3 or not n.input[2]:
            continue  # no zero point: 0
        zp = _constant(model, n.input[2])
        if zp is None:
            bad.setdefault("zero points computed at run time", []).append(n.name)
        elif zp.dtype != np.int8:
            bad.setdefault(f"{zp.dtype} zero points (asymmetric)", []).append(n.name)
        elif np.any(zp != 0):
            bad.setdefault("non-zero int8 zero points (asymmetric)", []).append(n.name)
    if bad:
        what = "; ".join(f"{len(v)} nodes with {k} (e.g. {v[0]})" for k, v in bad.items())
        raise ExportError(f"{path} is not a TensorRT INT8 model: TensorRT takes only signed symmetric INT8 Q/DQ "
                          f"(int8 zero points, all 0), and this one has {what}. Re-export onnx-int8 with signed "
                          "symmetric activations and weights (asset export --format onnx-int8 with this version), "
                          "or build --precision fp16")
    return {"qdq_nodes": len(qdq), "int8": "signed symmetric (zero point 0)"}


def gpu_info(index: int) -> dict:
    """{"gpu": name, "compute_capability": "M.m"} of CUDA device `index` (what an engine is built for)."""
    from asset.backends.trt import cudart_module, device_facts

    return device_facts(cudart_module(), index)


def build_engine(onnx_path: Path, out_path: Path, *, device: str, opt_shape, max_shape, workspace_gb: float,
                 log) -> dict:
    """Build a strongly typed engine from `onnx_path` (its precision is the ONNX model's) and write it to
    out_path. Returns the facts recorded in model.json."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ExportError(f"TensorRT is not installed: {exc}") from None

    from asset.backends.trt import check_cuda, cudart_module

    kind, index = parse_device(device)
    if kind != "cuda":
        raise ExportError("TensorRT engines are built on an NVIDIA GPU: --device cuda[:N]")
    check_cuda(cudart_module().cudaSetDevice(index))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {Path(onnx_path).name}: {errors}")
    if network.num_inputs != 1 or network.num_outputs != 1:
        raise ExportError(f"{Path(onnx_path).name}: expected one input and one output, got {network.num_inputs} / "
                          f"{network.num_outputs}")
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
    log(f"building a strongly typed TensorRT {trt.__version__} engine from {Path(onnx_path).name} (profile batch "
        f"1..{mb}, {h}x{w} opt, max {max_hw[0]}x{max_hw[1]}); this takes minutes")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError("TensorRT failed to build the engine (see the TensorRT log above)")
    Path(out_path).write_bytes(bytes(serialized))
    return {**gpu_info(index), "tensorrt": trt.__version__, "strongly_typed": True,
            "profile": {"min": list(min_shape), "opt": [1, c, h, w], "max": [mb, c, *max_hw]},
            "workspace_gb": workspace_gb}


def _stage(model_dir: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f"{modeldir.TMP_PREFIX}{name}.", dir=model_dir / "exports")
    os.close(fd)
    return Path(tmp)


def export_engine(model_dir: str | os.PathLike, *, data=None, device: str = "cuda", log=_stderr, **options) -> dict:
    """Build, verify and record MODEL_DIR/exports/model-<precision>.engine from the ONNX exports, without torch.
    `options`: the tensorrt format's arguments (None = default). Returns the model.json exports record."""
    from asset.backends import load_backend
    from asset.export import mixed_precision

    if options.get("calib_images") is not None:
        raise ExportError("--calib-images does not apply to TensorRT: INT8 engines are built from the onnx-int8 "
                          "export's Q/DQ model and its calibration (pass --calib-images to `asset export --format "
                          "onnx-int8`)")
    options = {k: v for k, v in options.items() if k != "calib_images"}
    check_arguments("tensorrt", options)
    given = [k for k in ONNX_ONLY if options.get(k) is not None]
    if given:
        raise ExportError(f"{', '.join('--' + k for k in given)} shape the ONNX export; the engine is built from "
                          "exports/model.onnx as it is (re-export ONNX to change it)")
    opts = {k: options.get(k) if options.get(k) is not None else v for k, v in DEFAULTS.items()}
    precision, t0 = opts["precision"], time.perf_counter()
    if precision not in SOURCES:
        raise ExportError(f"TensorRT engines are built at {', '.join(SOURCES)}, not {precision}")
    model_dir = Path(model_dir)
    card = modeldir.verify(model_dir)
    src = onnx_source(model_dir, card)  # the engine's reference in every precision
    build_src = int8_source(model_dir, card) if precision == "int8" else src
    why = tensorrt_missing() or (mixed_precision.converter_missing() if precision == "fp16" else None)
    if why:
        raise ExportError(why)
    if parse_device(device)[0] != "cuda":
        raise ExportError("TensorRT engines are built on an NVIDIA GPU: --device cuda[:N]")
    source = {"source": str(build_src.relative_to(model_dir))}
    algorithm = Algorithm.from_card(card)
    inputs = verification_inputs(card, data, int(opts["verify_images"]), log)
    shapes = [algorithm.preprocess([img])[0].shape for img in inputs[2]]
    opt = shapes[0]
    max_hw = (max(s[2] for s in shapes), max(s[3] for s in shapes))
    key = f"tensorrt-{precision}"
    staged = [_stage(model_dir, f"model-{precision}.engine")]
    tmp = staged[0]
    try:
        if precision == "fp16":
            staged.append(_stage(model_dir, "model-fp16.onnx"))
            build_src = staged[-1]
            source["mixed_precision"] = mixed_precision.write(src, build_src)
            source["source"] = f"{src.relative_to(model_dir)} converted to mixed precision (FP16, float32 I/O)"
            log(f"tensorrt-fp16: {source['mixed_precision']['converter']}, kept in FP32: "
                f"{', '.join(source['mixed_precision']['fp32_kept']) or 'nothing'}")
        if precision == "int8":  # exactly the same Q/DQ grid, spelled the way TensorRT reads it
            import onnx

            from asset.export.onnx_int8 import signed_for_tensorrt

            staged.append(_stage(model_dir, "model-int8-signed.onnx"))
            onnx.save(signed_for_tensorrt(build_src), str(staged[-1]))
            build_src = staged[-1]
            source["quantisation"] = check_int8_qdq(build_src)  # before any TensorRT call
        facts = build_engine(build_src, tmp, device=device, opt_shape=opt,
                             max_shape=(int(opts["max_batch"]), opt[1], *max_hw),
                             workspace_gb=float(opts["workspace"]), log=log)
        from asset.backends.trt import TensorRTBackend

        engine = TensorRTBackend(model_dir, card, precision=precision, device=device, file=tmp)
        reference = load_backend("onnxruntime", model_dir, precision="fp32", card=card, verify=False)
        max_drop = mixed_precision.FP16_MAX_IOU_CHANGE if precision == "fp16" else float(opts["max_accuracy_drop"])
        try:
            figures = compare(engine.infer, reference.infer, algorithm, inputs, exact=precision == "fp32",
                              atol=float(opts["atol"]) * 10, max_drop=max_drop, what=key, reference_name=REFERENCE,
                              log=log, same_decisions=precision == "fp16")
        finally:
            engine.close()
            reference.close()
        # verified: install and record it together, under the directory's lock (the old engine, if any, stays
        # in place and recorded until this point)
        return install_and_record(model_dir, key, tmp, facts={**source, **facts}, figures=figures,
                                  versions=_versions(), started=t0, log=log)
    finally:
        for path in staged:
            path.unlink(missing_ok=True)


def export(model_dir: Path, *, precision: str, data, device: str, log, options: dict) -> dict:
    """The registry's exporter entry point (asset.export.formats): see export_engine."""
    return export_engine(model_dir, data=data, device=device, log=log, **{**options, "precision": precision})


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for name in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "cuda-python", "onnxruntime", "onnxruntime-gpu",
                 "onnx", "onnxconverter-common"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out
