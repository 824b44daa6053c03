"""The one verification every export passes before it is written (no torch here).

An export's logits and predictions are compared with a reference run of the same images through the shared
`Algorithm` and scored by `asset.scoring` (the figures mean what they mean in `asset evaluate` and the benchmark).
The reference is PyTorch for onnx, onnx-int8 and openvino, and the fp32 ONNX export under ONNX Runtime for
TensorRT (built where torch is not installed).

Rules (the figures are recorded in model.json exports[key].verification, and shown when an export is refused):
- exact (fp32): max |logit difference| <= atol x max(1, max |reference logit|) and identical image decisions;
- otherwise (int8, fp16), on labelled images: accuracy and dataset pixel IoU drop by <= max_drop;
  on unlabelled (random) images: >= 1 - max_drop of the mask pixels equal;
  `same_decisions` adds identical image decisions to either.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from asset.algorithm import Algorithm
from asset.export.formats import ExportError

Inputs = tuple  # (split | None, items, images, masks | None): dataset images of one split, or random images


def compare(infer: Callable[[np.ndarray], np.ndarray], reference: Callable[[np.ndarray], np.ndarray],
            algorithm: Algorithm, inputs: Inputs, *, exact: bool, atol: float, max_drop: float, what: str,
            reference_name: str, log: Callable[[str], None], same_decisions: bool = False) -> dict:
    """Run `infer` and `reference` (NCHW float32 -> N1HW logits) over `inputs` and apply the rules of the module
    doc. Returns the figures; raises ExportError with them (and the rule missed) when the export fails."""
    from asset import scoring

    split, items, images, masks = inputs
    if not images:
        raise ExportError(f"{what}: no images to verify on")
    ref_logits, metas = scoring.run_logits(reference, algorithm, images)
    try:
        logits, _ = scoring.run_logits(infer, algorithm, images)
    except Exception as exc:  # noqa: BLE001 - any failure of the exported model is the export's failure
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ExportError(f"{what}: the exported model fails to run ({first}); nothing was written") from None
    shapes = [(a.shape, b.shape) for a, b in zip(logits, ref_logits) if a.shape != b.shape]
    if shapes:
        raise ExportError(f"{what}: the exported model returns logits of shape {shapes[0][0]} where "
                          f"{reference_name} returns {shapes[0][1]}; nothing was written")
    ref_preds = scoring.predictions_from_logits(algorithm, ref_logits, metas)
    preds = scoring.predictions_from_logits(algorithm, logits, metas)
    diff = max(float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(logits, ref_logits))
    scale = max(1.0, max(float(np.max(np.abs(b))) for b in ref_logits))
    agree = scoring.agreement(preds, ref_preds)
    n = len(images)
    labelled = split is not None and masks is not None
    figures = {"reference": reference_name, "split": split,
               "inputs": f"{n} {split} images" if labelled else f"{n} random images (no dataset here)",
               "images": n, "max_abs_diff": diff, "max_abs_logit": scale, "tolerance": atol * scale if exact else None,
               "decisions_equal": agree["decisions_equal"], "mask_agreement": round(agree["mask_agreement"], 6)}
    text = (f"max |logit diff| {diff:.3g} (largest |logit| {scale:.3g}), decisions equal {agree['decisions_equal']}/"
            f"{n}, mask pixels equal {agree['mask_agreement']:.4%}")
    if labelled:
        defective = [bool(i.defective) for i in items]
        ours, theirs = scoring.score(preds, defective, masks), scoring.score(ref_preds, defective, masks)
        figures.update({"accuracy": {"reference": theirs["accuracy"], "export": ours["accuracy"]},
                        "pixel_iou": {"reference": theirs["pixel_iou"], "export": ours["pixel_iou"]},
                        "accuracy_change": ours["accuracy"] - theirs["accuracy"],
                        "pixel_iou_change": ours["pixel_iou"] - theirs["pixel_iou"]})
        text += (f", accuracy {theirs['accuracy']:.4f} -> {ours['accuracy']:.4f}, pixel IoU "
                 f"{theirs['pixel_iou']:.4f} -> {ours['pixel_iou']:.4f}")
    text += f" on {figures['inputs']}"
    if exact:
        ok = diff <= atol * scale and agree["decisions_equal"] == n
        rule = f"needs max diff <= {atol:g} x max(1, |logit|) = {atol * scale:.3g} and identical decisions"
    elif labelled:
        ok = figures["accuracy_change"] >= -max_drop and figures["pixel_iou_change"] >= -max_drop
        rule = f"needs accuracy and pixel IoU to drop by <= {max_drop:g}"
    else:
        ok = agree["mask_agreement"] >= 1 - max_drop
        rule = f"needs >= {1 - max_drop:.2%} equal mask pixels (no labelled images here)"
    if same_decisions and not exact:
        ok = ok and agree["decisions_equal"] == n
        rule += " and identical decisions"
    figures["passed"] = bool(ok)
    log(f"{what}: {text}")
    if not ok:
        raise ExportError(f"{what} failed verification against {reference_name}: {text}; {rule}. "
                          "Nothing was written")
    return figures
