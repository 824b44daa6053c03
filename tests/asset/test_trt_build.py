"""The TensorRT build path without a GPU: fake `tensorrt` and `cuda.bindings.runtime` modules that offer ONLY the
names asset/export/tensorrt.py lists (TRT_API, CUDART_API) and record every call, so that a call of an API TensorRT
11 removed (BuilderFlag.FP16, int8_calibrator, ...) fails here. The fake "GPU" is host memory and the fake engine
runs the ONNX model it was built from under ONNX Runtime, so the whole `asset export --format tensorrt` runs:
which ONNX (fp32 / mixed-precision fp16 / Q/DQ int8) reaches the parser, the calls in order, verification against
the fp32 ONNX export, the record in model.json, and the backend refusing engines built elsewhere.
Where the real modules import, every listed name is checked against them."""

from __future__ import annotations

import ctypes
import importlib
import importlib.machinery
import re
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import asset.backends
from asset import modeldir
from asset.backends import BackendError, load_backend
from asset.export import ExportError
from asset.export import tensorrt as T
from tests.asset.backend_helpers import copy_model, shared

VERSION = "11.4.0.106"  # platforms/x86-cuda/requirements-gpu.txt
GPU = {"name": b"NVIDIA A100-SXM4-80GB", "major": 8, "minor": 0}
MAGIC = b"FAKE-TRT-ENGINE\n"


