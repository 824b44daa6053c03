"""`asset cv`: cross-validation by object of a training recipe (asset/cv.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
Every image of --data (whatever its converted split) goes to one of --folds folds by its object (the sample's
`group`, e.g. KolektorSDD's kosNN folder: an object's parts are never split). For each fold and seed a model is
trained on the other folds' objects (--val-fraction of those objects as val) and scored on the fold's parts.

Output (--out DIR): cv.md and cv.json (per fold and seed, mean +- sd over folds x seeds, and the pooled out-of-fold
predictions per seed, mean +- sd over seeds), for each decision rule the models have (a model with a decision head
is also scored by the defect fraction) and both threshold calibrations (train+val: as asset train does; oof: on
the other folds' out-of-fold predictions). runs/fold<k>-seed<s>/model is each model directory.

Resumable: run the same command again; finished models are reused, an interrupted one resumes from its last
epoch. A different dataset, fold count, seeds or config in the same --out is refused.

Example: asset cv --config asset/configs/kolektorsdd.yaml --data data/kolektorsdd/latest --folds 3 --seeds 2 \\
           --out runs/cv-kolektorsdd --set trainer.max_time=null
"""


def register(sub) -> None:
    p = sub.add_parser("cv", help="cross-validate a recipe by object (folds x seeds)",
                       description="Cross-validate a training recipe on a dataset, folds split by object.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, metavar="DATASET_DIR", help="dataset version directory")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="cross-validation directory (resumable)")
    p.add_argument("--config", metavar="FILE", help="training recipe (YAML, the keys of `asset train --help`)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override a config key (repeatable), e.g. --set trainer.max_epochs=6")
    p.add_argument("--folds", type=int, default=3, help="number of folds (default 3, as KolektorSDD's protocol)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per fold: seed, seed+1, ... (default 2)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of each fold's training objects kept as val (default 0.2)")
    p.add_argument("--calibration", choices=("train+val", "oof"), default="train+val",
                   help="the headline threshold calibration (both are always reported)")
    p.add_argument("--only", metavar="FOLD:SEED", action="append", default=None,
                   help="run only these fold:seed models now (repeatable; e.g. to spread the runs over machines); "
                        "the summary covers what is done")
    p.add_argument("--no-progress", action="store_true", help="no progress bars while training")
    p.set_defaults(func=run)


def _only(values) -> set[tuple[int, int]] | None:
    from asset.cv import CVError

    if not values:
        return None
    out = set()
    for v in values:
        fold, _, seed = v.partition(":")
        if not (fold.isdigit() and seed.isdigit()):
            raise CVError(f"--only takes FOLD:SEED (e.g. 0:0), got {v!r}")
        out.add((int(fold), int(seed)))
    return out


def run(args: argparse.Namespace) -> int:
    from asset.config import load_config
    from asset.cv import markdown, run_cv

    flags = {"trainer.enable_progress_bar": False if args.no_progress else None}
    cfg = load_config(args.config, args.overrides, flags)
    results = run_cv(cfg, args.data, args.out, folds=args.folds, seeds=args.seeds, val_fraction=args.val_fraction,
                     calibration=args.calibration, only=_only(args.only))
    print(markdown(results))
    print(args.out / "cv.md")
    return 0
