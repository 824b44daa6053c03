"""TensorRT export, without torch: the model directory's ONNX export -> a serialized engine for the GPU it runs on.

Engines are built on the device that runs them (a Jetson's image has TensorRT and ONNX Runtime, no torch), so this
module needs neither torch nor the network: it starts from MODEL_DIR/exports/model.onnx (made and verified against
PyTorch by `asset export --format onnx` where torch is installed) and verifies the engine against that ONNX model
under ONNX Runtime, on the dataset's validation images when the dataset can be read here, else on random images
(recorded in model.json either way).

Builder (TensorRT 10 Python API): FP32, FP16 (BuilderFlag.FP16) or INT8 (BuilderFlag.INT8 + FP16 fallback, with an
entropy calibrator over preprocessed training images). One optimisation profile: batch 1..max_batch, H x W from
the first verification image (opt) up to the largest of them (max), down to one divisor step (min) when H/W are
dynamic.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from asset import modeldir
from asset.algorithm import Algorithm
from asset.backends.base import parse_device
from asset.export.formats import ExportError, check_arguments

DEFAULTS = {"precision": "fp16", "calib_images": 32, "verify_images": 128, "atol": 1e-3, "max_accuracy_drop": 0.02,
            "workspace": 4.0, "max_batch": 16}
ONNX_ONLY = ("opset", "simplify", "dynamic")  # options of making the ONNX file, which already exists here
RANDOM_IMAGES = 8  # verification inputs when no dataset can be read on this machine
RANDOM_SIZE = (256, 256)  # their size when the model card records none


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


def calibration_inputs(card: dict, algorithm: Algorithm, data, n: int) -> list[np.ndarray]:
    """Preprocessed training images for INT8 calibration; ExportError when the dataset cannot be read here."""
    from asset.export import data as D
    from asset.modeldir import ModelDirError

    try:
        items = D.split_items(card, "train", data, limit=n) or D.first_split(card, data, limit=n)[1]
    except (ImportError, ModelDirError) as exc:
        raise ExportError(f"TensorRT INT8 calibrates on training images and the dataset cannot be read here ({exc}): "
                          "pass --data DATASET_DIR, or build --precision fp16 / fp32") from None
    return [algorithm.preprocess([D.load_image(i.path)])[0] for i in items]


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


def verify_engine(infer, reference, algorithm: Algorithm, inputs, *, exact: bool, atol: float, max_drop: float,
                  what: str, log) -> dict:
    """Compare the engine with the ONNX export under ONNX Runtime. fp32: max |logit diff| <= atol x max(1, |logit|)
    and identical decisions; fp16/int8: accuracy and pixel IoU drop <= max_drop on dataset images, or on random
    images (no labels) at most max_drop of the mask pixels changed. Raises ExportError with the figures."""
    from asset.export import data as D

    split, items, images, masks = inputs
    ref_logits, metas = D.run_logits(reference, algorithm, images)
    try:
        logits, _ = D.run_logits(infer, algorithm, images)
    except Exception as exc:  # noqa: BLE001 - any engine failure is the export's failure
        raise ExportError(f"{what}: the engine fails to run ({exc}); nothing was written") from None
    ref_preds, preds = D.postprocess_each(algorithm, ref_logits, metas), D.postprocess_each(algorithm, logits, metas)
    diff = max(float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(logits, ref_logits))
    scale = max(1.0, max(float(np.max(np.abs(b))) for b in ref_logits))
    agree = D.agreement(preds, ref_preds)
    n = len(images)
    figures = {"reference": "onnxruntime fp32 (exports/model.onnx)",
               "inputs": f"{n} {split} images" if split else f"{n} random images (no dataset here)",
               "images": n, "max_abs_diff": diff, "max_abs_logit": scale, "tolerance": atol * scale if exact else None,
               "decisions_equal": agree["decisions_equal"], "mask_agreement": round(agree["mask_agreement"], 6)}
    text = (f"max |logit diff| {diff:.3g} (largest |logit| {scale:.3g}), decisions equal {agree['decisions_equal']}/"
            f"{n}, mask pixels equal {agree['mask_agreement']:.4%} on {figures['inputs']}")
    if exact:
        ok = diff <= atol * scale and agree["decisions_equal"] == n
        rule = f"needs max diff <= {atol:g} x max(1, |logit|) and identical decisions"
    elif split:
        ours, theirs = D.score(preds, items, masks), D.score(ref_preds, items, masks)
        figures.update({"accuracy": {"onnx": theirs["accuracy"], "engine": ours["accuracy"]},
                        "pixel_iou": {"onnx": theirs["pixel_iou"], "engine": ours["pixel_iou"]},
                        "accuracy_change": ours["accuracy"] - theirs["accuracy"],
                        "pixel_iou_change": ours["pixel_iou"] - theirs["pixel_iou"]})
        text += (f", accuracy {theirs['accuracy']:.4f} -> {ours['accuracy']:.4f}, pixel IoU "
                 f"{theirs['pixel_iou']:.4f} -> {ours['pixel_iou']:.4f}")
        ok = figures["accuracy_change"] >= -max_drop and figures["pixel_iou_change"] >= -max_drop
        rule = f"needs accuracy and pixel IoU to drop by <= {max_drop:g}"
    else:
        ok = agree["mask_agreement"] >= 1 - max_drop
        rule = f"needs >= {1 - max_drop:.2%} equal mask pixels (no labelled images here)"
    figures["passed"] = bool(ok)
    log(f"{what}: {text}")
    if not ok:
        raise ExportError(f"{what} failed verification against the ONNX export: {text}; {rule}. Nothing was written")
    return figures


def export_engine(model_dir: str | os.PathLike, *, data=None, device: str = "cuda", log=_stderr, **options) -> dict:
    """Build, verify and record MODEL_DIR/exports/model-<precision>.engine from the ONNX export, without torch.
    `options`: the tensorrt format's arguments (None = default). Returns the model.json exports record."""
    from asset.backends import load_backend

    check_arguments("tensorrt", options)
    given = [k for k in ONNX_ONLY if options.get(k) is not None]
    if given:
        raise ExportError(f"{', '.join('--' + k for k in given)} shape the ONNX export; the engine is built from "
                          "exports/model.onnx as it is (re-export ONNX to change it)")
    opts = {k: options.get(k) if options.get(k) is not None else v for k, v in DEFAULTS.items()}
    precision, t0 = opts["precision"], time.perf_counter()
    model_dir = Path(model_dir)
    card = modeldir.verify(model_dir)
    src = onnx_source(model_dir, card)
    why = tensorrt_missing()
    if why:
        raise ExportError(why)
    if parse_device(device)[0] != "cuda":
        raise ExportError("TensorRT engines are built on an NVIDIA GPU: --device cuda[:N]")
    algorithm = Algorithm.from_card(card)
    inputs = verification_inputs(card, data, int(opts["verify_images"]), log)
    shapes = [algorithm.preprocess([img])[0].shape for img in inputs[2]]
    opt = shapes[0]
    max_hw = (max(s[2] for s in shapes), max(s[3] for s in shapes))
    calib = calibration_inputs(card, algorithm, data, int(opts["calib_images"])) if precision == "int8" else None
    key, rel = f"tensorrt-{precision}", f"exports/model-{precision}.engine"
    fd, name = tempfile.mkstemp(prefix=f"{modeldir.TMP_PREFIX}model-{precision}.engine.", dir=model_dir / "exports")
    os.close(fd)
    tmp = Path(name)
    try:
        facts = build_engine(src, tmp, precision=precision, device=device, opt_shape=opt,
                             max_shape=(int(opts["max_batch"]), opt[1], *max_hw), workspace_gb=float(opts["workspace"]),
                             calibration=calib, log=log)
        from asset.backends.trt import TensorRTBackend

        engine = TensorRTBackend(model_dir, card, precision=precision, device=device, file=tmp)
        reference = load_backend("onnxruntime", model_dir, precision="fp32", card=card, verify=False)
        try:
            figures = verify_engine(engine.infer, reference.infer, algorithm, inputs, exact=precision == "fp32",
                                    atol=float(opts["atol"]) * 10, max_drop=float(opts["max_accuracy_drop"]),
                                    what=key, log=log)
        finally:
            engine.close()
            reference.close()
        os.replace(tmp, model_dir / rel)
    finally:
        tmp.unlink(missing_ok=True)
    size = (model_dir / rel).stat().st_size
    entry = {"file": rel, "format": "tensorrt", "precision": precision, "backend": "tensorrt", "bytes": size,
             "created": modeldir.now_iso(), "seconds": round(time.perf_counter() - t0, 1),
             "machine": platform.machine(), "source": str(src.relative_to(model_dir)), **facts,
             "verification": figures, "versions": _versions()}
    modeldir.record(model_dir, "exports", entry, key=key)
    log(f"wrote {model_dir / rel} ({size / 1e6:.1f} MB) and recorded it in model.json exports[{key!r}]")
    return entry


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for name in ("tensorrt", "cuda-python", "onnxruntime", "onnxruntime-gpu"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out