# ----------------------------------------------------------------------------- fakes
def fake_modules(calls: list, version: str = VERSION, gpu: dict = GPU):
    """(tensorrt, cuda, cuda.bindings, cuda.bindings.runtime) fakes recording into `calls`."""
    import onnx
    import onnxruntime as ort

    def rec(name, *args):
        calls.append((name, args))

    class Logger:
        WARNING = "WARNING"

        def __init__(self, severity):
            rec("Logger", severity)

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 0  # its bit index, as TensorRT's enum: 1 << int(flag)

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    class TensorIOMode:
        INPUT = "INPUT"
        OUTPUT = "OUTPUT"

    class ITensor:
        def __init__(self, name, shape):
            self._name, self._shape = name, shape

        @property
        def name(self):
            return self._name

        @property
        def shape(self):
            return self._shape

    class INetworkDefinition:
        def __init__(self, flags):
            self._flags, self._model = flags, None

        @property
        def num_inputs(self):
            return len(self._model.graph.input)

        @property
        def num_outputs(self):
            return len(self._model.graph.output)

        def get_input(self, i):
            t = self._model.graph.input[i]
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.type.tensor_type.shape.dim)
            return ITensor(t.name, dims)

    class OnnxParser:
        def __init__(self, network, logger):
            self._network, self._errors = network, []

        def parse(self, data):
            model = onnx.load_from_string(bytes(data))
            init = {onnx.TensorProto.DataType.Name(t.data_type) for t in model.graph.initializer}
            io = [onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type)
                  for v in (*model.graph.input, *model.graph.output)]
            qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
            rec("OnnxParser.parse", {"initializers": sorted(init), "io": io, "qdq": qdq})
            self._network._model, self._network._bytes = model, bytes(data)
            return True

        @property
        def num_errors(self):
            return len(self._errors)

        def get_error(self, i):
            return self._errors[i]

    class IOptimizationProfile:
        def set_shape(self, name, lo, opt, hi):
            rec("IOptimizationProfile.set_shape", name, tuple(lo), tuple(opt), tuple(hi))
            self._shapes = (tuple(lo), tuple(opt), tuple(hi))

    class IBuilderConfig:
        def set_memory_pool_limit(self, pool, size):
            rec("IBuilderConfig.set_memory_pool_limit", pool, size)

        def add_optimization_profile(self, profile):
            rec("IBuilderConfig.add_optimization_profile")
            self._profile = profile
            return 0

    class Builder:
        def __init__(self, logger):
            rec("Builder")

        def create_network(self, flags=0):
            rec("Builder.create_network", flags)
            return INetworkDefinition(flags)

        def create_builder_config(self):
            rec("Builder.create_builder_config")
            return IBuilderConfig()

        def create_optimization_profile(self):
            rec("Builder.create_optimization_profile")
            return IOptimizationProfile()

        def build_serialized_network(self, network, config):
            rec("Builder.build_serialized_network")
            shapes = repr(config._profile._shapes).encode()
            return MAGIC + version.encode() + b"\n" + shapes + b"\n" + network._bytes

    class IExecutionContext:
        def __init__(self, engine):
            self._engine, self._shapes, self._addr = engine, {}, {}

        def set_input_shape(self, name, shape):
            self._shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            n, _, h, w = self._shapes[self._engine._names[0]]
            return (n, 1, h, w)

        def set_tensor_address(self, name, ptr):
            self._addr[name] = int(ptr)
            return True

        def execute_async_v3(self, stream):
            rec("IExecutionContext.execute_async_v3")
            inp, out = self._engine._names
            shape = self._shapes[inp]
            n = int(np.prod(shape)) * 4
            x = np.frombuffer((ctypes.c_char * n).from_address(self._addr[inp]), dtype=np.float32).reshape(shape)
            y = np.ascontiguousarray(self._engine._session.run(None, {inp: x.copy()})[0], dtype=np.float32)
            ctypes.memmove(self._addr[out], y.ctypes.data, y.nbytes)
            return True

    class ICudaEngine:
        def __init__(self, model_bytes, profile):
            model = onnx.load_from_string(model_bytes)
            self._names = [model.graph.input[0].name, model.graph.output[0].name]
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            self._session = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
            self._profile = profile

        @property
        def num_io_tensors(self):
            return 2

        def get_tensor_name(self, i):
            return self._names[i]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name == self._names[0] else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return "float32"

        def get_tensor_profile_shape(self, name, index):
            return self._profile

        def create_execution_context(self):
            return IExecutionContext(self)

    class Runtime:
        def __init__(self, logger):
            rec("Runtime")

        def deserialize_cuda_engine(self, data):
            rec("Runtime.deserialize_cuda_engine")
            head, built, shapes, body = bytes(data).split(b"\n", 3)
            if head + b"\n" != MAGIC or built.decode() != version:
                return None
            return ICudaEngine(body, eval(shapes.decode()))  # noqa: S307 - our own repr of three tuples

    def nptype(dtype):
        return {"float32": np.float32}[dtype]

    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = version
    for obj in (Logger, NetworkDefinitionCreationFlag, MemoryPoolType, TensorIOMode, ITensor, INetworkDefinition,
                OnnxParser, IOptimizationProfile, IBuilderConfig, Builder, IExecutionContext, ICudaEngine, Runtime,
                nptype):
        setattr(trt, obj.__name__, obj)

    memory: dict[int, ctypes.Array] = {}

    class cudaMemcpyKind:  # noqa: N801 - cuda-python's name
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def cudaSetDevice(index):  # noqa: N802
        rec("cudaSetDevice", index)
        return (0,)

    def cudaGetDeviceProperties(index):  # noqa: N802
        return (0, SimpleNamespace(**gpu))

    def cudaMalloc(nbytes):  # noqa: N802
        buf = ctypes.create_string_buffer(int(nbytes))
        memory[ctypes.addressof(buf)] = buf
        return (0, ctypes.addressof(buf))

    def cudaFree(ptr):  # noqa: N802
        memory.pop(int(ptr))
        return (0,)

    def cudaMemcpyAsync(dst, src, nbytes, kind, stream):  # noqa: N802
        ctypes.memmove(int(dst), int(src), int(nbytes))
        return (0,)

    def cudaStreamCreate():  # noqa: N802
        return (0, 7)

    def cudaStreamSynchronize(stream):  # noqa: N802
        return (0,)

    def cudaStreamDestroy(stream):  # noqa: N802
        return (0,)

    runtime = types.ModuleType("cuda.bindings.runtime")
    runtime.__spec__ = importlib.machinery.ModuleSpec("cuda.bindings.runtime", None)
    for obj in (cudaMemcpyKind, cudaSetDevice, cudaGetDeviceProperties, cudaMalloc, cudaFree, cudaMemcpyAsync,
                cudaStreamCreate, cudaStreamSynchronize, cudaStreamDestroy):
        setattr(runtime, obj.__name__, obj)
    bindings = types.ModuleType("cuda.bindings")
    bindings.__spec__ = importlib.machinery.ModuleSpec("cuda.bindings", None, is_package=True)
    bindings.runtime = runtime
    cuda = types.ModuleType("cuda")
    cuda.__spec__ = importlib.machinery.ModuleSpec("cuda", None, is_package=True)
    cuda.bindings = bindings
    return trt, cuda, bindings, runtime, memory


