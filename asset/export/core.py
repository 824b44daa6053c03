"""Export a model directory: stage in MODEL_DIR/exports/.tmp-*, verify against PyTorch, os.replace, record.

Verification runs the export and PyTorch over validation images of the dataset the model was trained on, through
the shared `Algorithm`:
- fp32 exports (onnx, openvino, tensorrt fp32): max |logit difference| <= atol x max(1, max |logit|) and identical
  image-level decisions;
- reduced precision (onnx-int8, tensorrt fp16/int8): accuracy and pixel-IoU drop on that split <= max_accuracy_drop
  (the figures, and how many decisions changed, are recorded).
An export that fails is not written; the ExportError shows the figures.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from asset import modeldir
from asset.algorithm import Algorithm
from asset.export import data as D
from asset.export.formats import DEFAULT_OPSET, FORMATS, ExportError, check_arguments, export_key, format_status

EXPORTS_DIR = "exports"
INPUT_NAME, OUTPUT_NAME = "images", "logits"
DEFAULTS = {"opset": DEFAULT_OPSET, "simplify": True, "dynamic": True, "atol": 1e-3, "verify_images": 128,
            "calib_images": 32, "per_channel": True, "max_accuracy_drop": 0.02, "workspace": 4.0, "max_batch": 16}


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Context:
    """What every export needs: the network, the card, the algorithm, verification images and PyTorch's logits."""

    def __init__(self, model_dir: Path, data, verify_images: int, log: Callable[[str], None]) -> None:
        from asset.models.factory import load_network

        self.model_dir = Path(model_dir)
        self.net, self.card = load_network(model_dir, verify=True)  # refuses a missing / corrupt directory
        self.algorithm = Algorithm.from_card(self.card)
        self.data = data
        self.log = log
        self.split, self.items = D.first_split(self.card, data, limit=verify_images)
        self.images = [D.load_image(i.path) for i in self.items]
        self.masks = [D.load_mask(i.rle) for i in self.items]
        x, _ = self.algorithm.preprocess([self.images[0]])
        self.sample = x  # 1 x C x H x W, a real preprocessed image
        self._torch_logits = None
        self._torch_preds = None

    def torch_infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.net(torch.from_numpy(batch)).float().numpy()

    def reference(self):
        if self._torch_logits is None:
            logits, metas = D.run_logits(self.torch_infer, self.algorithm, self.images)
            self._torch_logits, self._metas = logits, metas
            self._torch_preds = D.postprocess_each(self.algorithm, logits, metas)
        return self._torch_logits, self._torch_preds

    def network_shape(self) -> tuple[int, int]:
        return tuple(self.sample.shape[2:])

    def max_network_shape(self) -> tuple[int, int]:
        shapes = [self.algorithm.size_policy.network_shape(*i.shape[:2]) if self.algorithm.size_policy.mode == "pad"
                  else self.algorithm.size_policy.size for i in self.images]
        return max(s[0] for s in shapes), max(s[1] for s in shapes)

    def stage(self, name: str) -> Path:
        """A temporary path inside MODEL_DIR/exports (skipped by the checksums, removed on failure)."""
        d = self.model_dir / EXPORTS_DIR
        d.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{modeldir.TMP_PREFIX}{name}.", dir=d)
        os.close(fd)
        return Path(tmp)


