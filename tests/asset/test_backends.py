"""Backends and the Predictor: the contract, agreement of decisions and masks across every backend available here,
errors that say what to do, and the ONNX Runtime / OpenVINO path running in a process where torch cannot import."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asset.backends import BACKENDS, Backend, BackendError, backend_status, load_backend
from asset.export import data as D
from asset.predictor import Predictor
from tests import REPO
from tests.asset.backend_helpers import copy_model, shared


def _val_images():
    m = shared()["model"]
    from asset import modeldir

    items = D.split_items(modeldir.verify(m), "val")
    return items, [D.load_image(i.path) for i in items]


def test_backend_status_contract():
    st = backend_status()
    assert set(st) == set(BACKENDS) == {"pytorch", "onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt",
                                        "openvino", "tensorrt"}
    assert all(v is None or (isinstance(v, str) and v) for v in st.values())
    assert st["onnxruntime"] is None and st["pytorch"] is None


CANDIDATES = [("pytorch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("onnxruntime-cuda", "fp32"),
              ("onnxruntime-tensorrt", "fp32"), ("onnxruntime-tensorrt", "fp16"), ("tensorrt", "fp32"),
              ("tensorrt", "fp16")]


def _available():
    st = backend_status()
    return [(n, p) for n, p in CANDIDATES if st[n] is None]


def _with_engines(tmp_path, wanted) -> Path:
    """The shared model, or a copy with the TensorRT engines `wanted` needs, built here first (a backend is only
    compared once its export exists; a failing build fails the test)."""
    m = shared()["model"]
    precisions = [p for n, p in wanted if n == "tensorrt"]
    if not precisions:
        return m
    from asset.export.tensorrt import export_engine

    m = copy_model(m, tmp_path / "with-engines")
    for precision in precisions:
        export_engine(m, precision=precision, device="cuda", log=lambda s: None, verify_images=16)
    return m


def test_every_available_backend_agrees_with_pytorch(tmp_path):
    wanted = _available()
    skipped = {f"{n}:{p}": backend_status()[n] for n, p in CANDIDATES if (n, p) not in wanted}
    print("not compared here:", skipped)
    m = _with_engines(tmp_path, wanted)
    items, images = _val_images()
    images = images + [np.ascontiguousarray(images[0][:24, :40])]  # another size in the same call
    results = {}
    for name, precision in wanted:
        device = "cuda" if BACKENDS[name].needs_gpu else "cpu"
        with Predictor(m, name, precision=precision, device=device, batch_size=3) as p:
            assert isinstance(p.backend, Backend) and p.backend.name == name and p.backend.precision == precision
            results[(name, precision)] = p.predict(images)
    ref = results.pop(("pytorch", "fp32"))
    assert {p.defective for p in ref} == {True, False}  # the threshold splits the images
    assert len(results) >= 2
    for key, preds in results.items():
        assert [p.defective for p in preds] == [p.defective for p in ref], key
        agree = D.agreement(preds, ref)
        assert agree["mask_agreement"] >= (0.999 if key[1] == "fp32" else 0.99), (key, agree)
        for a, b in zip(preds, ref):
            assert a.mask.shape == b.mask.shape and abs(a.defect_fraction - b.defect_fraction) < 0.01


def test_int8_backends_run_and_stay_close():
    m = shared()["model"]
    _, images = _val_images()
    with Predictor(m, "onnxruntime") as p32, Predictor(m, "onnxruntime", precision="int8") as p8, \
            Predictor(m, "openvino", precision="int8") as pov:
        ref, q, qov = p32.predict(images), p8.predict(images), pov.predict(images)
    assert D.agreement(q, ref)["mask_agreement"] > 0.9 and D.agreement(qov, ref)["mask_agreement"] > 0.9


def test_backend_infer_contract_and_batches():
    m = shared()["model"]
    _, images = _val_images()
    with load_backend("onnxruntime", m, threads=1) as b:
        assert b.info()["providers"] == ["CPUExecutionProvider"]
        x = np.random.default_rng(0).normal(size=(5, 1, 32, 64)).astype(np.float32)
        y = b.infer(x)
        assert y.shape == (5, 1, 32, 64) and y.dtype == np.float32
        b.max_batch = 2  # chunking gives the same result
        assert np.allclose(b.infer(x), y, atol=1e-5)
        assert np.allclose(b.infer(x.astype(np.float64)), y, atol=1e-5)  # converted
        with pytest.raises(BackendError, match="N x C x H x W"):
            b.infer(x[0])


def test_predictor_batching_bytes_and_threshold():
    m = shared()["model"]
    _, images = _val_images()
    with Predictor(m, "onnxruntime", batch_size=1) as p1, Predictor(m, "onnxruntime", batch_size=8) as p8:
        a, b = p1.predict(images), p8.predict(images)
        assert [x.defect_fraction for x in a] == pytest.approx([x.defect_fraction for x in b], abs=1e-6)
        buf = io.BytesIO()
        Image.fromarray(images[0]).save(buf, format="PNG")
        (pb,) = p8.predict_bytes(buf.getvalue())
        assert pb.defect_fraction == pytest.approx(a[0].defect_fraction, abs=1e-6)
        assert all(p.defective for p in p8.predict(images, image_threshold=0.0))
        assert p8.card["arch"] == "unet" and p8.info()["backend"] == "onnxruntime"
        from asset.algorithm import AlgorithmError

        with pytest.raises(AlgorithmError, match="does not decode"):
            p8.predict_bytes(b"not an image")
        assert p8.predict([]) == []


def test_backend_errors_say_what_to_do(tmp_path):
    m = shared()["model"]
    with pytest.raises(BackendError, match="unknown backend 'tflite'; valid: pytorch, onnxruntime"):
        load_backend("tflite", m)
    with pytest.raises(BackendError, match="runs fp32, int8, not fp16"):
        load_backend("onnxruntime", m, precision="fp16")
    with pytest.raises(BackendError, match="NVIDIA GPUs only"):
        load_backend("tensorrt", m, device="cpu")
    with pytest.raises(BackendError, match="threads must be >= 1"):
        load_backend("onnxruntime", m, threads=0)
    with pytest.raises(BackendError, match="providers apply to the onnxruntime backend only"):
        load_backend("openvino", m, providers=["CPUExecutionProvider"])
    with pytest.raises(BackendError, match="not available here"):
        load_backend("onnxruntime", m, providers=["NoSuchExecutionProvider"])
    bare = copy_model(m, tmp_path / "bare")
    from asset import modeldir

    card = modeldir.verify(bare)
    card["exports"] = {}
    modeldir.write_card(bare, card)
    with pytest.raises(BackendError, match=r"needs the 'onnx' export.*asset export --model .* --format onnx"):
        load_backend("onnxruntime", bare)
    with pytest.raises(BackendError, match="'onnx-int8' export"):
        Predictor(bare, "onnxruntime", precision="int8")


def test_onnxruntime_gpu_backends_here(monkeypatch):
    """Without onnxruntime-gpu the GPU provider backends say so; with a fake onnxruntime that lists the providers,
    the provider chain, its options per precision and the refusal to fall back silently are checked."""
    import onnxruntime as ort

    from asset.backends import ort as O

    m = shared()["model"]
    st = backend_status()
    for name, provider in (("onnxruntime-cuda", "CUDAExecutionProvider"),
                           ("onnxruntime-tensorrt", "TensorrtExecutionProvider")):
        if provider not in ort.get_available_providers():
            assert st[name].startswith("onnxruntime-gpu not installed") and provider in st[name], st[name]
            with pytest.raises(BackendError, match="onnxruntime-gpu not installed"):
                load_backend(name, m, device="cuda")
        with pytest.raises(BackendError, match="runs on NVIDIA GPUs only"):
            load_backend(name, m, device="cpu")
    with pytest.raises(BackendError, match="runs fp32, int8, not fp16"):
        load_backend("ort-cuda", m, precision="fp16", device="cuda")
    from asset import modeldir

    card = modeldir.verify(m)
    seen = {}

    class Session:  # records what the backend asks of onnxruntime; "starts" the providers in `started`
        started = None

        def __init__(self, path, sess_options=None, providers=None, enable_fallback=1):
            seen.update(path=path, providers=providers, enable_fallback=enable_fallback)
            self._providers = Session.started or [p[0] if isinstance(p, tuple) else p for p in providers]

        def get_providers(self):
            return self._providers

        def get_inputs(self):
            return [type("I", (), {"name": "images"})]

        get_outputs = get_inputs

    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: gpu)
    monkeypatch.setattr(ort, "InferenceSession", Session)
    b = O.OnnxRuntimeTensorRTBackend(m, card, precision="fp16", device="cuda:1")
    assert seen["providers"] == [
        ("TensorrtExecutionProvider", {"device_id": 1, "trt_fp16_enable": True, "trt_int8_enable": False,
                                       "trt_max_workspace_size": 4 << 30}),
        ("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert seen["enable_fallback"] == 0 and seen["path"].endswith("exports/model.onnx")
    assert b.info()["providers"] == gpu and b.device == "cuda:1" and b.name == "onnxruntime-tensorrt"
    O.OnnxRuntimeTensorRTBackend(m, card, precision="int8", device="cuda")
    assert seen["providers"][0][1]["trt_int8_enable"] and seen["path"].endswith("exports/model-int8.onnx")
    c = O.OnnxRuntimeCudaBackend(m, card, precision="int8", device="cuda")
    assert seen["providers"] == [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    assert c.name == "onnxruntime-cuda" and seen["path"].endswith("exports/model-int8.onnx")
    Session.started = ["CUDAExecutionProvider", "CPUExecutionProvider"]  # the TensorRT provider failed to load
    with pytest.raises(BackendError, match=r"TensorrtExecutionProvider did not start \(onnxruntime runs "
                                           r"CUDAExecutionProvider, CPUExecutionProvider instead.*libnvinfer"):
        O.OnnxRuntimeTensorRTBackend(m, card, precision="fp32", device="cuda")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(BackendError, match="CUDAExecutionProvider is not in this onnxruntime"):
        O.OnnxRuntimeCudaBackend(m, card, device="cuda")


def test_tensorrt_backend_or_reason():
    reason = backend_status()["tensorrt"]
    if reason:
        print(f"TensorRT backend skipped: {reason}")
        pytest.skip(f"TensorRT: {reason}")
    with pytest.raises(BackendError, match="tensorrt-fp16"):  # pragma: no cover - GPU machines
        load_backend("tensorrt", shared()["model"], device="cuda", precision="fp16", verify=False,
                     card={"exports": {}})


BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "lightning", "pytorch_lightning", "torchvision", "torchmetrics",
                                      "segmentation_models_pytorch", "timm"):
                raise ImportError(f"{name} is blocked in this test (no torch here)")
    sys.meta_path.insert(0, Block())
""")


