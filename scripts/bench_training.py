#!/usr/bin/env python3
"""Training throughput: the asset's Lightning path vs a plain PyTorch loop, same model, batch and data, same run.

Both paths train the same SMP network (fresh copies of one initial state) with the same loss (IoU) and
optimiser (AdamW) on the same in-memory batches. Warm-up steps are not timed; the two paths alternate
over `--rounds` so that machine noise hits both. Prints one Markdown table row (| what | ours | baseline |
ratio |) and writes JSON to --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="unet")
    ap.add_argument("--encoder", default="mobilenet_v2")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=12, help="timed steps per round and path")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="alternating plain/Lightning pairs (median pair reported)")
    ap.add_argument("--out", type=Path, default=Path("out/bench/training.json"))
    args = ap.parse_args()

    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from asset.models.factory import build_model
    from asset.training.module import SegmentationModule, build_loss, build_optimizer

    torch.manual_seed(0)
    n = (args.steps + args.warmup) * args.batch
    x = torch.randn(n, 1, args.size, args.size)
    y = (torch.rand(n, 1, args.size, args.size) > 0.95).float()
    data = TensorDataset(x, y, torch.arange(n))
    net0 = build_model(args.arch, args.encoder, 1, "none")
    opt_cfg = {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4}

    def loader():
        return DataLoader(data, batch_size=args.batch, shuffle=False, num_workers=0)

    def plain() -> float:
        net = copy.deepcopy(net0).train()
        loss_fn = build_loss("jaccard")
        opt = build_optimizer(net.parameters(), opt_cfg)
        t0 = None
        for i, (xb, yb, _) in enumerate(loader()):
            if i == args.warmup:
                t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(xb), yb)
            loss.backward()
            opt.step()
        return args.steps * args.batch / (time.perf_counter() - t0)

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == args.warmup:
                self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            self.t1 = time.perf_counter()

    def lightning() -> float:
        module = SegmentationModule(copy.deepcopy(net0), build_loss("jaccard"), opt_cfg, {"name": "none"})
        clock = Clock()
        trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[clock],
                            limit_val_batches=0, num_sanity_val_steps=0, deterministic=True)
        trainer.fit(module, train_dataloaders=loader())
        return args.steps * args.batch / (clock.t1 - clock.t0)

    plain_r, light_r = [], []
    for _ in range(args.rounds):
        plain_r.append(plain())
        light_r.append(lightning())
    # each pair runs back to back: its ratio is immune to the machine's slow spells, the median pair is reported
    pairs = sorted(zip(plain_r, light_r), key=lambda pl: pl[0] / pl[1])
    p, lt = pairs[len(pairs) // 2]
    overhead = p / lt - 1.0
    result = {
        "what": f"training {args.arch}/{args.encoder} {args.size}x{args.size} batch {args.batch}, images/s",
        "lightning_images_per_s": lt, "plain_images_per_s": p, "overhead": overhead,
        "rounds": {"lightning": light_r, "plain": plain_r}, "steps": args.steps, "warmup": args.warmup,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "lightning": L.__version__,
        "machine": platform.processor() or platform.machine(), "goal": "overhead < 10%",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| asset training (Lightning vs plain loop), {args.arch}/{args.encoder} {args.size}px b{args.batch} "
          f"| {lt:.1f} img/s | {p:.1f} img/s | {lt / p:.3f} (overhead {overhead * 100:+.1f}%, goal < 10%) |")


if __name__ == "__main__":
    main()
