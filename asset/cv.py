"""Cross-validation by object: `asset cv --config F --data D --folds 3 --seeds 2 --out DIR`.

Recipes are judged on parts of objects they never saw, so they are chosen the same way: every image of the dataset
(whatever its converted split) goes to one of K folds by its `group` (the object: KolektorSDD's kosNN folder,
never split between folds, its parts being near-duplicates), defective objects spread first
(`datatools.splits.assign_folds`). For fold k and seed s a model is trained on the other folds' objects (a share of
those objects carved off as val, by object) and scored on fold k's images. Every image is thus predicted once per
seed by a model that never saw its object: the out-of-fold predictions, pooled per seed.

DIR/
  cv.json, cv.md                       the results (per fold and seed, mean +- sd, pooled per seed)
  folds/<name>-fold<k>/<version>/      fold k's dataset (dataset.json; image folders are links to the original)
  runs/fold<k>-seed<s>/model/          each model directory (asset train), resumed or skipped when run again
  runs/fold<k>-seed<s>/scores.json     every image's scores under each decision rule (what cv.json is made from)

Decision rules: a model with a decision head is scored by the head and by the defect-pixel fraction (channel 0 of
the same output), so one run compares both. Thresholds, per rule: "train+val" (calibrated as `asset train` does,
on the model's own training objects) and "oof" (out-of-fold: calibrated on the pooled test predictions of the other
folds, same seed, i.e. on objects this model's threshold never saw either). `--calibration` picks the headline.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from asset import files, modeldir
from asset.errors import AssetError

CV_SCHEMA = "asset-cv/1"
CALIBRATIONS = ("train+val", "oof")
METRICS = ("accuracy", "ap", "auroc", "pixel_iou", "found", "false_alarms")


class CVError(AssetError, ValueError):
    """A cross-validation that cannot run (too few objects, a bad option); says what to change."""


def _log(msg: str) -> None:
    print(f"[cv {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- folds
def fold_of_groups(samples: list[dict], folds: int, seed: int = 0) -> dict[str, int]:
    """Object (group) -> fold, defective objects spread first. Refuses folds without a defective object."""
    from datatools.splits import assign_folds

    if folds < 2:
        raise CVError(f"--folds must be at least 2, got {folds}")
    groups: dict[str, bool] = {}
    for s in samples:
        groups[s["group"]] = groups.get(s["group"], False) or bool(s["defective"])
    defective_groups = sum(groups.values())
    if defective_groups < folds:
        raise CVError(f"{defective_groups} object(s) with a defect for {folds} folds: every fold needs one; "
                      "use fewer --folds")
    if all(s["defective"] for s in samples):
        raise CVError("no OK image: AP and false alarms need OK parts")
    return assign_folds(groups, folds, seed)


def fold_document(doc: dict, fold: int, folds: int, assignment: dict[str, int], val_fraction: float,
                  seed: int) -> dict:
    """Fold `fold`'s dataset.json: its objects are test, the others train, `val_fraction` of those val (by
    object, stratified by defect), with a content version like any conversion's."""
    from datatools.convert import content_version, split_counts
    from datatools.splits import carve

    samples = [dict(s) for s in doc["samples"]]
    rest = [s for s in samples if assignment[s["group"]] != fold]
    val = carve(rest, val_fraction, seed, group_is_unit=True, salt=f"cv-val:{fold}")
    for s in samples:
        s["split"] = "test" if assignment[s["group"]] == fold else "val" if s["id"] in val else "train"
    out = {k: v for k, v in doc.items() if k not in ("version", "samples", "splits")}
    out["name"] = f"{doc['name']}-fold{fold}"
    out["source"] = {**doc["source"], "cross_validation": {"of": f"{doc['name']}/{doc['version']}", "fold": fold,
                                                           "folds": folds, "val_fraction": val_fraction,
                                                           "seed": seed}}
    out["samples"] = samples
    out["splits"] = split_counts(samples)
    out["version"] = content_version(out)
    return out