def verify(ctx: Context, infer, what: str, *, exact: bool, atol: float, max_drop: float) -> dict:
    """Run `infer` over the verification images and compare with PyTorch. Raises ExportError with the figures."""
    ref_logits, ref_preds = ctx.reference()
    try:
        logits, metas = D.run_logits(infer, ctx.algorithm, ctx.images)
    except Exception as exc:
        raise ExportError(f"{what}: the exported model fails to run on the {ctx.split} images ({exc})") from None
    preds = D.postprocess_each(ctx.algorithm, logits, metas)
    diff = max(float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(logits, ref_logits))
    scale = max(1.0, max(float(np.max(np.abs(b))) for b in ref_logits))
    agree = D.agreement(preds, ref_preds)
    ours, theirs = D.score(preds, ctx.items, ctx.masks), D.score(ref_preds, ctx.items, ctx.masks)
    figures = {
        "split": ctx.split, "images": len(ctx.images), "max_abs_diff": diff, "max_abs_logit": scale,
        "tolerance": atol * scale if exact else None, "decisions_equal": agree["decisions_equal"],
        "mask_agreement": round(agree["mask_agreement"], 6),
        "accuracy": {"pytorch": theirs["accuracy"], "export": ours["accuracy"]},
        "pixel_iou": {"pytorch": theirs["pixel_iou"], "export": ours["pixel_iou"]},
        "accuracy_change": ours["accuracy"] - theirs["accuracy"],
        "pixel_iou_change": ours["pixel_iou"] - theirs["pixel_iou"],
    }
    text = (f"max |logit diff| {diff:.3g} (largest |logit| {scale:.3g}), decisions equal "
            f"{agree['decisions_equal']}/{len(ctx.images)}, mask pixels equal {agree['mask_agreement']:.4%}, "
            f"accuracy {theirs['accuracy']:.4f} -> {ours['accuracy']:.4f}, pixel IoU {theirs['pixel_iou']:.4f} -> "
            f"{ours['pixel_iou']:.4f} on {len(ctx.images)} {ctx.split} images")
    if exact:
        ok = diff <= atol * scale and agree["decisions_equal"] == len(ctx.images)
        rule = f"needs max diff <= {atol:g} x max(1, |logit|) = {atol * scale:.3g} and identical decisions"
    else:
        ok = figures["accuracy_change"] >= -max_drop and figures["pixel_iou_change"] >= -max_drop
        rule = f"needs accuracy and pixel IoU to drop by <= {max_drop:g}"
    figures["passed"] = bool(ok)
    ctx.log(f"{what}: {text}")
    if not ok:
        raise ExportError(f"{what} failed verification against PyTorch: {text}; {rule}. Nothing was written")
    return figures


# ----------------------------------------------------------------------------- ONNX
def _torch_export(ctx: Context, path: Path, opset: int, dynamic_hw: bool, dynamo: bool = False) -> None:
    import contextlib
    import io
    import warnings

    import torch

    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(ctx.net, (torch.from_numpy(ctx.sample),), str(path), dynamo=dynamo,
                              opset_version=max(opset, 18) if dynamo else opset, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
                              do_constant_folding=True, **({"verbose": False} if dynamo else {}))
    except Exception as exc:  # the message can hold the whole TorchScript graph: keep its first line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ExportError(f"torch.onnx.export ({'dynamo' if dynamo else 'TorchScript'}, opset {opset}) failed: "
                          f"{first}") from None


def _check_and_simplify(path: Path, simplify: bool, log) -> bool:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejects the exported model: {exc}") from None
    if not simplify:
        return False
    try:
        import contextlib
        import io

        import onnxslim

        with contextlib.redirect_stdout(io.StringIO()):
            slim = onnxslim.slim(str(path))
        onnx.checker.check_model(slim)
        onnx.save(slim, str(path))
        return True
    except Exception as exc:  # simplification is optional: keep the checked model
        log(f"onnxslim could not simplify the model ({exc}); keeping it as exported")
        return False


def _ort_infer(path: Path, threads: int | None = None):
    import onnxruntime as ort

    from asset.backends import default_threads
    from asset.backends.ort import session_options

    sess = ort.InferenceSession(str(path), sess_options=session_options(threads or default_threads()),
                                providers=["CPUExecutionProvider"])
    return lambda x: sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def _second_shape_ok(ctx: Context, infer, atol: float) -> bool:
    """Dynamic H/W check: batch 2 at a size other than the one traced, against PyTorch."""
    d = ctx.algorithm.size_policy.divisor
    h, w = ctx.network_shape()
    x = np.concatenate([ctx.sample, ctx.sample])
    x = np.pad(x, ((0, 0), (0, 0), (0, d), (0, 2 * d)), mode="edge")
    try:
        a, b = infer(x), ctx.torch_infer(x)
    except Exception:
        return False
    return a.shape == b.shape and float(np.max(np.abs(a - b))) <= atol * max(1.0, float(np.max(np.abs(b))))


