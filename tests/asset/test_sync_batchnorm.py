"""GlobalBatchNorm: two gloo ranks, each with half of a batch, compute the outputs, gradients and running statistics
of one BatchNorm layer on the whole batch; out of DDP it is a plain BatchNorm; convert/revert keep the state."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from asset.training.sync_batchnorm import GlobalBatchNorm, convert, revert


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 5, 4, generator=g) * torch.tensor([1.0, 4.0, 0.5]).view(1, 3, 1, 1) + 2.0
    w = torch.randn(6, 3, 5, 4, generator=g)  # a loss weight per output, so that gradients are not trivial
    return x, w


def _layer() -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(3, momentum=0.3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, 0.5, -1.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return bn


def _rank(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        x, w = _batch()
        part = slice(rank * 3, rank * 3 + 3)
        bn = convert(nn.Sequential(_layer()))[0]
        xs = x[part].clone().requires_grad_()
        y = bn(xs)
        (y * w[part]).sum().backward()
        grads = [bn.weight.grad.clone(), bn.bias.grad.clone()]
        for gr in grads:  # the sum of both ranks' losses: what one process computes on the whole batch
            dist.all_reduce(gr)
        # numpy arrays travel by value: a tensor travels as a file descriptor that the parent must fetch while the
        # child still lives, and this child may already have exited
        arrays = [t.detach().numpy().copy() for t in (y, xs.grad, *grads, bn.running_mean, bn.running_var)]
        queue.put((rank, *arrays))
    finally:
        dist.destroy_process_group()


def test_two_ranks_compute_what_one_process_computes_on_the_whole_batch():
    x, w = _batch()
    ref = _layer()
    xr = x.clone().requires_grad_()
    y = ref(xr)
    (y * w).sum().backward()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, port, queue)) for r in (0, 1)]
    for p in procs:
        p.start()
    got = {item[0]: [torch.from_numpy(a) for a in item[1:]] for item in (queue.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    out = torch.cat([got[0][0], got[1][0]])
    grad_x = torch.cat([got[0][1], got[1][1]])
    torch.testing.assert_close(out, y.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_x, xr.grad, atol=1e-5, rtol=1e-5)
    for r in (0, 1):
        torch.testing.assert_close(got[r][2], ref.weight.grad, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(got[r][3], ref.bias.grad, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(got[r][4], ref.running_mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[r][5], ref.running_var, atol=1e-5, rtol=1e-5)


def test_outside_ddp_it_is_a_plain_batchnorm_and_convert_revert_keep_the_state():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Sequential(nn.BatchNorm1d(4)))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    weight = net[1].weight
    converted = convert(net)
    assert isinstance(converted[1], GlobalBatchNorm) and isinstance(converted[3][0], GlobalBatchNorm)
    assert converted[1].weight is weight  # shared: an optimiser built before keeps updating it
    assert converted.state_dict().keys() == before.keys()
    x = torch.randn(2, 3, 6, 6)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    plain.load_state_dict({k: v for k, v in before.items() if k.split(".")[0] in ("0", "1")})
    torch.testing.assert_close(converted[1](converted[0](x)), plain(x))  # no process group: BatchNorm's own path
    back = revert(converted)
    assert type(back[1]) is nn.BatchNorm2d and type(back[3][0]) is nn.BatchNorm1d
    assert back[1].weight is weight
    for k, v in back.state_dict().items():
        assert v.shape == before[k].shape


def test_rejects_a_1d_input():
    with pytest.raises(ValueError, match="at least 2D"):
        GlobalBatchNorm(3)(torch.randn(3))