def test_onnxruntime_and_openvino_run_without_torch(tmp_path):
    m = shared()["model"]
    items, images = _val_images()
    with Predictor(m, "pytorch") as p:
        expected = [[x.defective, x.defect_fraction] for x in p.predict(images)]
    script = BLOCKER + textwrap.dedent(f"""
        import json, sys
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("torch imported despite the blocker")
        from asset.backends import backend_status, load_backend
        from asset.predictor import Predictor
        from asset.export import data as D
        from asset import modeldir
        from asset.benchmark import run_benchmark
        m = {str(m)!r}
        assert backend_status()["onnxruntime"] is None
        items = D.split_items(modeldir.verify(m), "val")
        images = [D.load_image(i.path) for i in items]
        out = {{}}
        for name, precision in (("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32")):
            with Predictor(m, name, precision=precision) as p:
                out[name + ":" + precision] = [[x.defective, x.defect_fraction] for x in p.predict(images)]
        doc = run_benchmark(m, [("onnxruntime", "fp32"), ("openvino", "fp32")], min_iter=2, min_seconds=0)
        out["bench"] = [r["status"] for r in doc["rows"]]
        bad = [k for k in sys.modules if k.split(".")[0] in ("torch", "lightning", "torchmetrics")]
        out["leaked"] = bad
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["leaked"] == [] and out["bench"] == ["ok", "ok"]
    for key in ("onnxruntime:fp32", "openvino:fp32"):
        assert [d for d, _ in out[key]] == [d for d, _ in expected]
        assert np.allclose([f for _, f in out[key]], [f for _, f in expected], atol=1e-3)
    assert len(out["onnxruntime:int8"]) == len(expected)