def surface(module) -> set[str]:
    """Public names of a fake module: its attributes, and Class.member for its classes' own members."""
    out = set()
    for name, obj in vars(module).items():
        if name.startswith("_") and name != "__version__":
            continue
        out.add(name)
        if isinstance(obj, type):
            out |= {f"{name}.{m}" for m in vars(obj) if not m.startswith("_")}
    return out


def resolve(module, dotted: str):
    obj = module
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.fixture
def fake_gpu(monkeypatch):
    """Install the fakes (and one visible GPU); yields (calls, memory)."""
    calls: list = []
    trt, cuda, bindings, runtime, memory = fake_modules(calls)
    for name, mod in (("tensorrt", trt), ("cuda", cuda), ("cuda.bindings", bindings),
                      ("cuda.bindings.runtime", runtime)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(asset.backends, "cuda_device_count", lambda: 1)
    yield calls, memory


def requantise(model_dir: Path, symmetric: bool = True, unsigned: bool = False, quantize_bias: bool = False) -> Path:
    """Replace the model directory's onnx-int8 export by a Q/DQ model with int8 weights and int8 (or uint8)
    activations, symmetric (zero point 0: what TensorRT takes) or not, calibrated on a few training images."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    from asset.algorithm import Algorithm
    from asset.export import data as D

    card = modeldir.verify(model_dir)
    alg = Algorithm.from_card(card)
    batches = [alg.preprocess([D.load_image(i.path)])[0] for i in D.split_items(card, "train", limit=4)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {"images": x}

    dst = model_dir / "exports" / "model-int8.onnx"
    quantize_static(str(model_dir / "exports" / "model.onnx"), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8 if unsigned else QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True,
                                   "QuantizeBias": quantize_bias})
    for extra in dst.parent.glob("augmented_model*.onnx"):
        extra.unlink()
    modeldir.write_card(model_dir, card)  # new checksums
    return dst


# ----------------------------------------------------------------------------- the API lists
def test_fake_offers_exactly_the_listed_api():
    trt, _, _, runtime, _ = fake_modules([])
    assert surface(trt) == set(T.TRT_API)
    assert surface(runtime) == set(T.CUDART_API)
    for name in T.TRT_REMOVED:
        with pytest.raises(AttributeError):
            resolve(trt, name)
    assert not set(T.TRT_REMOVED) & set(T.TRT_API)


def test_every_listed_name_exists_in_the_installed_tensorrt():
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed here (tensorrt-cu12 needs NVIDIA's index)")
    missing = [n for n in T.TRT_API if not _has(trt, n)]
    assert not missing, f"TensorRT {trt.__version__} lacks {missing}"
    if int(trt.__version__.split(".")[0]) >= 11:
        assert not [n for n in T.TRT_REMOVED if _has(trt, n)]


def test_every_listed_name_exists_in_the_installed_cuda_python():
    runtime = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed here")
    assert [n for n in T.CUDART_API if not _has(runtime, n)] == []


def _has(module, dotted: str) -> bool:
    try:
        resolve(module, dotted)
    except AttributeError:
        return False
    return True


# ----------------------------------------------------------------------------- the build path
BUILD_ORDER = ["cudaSetDevice", "Logger", "Builder", "Builder.create_network", "OnnxParser.parse",
               "Builder.create_builder_config", "IBuilderConfig.set_memory_pool_limit",
               "Builder.create_optimization_profile", "IOptimizationProfile.set_shape",
               "IBuilderConfig.add_optimization_profile", "Builder.build_serialized_network"]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_path_per_precision(fake_gpu, tmp_path, precision):
    if precision == "fp16":
        pytest.importorskip("onnxconverter_common", reason="onnxconverter-common is not installed here")
    calls, memory = fake_gpu
    m = copy_model(shared()["model"], tmp_path / "m")
    if precision == "int8":
        requantise(m)
    said = []
    entry = T.export_engine(m, precision=precision, device="cuda", log=said.append, verify_images=8, max_batch=4)
    names = [c[0] for c in calls]
    build = [n for n in names if n in BUILD_ORDER]
    assert build[:len(BUILD_ORDER)] == BUILD_ORDER
    flags = dict(calls)["Builder.create_network"][0]
    assert flags == 1 << 0  # strongly typed, nothing else
    parsed = dict(calls)["OnnxParser.parse"][0]
    assert parsed["io"] == ["FLOAT", "FLOAT"]  # every precision keeps float32 inputs and outputs
    if precision == "fp32":
        assert "FLOAT" in parsed["initializers"] and parsed["qdq"] == 0
        assert not {"FLOAT16", "INT8", "UINT8"} & set(parsed["initializers"])
    elif precision == "fp16":
        assert "FLOAT16" in parsed["initializers"] and parsed["qdq"] == 0
    else:
        assert parsed["qdq"] > 0 and "INT8" in parsed["initializers"]
    lo, opt, hi = dict(calls)["IOptimizationProfile.set_shape"][1:]
    assert lo[0] == 1 and opt[0] == 1 and hi[0] == 4  # dynamic batch: one profile 1..max_batch
    # verification ran the engine, then the engine was deserialised again by no one: one build, one load
    assert names.count("Runtime.deserialize_cuda_engine") == 1 and "IExecutionContext.execute_async_v3" in names
    assert memory == {}  # every device buffer freed
    card = modeldir.verify(m)
    rec = card["exports"][f"tensorrt-{precision}"]
    assert rec == entry and rec["file"] == f"exports/model-{precision}.engine" and (m / rec["file"]).is_file()
    assert rec["tensorrt"] == VERSION and rec["gpu"] == "NVIDIA A100-SXM4-80GB" and rec["compute_capability"] == "8.0"
    assert rec["strongly_typed"] is True and rec["verification"]["passed"]
    assert rec["source"].startswith({"fp32": "exports/model.onnx", "fp16": "exports/model.onnx converted",
                                     "int8": "exports/model-int8.onnx"}[precision])
    if precision == "fp16":
        assert rec["verification"]["decisions_equal"] == rec["verification"]["images"]
        assert rec["mixed_precision"]["converter"].startswith("onnxconverter-common")
    assert not [p for p in (m / "exports").iterdir() if p.name.startswith(modeldir.TMP_PREFIX)]
    # the engine serves through the backend, and agrees with the ONNX export
    with load_backend("tensorrt", m, precision=precision, device="cuda") as b, \
            load_backend("onnxruntime", m, threads=1) as ref:
        x = np.random.default_rng(1).normal(size=(6, 1, 32, 32)).astype(np.float32)  # 6 > max_batch: chunked
        y = b.infer(x)
        assert y.shape == (6, 1, 32, 32) and y.dtype == np.float32
        if precision == "fp32":
            assert np.allclose(y, ref.infer(x), atol=1e-4)


def test_engine_from_another_tensorrt_or_gpu_is_refused_before_deserialising(fake_gpu, tmp_path):
    calls, _ = fake_gpu
    m = copy_model(shared()["model"], tmp_path / "m")
    T.export_engine(m, precision="fp32", device="cuda", log=lambda s: None, verify_images=4)
    card = modeldir.verify(m)
    for change, message in ((("tensorrt", "10.13.3.9"), "engine built with TensorRT 10.13.3.9, this machine has "
                             f"TensorRT {VERSION}"),
                            (("gpu", "Orin (nvgpu)"), "engine built for Orin (nvgpu)"),
                            (("compute_capability", "8.7"), "compute capability 8.7")):
        bad = {**card, "exports": {**card["exports"], "tensorrt-fp32": {**card["exports"]["tensorrt-fp32"],
                                                                          change[0]: change[1]}}}
        modeldir.write_card(m, bad)
        calls.clear()
        with pytest.raises(BackendError, match=re.escape(message)) as err:
            load_backend("tensorrt", m, precision="fp32", device="cuda")
        assert f"rebuild it on this machine: asset export --model {m} --format tensorrt --precision fp32" in str(
            err.value)
        assert "Runtime.deserialize_cuda_engine" not in [c[0] for c in calls]
    modeldir.write_card(m, card)
    with load_backend("tensorrt", m, precision="fp32", device="cuda"):
        pass


def test_int8_needs_the_onnx_int8_export_and_a_signed_symmetric_one(fake_gpu, tmp_path):
    calls, _ = fake_gpu
    m = copy_model(shared()["model"], tmp_path / "m")
    with pytest.raises(ExportError, match=r"non-zero int8 zero points \(asymmetric\)"):
        T.check_int8_qdq(requantise(copy_model(m, tmp_path / "asym"), symmetric=False))
    requantise(m, symmetric=False, unsigned=True)  # ONNX Runtime's default: uint8 activations, any zero point
    with pytest.raises(ExportError, match=r"asymmetric INT8 model .*has no exact signed equivalent for TensorRT"):
        T.export_engine(m, precision="int8", device="cuda", log=lambda s: None)
    assert "Builder" not in [c[0] for c in calls]  # refused before any TensorRT call
    assert T.check_int8_qdq(requantise(m))["int8"] == "signed symmetric (zero point 0)"
    with pytest.raises(ExportError, match=r"int32 constants dequantised .* biases stay float"):
        T.check_int8_qdq(requantise(copy_model(m, tmp_path / "bias"), quantize_bias=True))
    with pytest.raises(ExportError, match="has no QuantizeLinear nodes"):
        T.check_int8_qdq(m / "exports" / "model.onnx")
    card = modeldir.verify(m)
    del card["exports"]["onnx-int8"]
    modeldir.write_card(m, card)
    with pytest.raises(ExportError, match=r"has no ONNX INT8 export .* --format onnx-int8"):
        T.export_engine(m, precision="int8", device="cuda", log=lambda s: None)


def test_calibration_options_are_refused(fake_gpu, tmp_path):
    m = copy_model(shared()["model"], tmp_path / "m")
    with pytest.raises(ExportError, match="--calib-images does not apply to TensorRT"):
        T.export_engine(m, precision="int8", device="cuda", log=lambda s: None, calib_images=8)


def test_failed_verification_writes_nothing(fake_gpu, tmp_path, monkeypatch):
    m = copy_model(shared()["model"], tmp_path / "m")
    before = sorted(p.name for p in (m / "exports").iterdir())
    real = T.compare

    def broken(infer, reference, *a, **k):  # the engine computes something else
        return real(lambda x: -infer(x), reference, *a, **k)

    monkeypatch.setattr(T, "compare", broken)
    with pytest.raises(ExportError, match="tensorrt-fp32 failed verification against the ONNX export"):
        T.export_engine(m, precision="fp32", device="cuda", log=lambda s: None, verify_images=4)
    assert sorted(p.name for p in (m / "exports").iterdir()) == before
    assert "tensorrt-fp32" not in modeldir.verify(m)["exports"]