def write_fold_dataset(root: Path, version_dir: Path, fold_doc: dict) -> Path:
    """ROOT/<name>/<version>/dataset.json with links to the original image folders (no image is copied).
    Written to a temporary folder and renamed into place; an existing complete one is reused."""
    target = root / fold_doc["name"] / fold_doc["version"]
    if (target / "dataset.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{os.getpid()}-{fold_doc['version']}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for top in sorted({Path(s["image"]).parts[0] for s in fold_doc["samples"]}):
        os.symlink(Path(version_dir).resolve() / top, tmp / top)
    files.write_json_atomic(tmp / "dataset.json", fold_doc)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished the same folder first: it is identical (content version)
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------- scoring one model
def score_model(model_dir: Path, data_dir: Path, batch_size: int) -> dict:
    """Every image of the fold dataset scored by the model, under each decision rule it can use:
    {"rules": [...], "images": [{id, split, defective, inter, union, defect_fraction, by_rule: {rule: {value,
    score}}}]}."""
    from asset import scoring
    from asset.algorithm import load_image, load_mask
    from asset.evaluation import torch_runner
    from asset.models.factory import load_network
    from asset.scoring import dataset_items
    from asset.training.data import open_dataset
    net, card = load_network(model_dir)
    from asset.algorithm import Algorithm

    algorithm = Algorithm.from_card(card)
    rules = ["fraction"] + (["head"] if algorithm.decision == "head" else [])
    by_rule = {r: algorithm.with_decision(r) for r in rules}
    runner = torch_runner(net)
    version_dir, doc = open_dataset(data_dir)
    out = []
    for split in ("train", "val", "test"):
        items = dataset_items(version_dir, doc, split)
        for part in scoring._groups(algorithm, ((it.height, it.width) for it in items), batch_size):
            x, metas = algorithm.preprocess([load_image(items[i].path) for i in part])
            logits = runner(x)
            preds = {r: a.postprocess(logits, metas) for r, a in by_rule.items()}
            for k, i in enumerate(part):
                it = items[i]
                s = scoring.image_score(preds["fraction"][k], it.defective, load_mask(it.rle))
                out.append({"id": it.id, "split": split, "defective": it.defective, "inter": s.inter,
                            "union": s.union, "defect_fraction": s.fraction,
                            "by_rule": {r: {"value": preds[r][k].value, "score": preds[r][k].score} for r in rules}})
    return {"rules": rules, "margin": (card.get("thresholds", {}).get("image_calibration") or {}).get("margin",
                                                                                                       "linear"),
            "pixels": max(s["height"] * s["width"] for s in doc["samples"]), "images": out}


def threshold_on(rows: list[dict], rule: str, margin: str, pixels: int) -> float:
    """The image threshold `asset train` would calibrate on these images (best accuracy, the margin rule)."""
    from asset.algorithm import calibrate_image_threshold

    margin = "linear" if rule == "head" else margin
    value, _ = calibrate_image_threshold([r["by_rule"][rule]["value"] for r in rows], [r["defective"] for r in rows],
                                         min_fraction=1.0 / pixels if margin == "geometric" else None)
    return value


def figures(rows: list[dict], rule: str, threshold: float) -> dict:
    """accuracy, AP, AUROC, pooled pixel IoU, defects found and false alarms of scored images at a threshold."""

    return {**decided(rows, rule, [threshold] * len(rows)), "threshold": threshold}


def decided(rows: list[dict], rule: str, thresholds: list[float]) -> dict:
    """The figures of scored images, each decided at its own threshold (pooled folds keep their fold's)."""
    from asset import scoring

    scores = [scoring.ImageScore(r["defective"], r["defect_fraction"], r["by_rule"][rule]["score"],
                                 r["by_rule"][rule]["value"] >= t, r["inter"], r["union"], 0,
                                 r["by_rule"][rule]["value"]) for r, t in zip(rows, thresholds)]
    m = scoring.metrics(scores)
    cm = m["confusion_matrix"]
    return {"images": m["images"], "defective": m["defective_images"], "accuracy": m["accuracy"], "ap": m["ap"],
            "auroc": m["auroc"], "pixel_iou": m["pixel_iou"], "found": cm["tp"], "false_alarms": cm["fp"]}


# ----------------------------------------------------------------------------- the run
def run_cv(cfg: dict, data: str | os.PathLike, out: str | os.PathLike, folds: int = 3, seeds: int = 2,
           val_fraction: float = 0.2, calibration: str = "train+val", only: set[tuple[int, int]] | None = None
           ) -> dict:
    """Train (or resume, or reuse) every fold x seed model, score, write cv.json + cv.md; returns cv.json."""
    from asset.training.data import open_dataset
    from asset.training.train import train

    if calibration not in CALIBRATIONS:
        raise CVError(f"--calibration must be one of {list(CALIBRATIONS)}, got {calibration!r}")
    if seeds < 1:
        raise CVError(f"--seeds must be at least 1, got {seeds}")
    if not 0 < val_fraction < 1:
        raise CVError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    out = Path(out)
    version_dir, doc = open_dataset(data, check=True)
    assignment = fold_of_groups(doc["samples"], folds)
    out.mkdir(parents=True, exist_ok=True)
    base_seed = int(cfg["seed"])
    plan = {"schema": CV_SCHEMA, "dataset": {"name": doc["name"], "version": doc["version"], "path": str(version_dir)},
            "folds": folds, "seeds": [base_seed + i for i in range(seeds)], "val_fraction": val_fraction,
            "objects": {g: k for g, k in sorted(assignment.items())}, "config": cfg}
    _check_same_plan(out, plan)
    files.write_json_atomic(out / "plan.json", plan)
    runs: dict[tuple[int, int], dict] = {}
    for fold in range(folds):
        fdoc = fold_document(doc, fold, folds, assignment, val_fraction, base_seed)
        fdir = write_fold_dataset(out / "folds", version_dir, fdoc)
        for seed in plan["seeds"]:
            rdir = out / "runs" / f"fold{fold}-seed{seed}"
            if only is not None and (fold, seed) not in only:
                if (rdir / "scores.json").is_file():  # done earlier: part of the summary
                    runs[(fold, seed)] = json.loads((rdir / "scores.json").read_text())
                continue
            runs[(fold, seed)] = _run_one(cfg, fdir, rdir, seed, fold, folds, train)
    results = summarise(plan, runs, calibration)
    files.write_json_atomic(out / "cv.json", results)
    files.write_text_atomic(out / "cv.md", markdown(results))
    return results


def _check_same_plan(out: Path, plan: dict) -> None:
    """A resumed cross-validation must be the same one: same data, folds, seeds and config."""
    path = out / "plan.json"
    if not path.is_file():
        return
    from asset.config import ConfigError, deep_merge, load_default

    old = json.loads(path.read_text())
    try:  # keys added to the defaults since (a newer version) take their default values
        old["config"] = deep_merge(load_default(), old.get("config") or {})
    except ConfigError:
        pass  # a key since removed: the comparison below says the configs differ
    for key in ("dataset", "folds", "seeds", "val_fraction", "config"):
        if old.get(key) != json.loads(json.dumps(plan[key])):
            raise CVError(f"{out} holds a cross-validation with another {key} ({path}); resume it with the same "
                          "options, or use another --out")


def _run_one(cfg: dict, fold_dir: Path, run_dir: Path, seed: int, fold: int, folds: int, train) -> dict:
    import copy

    from asset.config import deep_merge, load_default
    from asset.training.train import load_run_config

    scores_path = run_dir / "scores.json"
    if scores_path.is_file():
        return json.loads(scores_path.read_text())
    model = run_dir / "model"
    t0 = time.time()
    if (model / modeldir.CARD).is_file():
        modeldir.verify(model)
    elif (model / "checkpoints" / "last.ckpt").is_file():
        _log(f"fold {fold + 1}/{folds}, seed {seed}: resuming {model}")
        train(deep_merge(load_default(), load_run_config(model)), model, resume=True)
    else:
        _log(f"fold {fold + 1}/{folds}, seed {seed}: training -> {model}")
        c = copy.deepcopy(cfg)
        c["seed"] = seed
        c["data"]["path"] = str(fold_dir)
        train(c, model, overwrite=True)
    card = modeldir.verify(model)
    scored = score_model(model, fold_dir, int(cfg["data"]["eval_batch_size"]))
    scored.update({"fold": fold, "seed": seed, "train_seconds": (card.get("training") or {}).get(
        "seconds_this_session"), "epochs": (card.get("training") or {}).get("epochs"), "wall_seconds":
        round(time.time() - t0, 1)})
    files.write_json_atomic(scores_path, scored)
    return scored


def _mean_sd(values: list) -> dict:
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v)}


