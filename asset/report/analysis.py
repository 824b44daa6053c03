"""The numbers of the report, as plain functions over (name, ms, accuracy) points: ranking, Pareto front,
recommendation under a latency budget, Spearman rank correlation, median and mean."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    name: str
    ms: float
    acc: float  # test accuracy in [0, 1]
    iou: float | None = None


def pareto_front(points: list[Point]) -> list[Point]:
    """Models no other model beats on both latency (lower) and accuracy (higher), fastest first. A model is
    dominated when another is at least as fast and at least as accurate, and strictly better in one."""
    front = [p for p in points
             if not any(q.ms <= p.ms and q.acc >= p.acc and (q.ms < p.ms or q.acc > p.acc) for q in points)]
    return sorted(front, key=lambda p: (p.ms, -p.acc, p.name))


def _best_first(points: list[Point]) -> list[Point]:
    """Most accurate first; ties: higher IoU, then faster, then by name."""
    return sorted(points, key=lambda p: (-p.acc, -(p.iou if p.iou is not None else -1.0), p.ms, p.name))


def recommend(points: list[Point], budget_ms: float) -> dict:
    """The most accurate model within the budget, the runner-up (what choosing it instead costs or saves), and
    the most accurate model over the budget (what meeting the budget costs in accuracy)."""
    within = _best_first([p for p in points if p.ms <= budget_ms])
    over = _best_first([p for p in points if p.ms > budget_ms])
    best = within[0] if within else None
    runner = within[1] if len(within) > 1 else None
    above = over[0] if over and (best is None or over[0].acc > best.acc) else None
    return {"budget_ms": budget_ms, "best": best, "runner_up": runner, "better_over_budget": above,
            "fastest": min(points, key=lambda p: (p.ms, p.name)) if points and best is None else None}


def average_ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing the mean of their positions."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rho (Pearson correlation of the average ranks); None below 3 pairs or with a constant side."""
    if len(xs) != len(ys) or len(xs) < 3:
        return None
    rx, ry = average_ranks(xs), average_ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / (sxx * syy) ** 0.5


def summary(values: list[float | None]) -> dict:
    vals = [v for v in values if v is not None]
    return {"n": len(vals), "median": statistics.median(vals) if vals else None,
            "mean": statistics.fmean(vals) if vals else None}
