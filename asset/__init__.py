"""The AI asset: train, evaluate (and later export, benchmark, serve) SMP defect segmenters.

`asset.algorithm` and `asset.modeldir` need no torch; `asset.models`, `asset.training` do.
"""

__version__ = "1.0.0"
