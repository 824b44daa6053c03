"""`asset report`: the sweep's tables (top 5 by test accuracy, top 5 by inference time), accuracy summary, per-device
accuracy-vs-latency Pareto fronts, a recommendation under a latency budget and the rank correlation of model speed
between devices; Markdown and one self-contained HTML page.

collect.py reads the sweep directory and the benchmark JSONs (and says what it left out), analysis.py computes,
render.py writes. No plotting library: the plots are drawn with Pillow.
"""

from asset.report.collect import ReportError

__all__ = ["ReportError"]