def make_onnx(ctx: Context, path: Path, opset: int, simplify: bool, dynamic: bool, atol: float) -> dict:
    """Export + check (+ simplify) an fp32 ONNX file at `path`; returns its facts (dynamic axes, simplified).

    Tries, in order: the TorchScript exporter (dynamo=False, fast) with dynamic batch/H/W, then static H/W, then the
    dynamo exporter (needs onnxscript; handles e.g. PSPNet's/UPerNet's adaptive pooling at small sizes) dynamic,
    then static. An attempt counts when it exports, passes onnx.checker, runs in ONNX Runtime and - for dynamic
    H/W - reproduces PyTorch at a second size. Batch is always dynamic."""
    attempts = [(False, True), (False, False), (True, True), (True, False)]
    if not dynamic:
        attempts = [a for a in attempts if not a[1]]
    errors = []
    for dynamo, dynamic_hw in attempts:
        what = f"{'dynamo' if dynamo else 'TorchScript'} exporter, {'dynamic' if dynamic_hw else 'static'} H/W"
        try:
            _torch_export(ctx, path, opset, dynamic_hw, dynamo)
            simplified = _check_and_simplify(path, simplify, ctx.log)
            infer = _ort_infer(path)
            infer(ctx.sample)
        except Exception as exc:  # noqa: BLE001 - try the next way
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            errors.append(f"{what}: {first}")
            ctx.log(f"onnx: {what} failed ({first})")
            continue
        if dynamic_hw and not _second_shape_ok(ctx, infer, atol):
            errors.append(f"{what}: does not reproduce PyTorch at another input size")
            ctx.log(f"onnx: {what} does not reproduce PyTorch at another input size")
            continue
        c, h, w = ctx.sample.shape[1:]
        return {"opset": max(opset, 18) if dynamo else opset, "simplified": simplified,
                "dynamic": {"batch": True, "height_width": dynamic_hw},
                "input": {"name": INPUT_NAME, "shape": ["batch", c, "height" if dynamic_hw else h,
                                                        "width" if dynamic_hw else w]},
                "output": {"name": OUTPUT_NAME},
                "exporter": f"torch.onnx.export ({'dynamo' if dynamo else 'TorchScript, dynamo=False'})"}
    raise ExportError("ONNX export failed every way: " + "; ".join(errors))


def source_onnx(ctx: Context, opts: dict) -> tuple[Path, bool]:
    """The fp32 ONNX file other formats start from: the recorded `onnx` export, else a temporary one.
    Returns (path, is_temporary)."""
    entry = (ctx.card.get("exports") or {}).get("onnx")
    if entry and (ctx.model_dir / entry["file"]).is_file():
        return ctx.model_dir / entry["file"], False
    tmp = ctx.stage("source.onnx")
    ctx.log("exporting a temporary fp32 ONNX model first")
    make_onnx(ctx, tmp, opts["opset"], opts["simplify"], opts["dynamic"], opts["atol"])
    return tmp, True


# ----------------------------------------------------------------------------- INT8 (ONNX Runtime, static QDQ)
def cpu_has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags or "amx_int8" in flags


def calibration_batches(ctx: Context, n: int) -> list[np.ndarray]:
    """Preprocessed training images (falls back to the verification split when there is no train split)."""
    items = D.split_items(ctx.card, "train", ctx.data, limit=n) or ctx.items[:n]
    out = []
    for it in items:
        x, _ = ctx.algorithm.preprocess([D.load_image(it.path)])
        out.append(x)
    return out


