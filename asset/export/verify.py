"""The one verification every export passes before it is written (no torch here).

An export's logits and predictions are compared with a reference run of the same images through the shared
`Algorithm` and scored by `asset.scoring` (the figures mean what they mean in `asset evaluate` and the benchmark).
The reference is PyTorch for onnx, onnx-int8 and openvino, and the fp32 ONNX export under ONNX Runtime for
TensorRT (built where torch is not installed). Everything is judged on `Prediction`s (`Algorithm.postprocess`):
the image score (`Prediction.score`, what AP ranks) and decision (`Prediction.defective`) are whatever the model's
decision rule makes of its output (the defect fraction, or a decision head's channel), never re-derived here.

Rules (the figures are recorded in model.json exports[key].verification, and shown when an export is refused):
- exact (fp32): max |logit difference| <= atol x max(1, max |reference logit|) and identical image decisions;
- otherwise (int8, fp16), on labelled images (the check set, `check_set`):
  - accuracy and dataset pixel IoU drop by <= max_drop (--max-accuracy-drop);
  - AP of the image score drops by <= max_ap_drop (default MAX_AP_DROP = 0.01, --max-ap-drop);
  - of the defective images the reference finds, at most max_lost_defects are missed by the export (default
    MAX_LOST_DEFECTS = 0, --max-lost-defects): a quantised model that loses a found defect is refused;
  on unlabelled (random) images: >= 1 - max_drop of the mask pixels equal;
  `same_decisions` adds identical image decisions to either.

The check set (`check_set`): a handful of validation images cannot show an INT8 model losing one defect in twenty,
so non-exact exports are judged on the validation images and, when they hold fewer than MIN_CHECK_DEFECTS
defective ones, the training images too (never test: it stays held out), every defective image first, up to the
export's --verify-images. What was used (splits, images, defective images, a warning when fewer than
MIN_CHECK_DEFECTS exist) is recorded as verification.check_set.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from asset.algorithm import Algorithm
from asset.export.formats import ExportError

Inputs = tuple  # (split | None, items, images, masks | None): dataset images of one split, or random images
MAX_AP_DROP = 0.01  # largest accepted AP drop of a non-exact export (--max-ap-drop)
MAX_LOST_DEFECTS = 0  # defective images the reference finds that a non-exact export may miss (--max-lost-defects)
MIN_CHECK_DEFECTS = 20  # defective images a check set should hold (fewer: the training split is added, then a warning)
CHECK_SPLITS = ("val", "train")


def gate_options(options: dict) -> dict:
    """compare()'s keyword arguments of the AP and lost-defect rules from export options (None = the default)."""
    ap = options.get("max_ap_drop")
    lost = options.get("max_lost_defects")
    return {"max_ap_drop": MAX_AP_DROP if ap is None else float(ap),
            "max_lost_defects": MAX_LOST_DEFECTS if lost is None else int(lost)}


