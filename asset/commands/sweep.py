"""`asset sweep`: train, evaluate and benchmark every valid architecture x encoder combination."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
Sweep file (YAML, e.g. asset/configs/sweeps/demo.yaml):
  archs: [unet, linknet]                  # the grid (--archs / --encoders replace these)
  encoders: [mobilenet_v2, resnet18]
  train: {trainer: {max_epochs: 10}}      # asset train's config keys, shared by every model
  datasets:                               # per dataset name (dataset.json "name")
    kolektorsdd: {train: {data: {size: [512, 256]}}, test_data: data/kolektorsdd2/latest}
  export: [onnx]                          # formats exported after training
  benchmark: {backends: [pytorch], batch: 1, size: null, device: sweep-host, min_seconds: 1.0}

Layout: SWEEP_DIR/sweep.yaml, SWEEP_DIR/DATASET/ARCH--ENCODER/{model/,result.json,lock}.
A model with result.json is never trained again (--retry-failed retries the failed ones); an interrupted one resumes
from model/checkpoints/last.ckpt. --shard i/n (0 <= i < n) takes grid entries k with k mod n == i, so n processes
or machines can share one sweep directory. Invalid combinations are listed as skipped with the reason.

Cluster: --slurm N --slurm-script FILE writes a SLURM job-array script (task i runs --shard i/N; --slurm-cpus,
--slurm-gres, --slurm-time size each task); submit it with sbatch, and again after a cancelled or failed task: done
models are skipped, interrupted ones resume. Dry run of one task: SLURM_ARRAY_TASK_ID=0 SLURM_ARRAY_TASK_COUNT=N bash
FILE --dry-run. One large model on several nodes: asset train --devices 4 --num-nodes 2 --strategy ddp under srun
(sbatch --ntasks-per-node=4) or torchrun; see docs/scaling-out.md.
"""


def register(sub) -> None:
    p = sub.add_parser("sweep", help="train, evaluate and benchmark a grid of models (resumable, shardable)",
                       description="Train, evaluate (val, test, optional cross-dataset test) and benchmark every "
                       "valid arch x encoder combination into one sweep directory.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", action="append", default=[], metavar="DATASET_DIR",
                   help="dataset version directory (repeatable: one sweep over several datasets)")
    p.add_argument("--out", type=Path, metavar="SWEEP_DIR", help="sweep directory (created or continued)")
    p.add_argument("--archs", help="comma-separated architectures, e.g. unet,unetplusplus,linknet,pan")
    p.add_argument("--encoders", help="comma-separated encoders, e.g. mobilenet_v2,resnet34,efficientnet-b4")
    p.add_argument("--config", metavar="FILE", help="sweep file (YAML, see below)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="training config override for every model, e.g. --set trainer.max_epochs=5 (repeatable)")
    p.add_argument("--test-data", metavar="DATASET_DIR", help="also evaluate on this dataset's test split "
                   "(cross-dataset protocol: the report's test columns use it)")
    p.add_argument("--shard", metavar="i/n", help="work on share i of n of the grid (0 <= i < n)")
    p.add_argument("--retry-failed", action="store_true", help="run the models recorded as failed again")
    p.add_argument("--dry-run", action="store_true", help="print what this shard would run, train nothing")
    p.add_argument("--status", metavar="SWEEP_DIR", type=Path, help="show done / running / failed / to do and exit")
    p.add_argument("--slurm", type=int, metavar="N", help="write a SLURM job-array script of N tasks and exit")
    p.add_argument("--slurm-script", type=Path, metavar="FILE", help="where --slurm writes (default SWEEP_DIR/sweep.sbatch)")
    p.add_argument("--slurm-time", default="24:00:00", help="time limit per task (default 24:00:00)")
    p.add_argument("--slurm-gres", default="gpu:1", help="generic resources per task (default gpu:1; '' for none)")
    p.add_argument("--slurm-cpus", type=int, default=8, metavar="N", help="CPUs per task (default 8)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from asset.sweep.grid import SweepError, load_spec, parse_shard

    if args.status:
        return _status(args.status)
    if not args.data or args.out is None:
        raise SweepError("give --data DATASET_DIR and --out SWEEP_DIR (or --status SWEEP_DIR)")
    shard = parse_shard(args.shard)
    spec = load_spec(args.config, args.archs, args.encoders, args.overrides)
    if args.slurm is not None:
        return _slurm(args)
    from asset.sweep.run import run_sweep

    states = run_sweep(spec, args.data, args.out, shard, test_data=args.test_data, retry_failed=args.retry_failed,
                       dry_run=args.dry_run)
    counts = {s: list(states.values()).count(s) for s in sorted(set(states.values()))}
    print(f"{args.out}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 1 if "failed" in counts and not args.dry_run else 0


def _slurm(args) -> int:
    from asset.sweep.grid import SweepError
    from asset.sweep.slurm import slurm_script, write_slurm_script

    if args.shard:
        raise SweepError("--slurm writes the script that assigns the shards: leave --shard out")
    sweep_args = [a for d in args.data for a in ("--data", str(Path(d).resolve()))]
    sweep_args += ["--out", str(args.out.resolve())]
    for flag, value in (("--archs", args.archs), ("--encoders", args.encoders), ("--test-data", args.test_data)):
        if value:
            sweep_args += [flag, str(Path(value).resolve()) if flag == "--test-data" else value]
    if args.config:
        sweep_args += ["--config", str(Path(args.config).resolve())]
    for o in args.overrides:
        sweep_args += ["--set", o]
    script = args.slurm_script or args.out / "sweep.sbatch"
    args.out.mkdir(parents=True, exist_ok=True)  # where SLURM opens each task's output file (#SBATCH --output)
    try:
        text = slurm_script(args.slurm, sweep_args, args.out.resolve(), script, args.slurm_time,
                            cpus=args.slurm_cpus, gres=args.slurm_gres or None)
    except ValueError as exc:
        raise SweepError(str(exc)) from None
    print(write_slurm_script(script, text))
    return 0


def _status(sweep_dir: Path) -> int:
    from asset.sweep.run import sweep_status

    rows, skipped = sweep_status(sweep_dir)
    order = ("done", "running", "interrupted", "to do", "failed", "corrupt")
    for key, state, detail in sorted(rows, key=lambda r: (order.index(r[1]), r[0])):
        print(f"{state:<12} {key}{'  (' + detail + ')' if detail else ''}")
    for job, why in skipped:
        print(f"{'skipped':<12} {job.key}  ({why})")
    counts = {s: sum(1 for r in rows if r[1] == s) for s in order}
    print(", ".join(f"{n} {s}" for s, n in counts.items() if n) + (f", {len(skipped)} skipped" if skipped else ""))
    return 0