def quantize_int8(ctx: Context, src: Path, dst: Path, calib_images: int, per_channel: bool) -> dict:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = calibration_batches(ctx, calib_images)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {INPUT_NAME: x}

        def rewind(self):
            self._it = iter(batches)

    pre = ctx.stage("preprocessed.onnx")
    try:
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)  # symbolic inference litters the cwd
            model_in = pre
        except Exception as exc:
            ctx.log(f"quant_pre_process failed ({exc}); quantising the model as exported")
            model_in = src
        reduce_range = not cpu_has_vnni()
        try:
            quantize_static(str(model_in), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        except Exception as exc:
            raise ExportError(f"ONNX Runtime static quantisation failed: {exc}") from None
    finally:
        pre.unlink(missing_ok=True)
        for extra in dst.parent.glob("augmented_model*.onnx"):
            extra.unlink(missing_ok=True)
    return {"quantisation": {"method": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                             "per_channel": per_channel, "activations": "uint8", "weights": "int8",
                             "reduce_range": reduce_range, "calibration": "MinMax",
                             "calibration_images": len(batches), "calibration_split": "train"}}


def time_ms(infer, x: np.ndarray, seconds: float = 1.0, warmup: int = 2, min_iter: int = 5, max_iter: int = 50
            ) -> float:
    """Median latency (ms per call) of infer(x)."""
    for _ in range(warmup):
        infer(x)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_iter or (len(times) < max_iter and time.perf_counter() - start < seconds):
        t = time.perf_counter()
        infer(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


# ----------------------------------------------------------------------------- driver
def _versions(*names: str) -> dict:
    from importlib import metadata

    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out


def _install(model_dir: Path, staged: Path, rel: str) -> None:
    """Move a staged file or directory into place (atomically for files)."""
    target = model_dir / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    if staged.is_dir():
        old = None
        if target.exists():
            old = target.with_name(f"{modeldir.TMP_PREFIX}old-{target.name}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(staged, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, target)


def export_model(model_dir: str | os.PathLike, fmt: str, *, data=None, device: str = "cuda",
                 log: Callable[[str], None] = _stderr, **options) -> dict:
    """Export MODEL_DIR to `fmt` (onnx | onnx-int8 | openvino | tensorrt). `options` are the format's arguments
    (see FORMATS[fmt].args; None = default). Returns the record written to model.json["exports"][key].
    tensorrt is asset/export/tensorrt.py's export_engine (from the ONNX export, verified against it)."""
    if fmt == "tensorrt":  # built from the ONNX export without torch, so that it can run on the device
        from asset.export.tensorrt import export_engine

        return export_engine(model_dir, data=data, device=device, log=log, **options)
    check_arguments(fmt, options)  # before any work
    why = format_status(fmt)
    if why:
        raise ExportError(f"this machine cannot produce {fmt!r}: {why}")
    model_dir = Path(model_dir)
    modeldir.verify(model_dir)
    opts = {k: (options.get(k) if options.get(k) is not None else v) for k, v in DEFAULTS.items()}
    precision = options.get("precision") or FORMATS[fmt].precisions[0]
    key = export_key(fmt, precision)
    t0 = time.perf_counter()
    ctx = Context(model_dir, data, int(opts["verify_images"]), log)
    log(f"exporting {model_dir} ({ctx.card['arch']}/{ctx.card['encoder']}) to {key}; verifying on "
        f"{len(ctx.images)} {ctx.split} images")
    staged: list[Path] = []
    try:
        if fmt == "onnx":
            tmp = ctx.stage("model.onnx")
            staged.append(tmp)
            facts = make_onnx(ctx, tmp, opts["opset"], opts["simplify"], opts["dynamic"], opts["atol"])
            figures = verify(ctx, _ort_infer(tmp), "onnx", exact=True, atol=opts["atol"], max_drop=0)
            rel = f"{EXPORTS_DIR}/model.onnx"
            versions = _versions("torch", "onnx", "onnxruntime", "onnxslim")
        elif fmt == "onnx-int8":
            src, temporary = source_onnx(ctx, opts)
            if temporary:
                staged.append(src)
            tmp = ctx.stage("model-int8.onnx")
            staged.append(tmp)
            facts = quantize_int8(ctx, src, tmp, int(opts["calib_images"]), bool(opts["per_channel"]))
            int8 = _ort_infer(tmp)
            figures = verify(ctx, int8, "onnx-int8", exact=False, atol=opts["atol"], max_drop=opts["max_accuracy_drop"])
            fp32_ms, int8_ms = time_ms(_ort_infer(src), ctx.sample), time_ms(int8, ctx.sample)
            facts["speed"] = {"shape": list(ctx.sample.shape), "fp32_ms": round(fp32_ms, 3),
                              "int8_ms": round(int8_ms, 3), "speedup": round(fp32_ms / int8_ms, 3)}
            log(f"onnx-int8: {fp32_ms:.2f} ms fp32 -> {int8_ms:.2f} ms int8 ({fp32_ms / int8_ms:.2f}x) at batch 1 "
                f"{ctx.sample.shape[2]}x{ctx.sample.shape[3]}; accuracy change {figures['accuracy_change']:+.4f}, "
                f"pixel IoU change {figures['pixel_iou_change']:+.4f}")
            facts.update({"opset": opts["opset"], "input": {"name": INPUT_NAME}, "output": {"name": OUTPUT_NAME}})
            rel = f"{EXPORTS_DIR}/model-int8.onnx"
            versions = _versions("torch", "onnx", "onnxruntime")
        elif fmt == "openvino":
            import openvino as ov

            from asset.backends.ov import OpenVinoBackend

            src, temporary = source_onnx(ctx, opts)
            if temporary:
                staged.append(src)
            tmpdir = Path(tempfile.mkdtemp(prefix=f"{modeldir.TMP_PREFIX}openvino.", dir=model_dir / EXPORTS_DIR))
            staged.append(tmpdir)
            try:
                ov.save_model(ov.convert_model(str(src)), str(tmpdir / "model.xml"), compress_to_fp16=False)
            except Exception as exc:
                raise ExportError(f"OpenVINO conversion failed: {exc}") from None
            backend = OpenVinoBackend(model_dir, ctx.card, file=tmpdir / "model.xml",
                                      threads=_threads())
            figures = verify(ctx, backend.infer, "openvino", exact=True, atol=opts["atol"], max_drop=0)
            backend.close()
            facts = {"opset": opts["opset"], "ir": "model.xml + model.bin", "weights": "fp32"}
            tmp, rel = tmpdir, f"{EXPORTS_DIR}/openvino"
            versions = _versions("torch", "onnx", "openvino")
        else:  # pragma: no cover - check_arguments rejects it
            raise ExportError(f"unknown format {fmt!r}")
        _install(model_dir, tmp, rel)
        staged = [s for s in staged if s != tmp]
        target = model_dir / rel
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) if target.is_dir() \
            else target.stat().st_size
        entry = {"file": f"{rel}/model.xml" if fmt == "openvino" else rel, "format": fmt, "precision": precision,
                 "backend": FORMATS[fmt].backend, "bytes": size, "created": modeldir.now_iso(),
                 "seconds": round(time.perf_counter() - t0, 1), "machine": platform.machine(),
                 **facts, "verification": figures, "versions": versions}
        modeldir.record(model_dir, "exports", entry, key=key)
        log(f"wrote {target} ({size / 1e6:.1f} MB) and recorded it in model.json exports[{key!r}]")
        return entry
    finally:
        for s in staged:
            shutil.rmtree(s, ignore_errors=True) if s.is_dir() else s.unlink(missing_ok=True)


def _threads() -> int:
    from asset.backends import default_threads

    return default_threads()