def summarise(plan: dict, runs: dict[tuple[int, int], dict], calibration: str) -> dict:
    """Per fold x seed figures under each rule and calibration, their mean +- sd, and the pooled out-of-fold
    figures per seed (mean +- sd over seeds)."""
    if not runs:
        raise CVError("no fold was run")
    rules = sorted({r for run in runs.values() for r in run["rules"]}, key=["fraction", "head"].index)
    per_run, pooled = [], []
    for rule in rules:
        for seed in sorted({s for _, s in runs}):
            seed_runs = {f: r for (f, s), r in runs.items() if s == seed and rule in r["rules"]}
            oof_rows = {f: [x for x in r["images"] if x["split"] == "test"] for f, r in seed_runs.items()}
            pooled_by_cal: dict[str, list] = {c: [] for c in CALIBRATIONS}
            for fold, run in sorted(seed_runs.items()):
                fit = [x for x in run["images"] if x["split"] in ("train", "val")]
                others = [x for f, rows in oof_rows.items() if f != fold for x in rows]
                thresholds = {"train+val": threshold_on(fit, rule, run["margin"], run["pixels"])}
                if others:
                    thresholds["oof"] = threshold_on(others, rule, run["margin"], run["pixels"])
                for cal, t in thresholds.items():
                    per_run.append({"rule": rule, "calibration": cal, "fold": fold, "seed": seed,
                                    **figures(oof_rows[fold], rule, t)})
                    pooled_by_cal[cal] += [(x, t) for x in oof_rows[fold]]
            for cal, pairs in pooled_by_cal.items():
                if pairs and len(seed_runs) == plan["folds"]:
                    rows, thresholds = zip(*pairs)
                    pooled.append({"rule": rule, "calibration": cal, "seed": seed,
                                   **decided(list(rows), rule, list(thresholds))})
    summary = []
    for rule in rules:
        for cal in CALIBRATIONS:
            folds_rows = [r for r in per_run if r["rule"] == rule and r["calibration"] == cal]
            pool_rows = [r for r in pooled if r["rule"] == rule and r["calibration"] == cal]
            if not folds_rows:
                continue
            summary.append({"rule": rule, "calibration": cal,
                            "per_fold": {k: _mean_sd([r[k] for r in folds_rows]) for k in METRICS},
                            "pooled": {k: _mean_sd([r[k] for r in pool_rows]) for k in METRICS + ("images",
                                                                                                   "defective")}})
    train_s = [r.get("train_seconds") for r in runs.values()]
    return {"schema": CV_SCHEMA, "created": modeldir.now_iso(), "headline_calibration": calibration,
            "dataset": plan["dataset"], "folds": plan["folds"], "seeds": plan["seeds"],
            "runs_done": len(runs), "runs_planned": plan["folds"] * len(plan["seeds"]),
            "train_cpu_minutes_per_run": _mean_sd([s / 60 for s in train_s if s is not None]),
            "summary": summary, "per_run": per_run, "pooled_per_seed": pooled}


