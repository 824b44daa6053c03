"""Deterministic splits: validation carved from train, test carved where there is no official
one, and folder-wise folds.

Carving is stratified by (group, label) when images are independent (DAGM: a group is a class),
and moves whole groups, stratified by whether the group holds a defect, when a group is one
physical object (KolektorSDD). The same ids, fraction and seed always give the same split.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict


def _rng(seed: int, salt: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}:{salt}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def carve(
    items: list[dict],
    fraction: float,
    seed: int,
    group_is_unit: bool,
    salt: str,
) -> set[str]:
    """Pick about `fraction` of `items` (dicts with id, group, defective); return the picked ids.

    Every stratum keeps at least one unit on the side it is carved from, and gets at least one
    picked unit when it has two or more and the fraction is positive.
    """
    if fraction <= 0 or not items:
        return set()
    units: dict[str, list[dict]] = defaultdict(list)
    for item in items:
        units[item["group"] if group_is_unit else item["id"]].append(item)

    strata: dict[tuple, list[str]] = defaultdict(list)
    for key, members in units.items():
        defective = any(m["defective"] for m in members)
        stratum = (defective,) if group_is_unit else (members[0]["group"], defective)
        strata[stratum].append(key)

    picked: set[str] = set()
    for stratum in sorted(strata, key=repr):
        keys = sorted(strata[stratum])
        _rng(seed, f"{salt}:{stratum!r}").shuffle(keys)
        n = round(fraction * len(keys))
        if len(keys) >= 2:
            n = min(max(n, 1), len(keys) - 1)
        else:
            n = 0
        for key in keys[:n]:
            picked.update(m["id"] for m in units[key])
    return picked


def assign_folds(groups_with_defect: dict[str, bool], folds: int, seed: int) -> dict[str, int]:
    """Spread groups over `folds` folds, defective groups first, round robin after a seeded shuffle.

    Keeps the share of defective groups about equal in every fold (KolektorSDD's protocol is a
    3-fold cross-validation by folder).
    """
    if folds < 2:
        raise ValueError("folds must be at least 2")
    assignment: dict[str, int] = {}
    position = 0
    for defective in (True, False):
        names = sorted(g for g, d in groups_with_defect.items() if d == defective)
        _rng(seed, f"folds:{defective}").shuffle(names)
        for name in names:
            assignment[name] = position % folds
            position += 1
    return assignment
