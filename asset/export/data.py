"""Dataset images for export verification and calibration (no torch here): names kept for the export code.

The dataset items, batching and scoring live in `asset.scoring` (runtime code, such as the benchmark, must not
import this build-time package); the names below are that module's (`agreement` while tests/asset/test_backends.py
calls it as D.agreement).
"""

from __future__ import annotations

from asset.algorithm import load_image, load_mask
from asset.scoring import Item, agreement, first_split, open_model_dataset, split_items

__all__ = ["Item", "agreement", "first_split", "load_image", "load_mask", "open_model_dataset", "split_items"]
