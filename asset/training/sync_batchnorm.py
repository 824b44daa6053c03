"""Batch normalisation over the global batch of a DDP run, on any device.

torch's SyncBatchNorm runs only on GPUs, so multi-node training on CPUs (gloo) would normalise each rank's share of
the batch by its own statistics: a different model from the same run on one process. Here each layer all-reduces
its per-channel sum and count, then the squared deviations (autograd-aware: the backward pass is global too), which
makes N ranks with batch B/N compute what one process computes with batch B. `trainer.sync_batchnorm` turns it on.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightning.pytorch.plugins.layer_sync import LayerSync
from torch import Tensor, nn
from torch.distributed import _functional_collectives as collectives
from torch.nn.modules.batchnorm import _BatchNorm


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _sum(t: Tensor) -> Tensor:
    """Sum over all ranks; differentiable (its backward sums the gradients over the ranks)."""
    out = collectives.all_reduce(t, "sum", dist.group.WORLD)
    return out.wait() if isinstance(out, collectives.AsyncCollectiveTensor) else out


class GlobalBatchNorm(_BatchNorm):
    """A BatchNorm layer (any dimension) whose training statistics are those of the batch across all ranks."""

    original: type[_BatchNorm] = nn.BatchNorm2d  # the class it replaced, restored by revert()

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and _distributed()):
            return super().forward(x)
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, channels] + [1] * (x.dim() - 2)
        count = torch.full((1,), x.numel() / channels, dtype=x.dtype, device=x.device)
        totals = _sum(torch.cat([x.sum(dims), count]))
        n = totals[-1]
        mean = totals[:channels] / n
        # two passes, as BatchNorm does: E[x^2] - E[x]^2 cancels to noise where the mean dwarfs the spread
        var = _sum(((x - mean.view(shape)) ** 2).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.detach() * (n / (n - 1).clamp_min(1)), alpha=factor)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def _swap(old: _BatchNorm, cls: type[_BatchNorm]) -> _BatchNorm:
    """`cls` holding the very parameters and buffers of `old` (shared, not copied: optimisers keep them)."""
    new = cls(old.num_features, old.eps, old.momentum, old.affine, old.track_running_stats)
    if old.affine:
        new.weight, new.bias = old.weight, old.bias
    if old.track_running_stats:
        new.running_mean, new.running_var = old.running_mean, old.running_var
        new.num_batches_tracked = old.num_batches_tracked
    new.train(old.training)
    return new


def convert(module: nn.Module) -> nn.Module:
    """Every BatchNorm layer of `module` as a GlobalBatchNorm (state dict keys unchanged)."""
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = _swap(module, GlobalBatchNorm)
        new.original = type(module)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert(child))
    return module


def revert(module: nn.Module) -> nn.Module:
    """The layers convert() replaced, back to their own classes."""
    if isinstance(module, GlobalBatchNorm):
        return _swap(module, module.original)
    for name, child in module.named_children():
        module.add_module(name, revert(child))
    return module


class GlobalSyncBatchNorm(LayerSync):
    """Lightning plugin: DDP strategies apply it to the model before fitting and revert it after."""

    def apply(self, model: nn.Module) -> nn.Module:
        return convert(model)

    def revert(self, model: nn.Module) -> nn.Module:
        return revert(model)
