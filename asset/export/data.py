"""Dataset images for export verification and calibration (no torch here): names kept for the export code.

The dataset items, batching and scoring live in `asset.scoring` (runtime code, such as the benchmark, must not
import this build-time package); the names below are that module's.
"""

from __future__ import annotations

from asset.algorithm import load_image, load_mask
from asset.scoring import Item, agreement, first_split, open_model_dataset, run_logits, split_items
from asset.scoring import network_batches as batches  # kept for callers not yet switched to asset.scoring
from asset.scoring import predictions_from_logits as postprocess_each


def score(preds, items, masks=None) -> dict:
    """asset.scoring.score over items (their masks decoded when not given); kept for callers not yet switched."""
    from asset import scoring

    return scoring.score(preds, [it.defective for it in items],
                         masks if masks is not None else [load_mask(it.rle) for it in items])


__all__ = ["Item", "agreement", "batches", "first_split", "load_image", "load_mask", "open_model_dataset",
           "postprocess_each", "run_logits", "score", "split_items"]
