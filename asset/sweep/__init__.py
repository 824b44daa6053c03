"""`asset sweep`: train, evaluate and benchmark a grid of architecture x encoder models into one sweep directory.

    SWEEP_DIR/sweep.yaml                      the resolved sweep (grid, training settings, datasets)
    SWEEP_DIR/DATASET/ARCH--ENCODER/model/    the model directory (`asset train`), its benchmark in evaluations/
    SWEEP_DIR/DATASET/ARCH--ENCODER/result.json   done | failed (with the step and the reason), metrics, benchmark
    SWEEP_DIR/DATASET/ARCH--ENCODER/lock      held while a process works on that model (pid, host)

Resumable (a model with result.json is never trained again; an interrupted one resumes from its last checkpoint)
and shardable (`--shard i/n`: a fixed share of the grid, so n processes share one directory without overlap).
"""

from asset.sweep.grid import Job, SweepError, SweepSpec, load_spec, parse_shard, shard_jobs

__all__ = ["Job", "SweepError", "SweepSpec", "load_spec", "parse_shard", "shard_jobs"]