def markdown(results: dict) -> str:
    """cv.md: the summary table (mean +- sd over folds x seeds, and over seeds of the pooled predictions)."""
    def ms(d, digits=3):
        if d["mean"] is None:
            return "n/a"
        return f"{d['mean']:.{digits}f} ± {d['sd']:.{digits}f}"

    ds = results["dataset"]
    lines = [f"# Cross-validation by object: {ds['name']}/{ds['version']}", "",
             f"{results['folds']} folds x seeds {results['seeds']} ({results['runs_done']} of "
             f"{results['runs_planned']} models); training {ms(results['train_cpu_minutes_per_run'], 1)} min per "
             f"model. Headline calibration: {results['headline_calibration']}.", "",
             "| rule | threshold | over | accuracy | AP | AUROC | pixel IoU | found | false alarms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in results["summary"]:
        for over, key in (("folds x seeds", "per_fold"), ("pooled, per seed", "pooled")):
            f = row[key]
            if f["accuracy"]["n"] == 0:
                continue
            found = ms(f["found"], 1)
            if key == "pooled" and f.get("defective", {}).get("mean") is not None:
                found += f" of {f['defective']['mean']:.0f}"
            lines.append(f"| {row['rule']} | {row['calibration']} | {over} | {ms(f['accuracy'])} | {ms(f['ap'])} | "
                         f"{ms(f['auroc'])} | {ms(f['pixel_iou'])} | {found} | {ms(f['false_alarms'], 1)} |")
    lines += ["", "Per fold and seed:", "", "| rule | threshold | fold | seed | images (defective) | accuracy | AP | "
              "pixel IoU | found | false alarms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["per_run"]:
        ap = "n/a" if r["ap"] is None else f"{r['ap']:.3f}"
        lines.append(f"| {r['rule']} | {r['calibration']} | {r['fold']} | {r['seed']} | {r['images']} "
                     f"({r['defective']}) | {r['accuracy']:.3f} | {ap} | {r['pixel_iou']:.3f} | {r['found']} | "
                     f"{r['false_alarms']} |")
    return "\n".join(lines) + "\n"


__all__ = ["CVError", "decided", "figures", "fold_document", "fold_of_groups", "markdown", "run_cv", "score_model",
           "summarise", "threshold_on", "write_fold_dataset"]