def check_set(card: dict, data, limit: int, min_defective: int = MIN_CHECK_DEFECTS,
              log: Callable[[str], None] | None = None) -> tuple[Inputs, dict]:
    """(inputs for compare, description) of the images a non-exact export is judged on (module doc): validation
    images, plus the training ones when val has fewer than `min_defective` defective images; at most `limit`
    images: defective ones first (at least half of `limit`, or `min_defective` when that leaves a quarter of `limit`
    to OK images), then OK ones.
    The description is recorded as verification.check_set."""
    from asset import scoring
    from asset.algorithm import load_image, load_mask
    from asset.modeldir import ModelDirError

    if limit < 1:
        raise ExportError(f"the check set needs at least 1 image, --verify-images is {limit}")
    used, bad, good = [], [], []
    for split in CHECK_SPLITS:
        items = scoring.split_items(card, split, data)
        if not items:
            continue
        used.append(split)
        bad += [i for i in items if i.defective]
        good += [i for i in items if not i.defective]
        if len(bad) >= min_defective:
            break
    if not used:
        raise ModelDirError(f"the dataset has no images in {' or '.join(CHECK_SPLITS)} to check the export on")
    n_bad = min(len(bad), max(limit - len(good), (limit + 1) // 2, min(min_defective, limit - limit // 4)))
    n_good = min(len(good), limit - n_bad)
    items = bad[:n_bad] + good[:n_good]
    warning = None
    if n_bad < min_defective:
        why = (f"the dataset's {'+'.join(used)} holds only {len(bad)}" if n_bad == len(bad) else
               f"--verify-images {limit} leaves room for {n_bad}")
        warning = (f"the export is checked on {n_bad} defective images ({why}; {min_defective} wanted): its AP and "
                   "lost-defect rules rest on few defects")
        if log:
            log(f"warning: {warning}")
    split = "+".join(used)
    description = {"splits": used, "images": len(items), "defective_images": n_bad, "ok_images": n_good,
                   "min_defective": min_defective, "limit": limit, "warning": warning}
    images = [load_image(i.path) for i in items]
    masks = [load_mask(i.rle) for i in items]
    return (split, items, images, masks), description


def _defects(preds, ref_preds, items) -> dict:
    """How the export's decisions on the labelled-defective images compare with the reference's."""
    found = [k for k, it in enumerate(items) if it.defective and ref_preds[k].defective]
    lost = [items[k].id for k in found if not preds[k].defective]
    gained = [it.id for k, it in enumerate(items) if it.defective and preds[k].defective
              and not ref_preds[k].defective]
    ok_changed = [it.id for k, it in enumerate(items) if not it.defective
                  and preds[k].defective != ref_preds[k].defective]
    return {"defective_images": sum(bool(it.defective) for it in items), "found_by_reference": len(found),
            "found_by_export": sum(bool(it.defective and p.defective) for it, p in zip(items, preds)),
            "lost": lost, "gained": gained, "ok_decisions_changed": ok_changed}


def compare(infer: Callable[[np.ndarray], np.ndarray], reference: Callable[[np.ndarray], np.ndarray],
            algorithm: Algorithm, inputs: Inputs, *, exact: bool, atol: float, max_drop: float, what: str,
            reference_name: str, log: Callable[[str], None], same_decisions: bool = False,
            max_ap_drop: float | None = MAX_AP_DROP, max_lost_defects: int | None = MAX_LOST_DEFECTS,
            check: dict | None = None) -> dict:
    """Run `infer` and `reference` (NCHW float32 -> N x C x H x W network output) over `inputs` and apply the rules
    of the module doc (`max_ap_drop` / `max_lost_defects` None: that rule is not applied). `check` describes the
    inputs (check_set) and is recorded. Returns the figures; raises ExportError with them (and the rules missed)
    when the export fails."""
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
    if check is not None:
        figures["check_set"] = check
    text = (f"max |logit diff| {diff:.3g} (largest |logit| {scale:.3g}), decisions equal {agree['decisions_equal']}/"
            f"{n}, mask pixels equal {agree['mask_agreement']:.4%}")
    if labelled:
        defective = [bool(i.defective) for i in items]
        ours, theirs = scoring.score(preds, defective, masks), scoring.score(ref_preds, defective, masks)
        defects = _defects(preds, ref_preds, items)
        ap_change = None if ours["ap"] is None or theirs["ap"] is None else ours["ap"] - theirs["ap"]
        figures.update({"accuracy": {"reference": theirs["accuracy"], "export": ours["accuracy"]},
                        "pixel_iou": {"reference": theirs["pixel_iou"], "export": ours["pixel_iou"]},
                        "ap": {"reference": theirs["ap"], "export": ours["ap"]},
                        "accuracy_change": ours["accuracy"] - theirs["accuracy"],
                        "pixel_iou_change": ours["pixel_iou"] - theirs["pixel_iou"],
                        "ap_change": ap_change, "defects": defects})
        text += (f", accuracy {theirs['accuracy']:.4f} -> {ours['accuracy']:.4f}, pixel IoU "
                 f"{theirs['pixel_iou']:.4f} -> {ours['pixel_iou']:.4f}")
        if ap_change is not None:
            text += f", AP {theirs['ap']:.4f} -> {ours['ap']:.4f}"
        text += (f", defects found {defects['found_by_reference']} -> {defects['found_by_export']} of "
                 f"{defects['defective_images']}")
        if defects["lost"]:
            text += f" (lost: {', '.join(defects['lost'][:5])}{' ...' if len(defects['lost']) > 5 else ''})"
    text += f" on {figures['inputs']}"
    missed = []
    if exact:
        ok = diff <= atol * scale and agree["decisions_equal"] == n
        rule = f"needs max diff <= {atol:g} x max(1, |logit|) = {atol * scale:.3g} and identical decisions"
    elif labelled:
        ok = figures["accuracy_change"] >= -max_drop and figures["pixel_iou_change"] >= -max_drop
        rule = f"needs accuracy and pixel IoU to drop by <= {max_drop:g}"
        if not ok:
            missed.append(f"accuracy or pixel IoU dropped by more than {max_drop:g}")
        if max_ap_drop is not None:
            rule += f", AP to drop by <= {max_ap_drop:g} (--max-ap-drop)"
            if ap_change is not None and ap_change < -max_ap_drop:
                ok = False
                missed.append(f"AP dropped by {-ap_change:.4f} > {max_ap_drop:g}")
        if max_lost_defects is not None:
            rule += f", at most {max_lost_defects} lost defect(s) (--max-lost-defects)"
            if len(figures["defects"]["lost"]) > max_lost_defects:
                ok = False
                missed.append(f"it misses {len(figures['defects']['lost'])} defective image(s) that "
                              f"{reference_name} finds")
        figures["gate"] = {"max_accuracy_drop": max_drop, "max_ap_drop": max_ap_drop,
                           "max_lost_defects": max_lost_defects}
    else:
        ok = agree["mask_agreement"] >= 1 - max_drop
        rule = f"needs >= {1 - max_drop:.2%} equal mask pixels (no labelled images here)"
    if same_decisions and not exact:
        ok = ok and agree["decisions_equal"] == n
        rule += " and identical decisions"
    figures["passed"] = bool(ok)
    log(f"{what}: {text}")
    if not ok:
        why = f" ({'; '.join(missed)})" if missed else ""
        raise ExportError(f"{what} failed verification against {reference_name}{why}: {text}; {rule}. "
                          "Nothing was written")
    return figures
