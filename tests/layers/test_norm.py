"""Normalisation layers: names, FrozenBN arithmetic, synchronised BN across real processes."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from atrous.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm, convert_sync_batchnorm, get_norm


def test_get_norm_builds_every_supported_norm():
    assert get_norm("", 8) is None and get_norm(None, 8) is None
    assert type(get_norm("BN", 8)) is nn.BatchNorm2d
    assert isinstance(get_norm("SyncBN", 8), NaiveSyncBatchNorm)
    assert isinstance(get_norm("FrozenBN", 8), FrozenBatchNorm2d)
    gn = get_norm("GN", 64)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 32
    with pytest.raises(ValueError, match="Unknown norm 'LayerNormX'"):
        get_norm("LayerNormX", 8)


def test_syncbn_state_dict_layout_is_that_of_batchnorm():
    assert list(get_norm("SyncBN", 4).state_dict()) == list(nn.BatchNorm2d(4).state_dict())


def test_frozen_bn_equals_batchnorm_in_eval_with_and_without_grad():
    bn = nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    frozen = FrozenBatchNorm2d.convert_frozen_batchnorm(bn)
    assert isinstance(frozen, FrozenBatchNorm2d)
    x = torch.randn(2, 6, 5, 7)
    torch.testing.assert_close(frozen(x), bn(x))
    torch.testing.assert_close(frozen(x.requires_grad_()), bn(x))
    assert not list(frozen.parameters())


def test_frozen_bn_loads_batchnorm_checkpoints_with_step_counter():
    state = nn.BatchNorm2d(3).state_dict()
    missing_unexpected = FrozenBatchNorm2d(3).load_state_dict(state, strict=True)
    assert not missing_unexpected.missing_keys and not missing_unexpected.unexpected_keys


def test_naive_syncbn_without_process_group_is_plain_batchnorm():
    torch.manual_seed(0)
    sync, plain = NaiveSyncBatchNorm(4), nn.BatchNorm2d(4)
    x = torch.randn(3, 4, 5, 5)
    torch.testing.assert_close(sync(x), plain(x))
    torch.testing.assert_close(sync.running_var, plain.running_var)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sync_bn_worker(rank: int, world_size: int, port: int, x: torch.Tensor, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    torch.manual_seed(0)
    bn = NaiveSyncBatchNorm(x.shape[1])
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    shard = x.chunk(world_size)[rank].clone().requires_grad_()
    y = bn(shard)
    # A loss that is not a plain sum, so the gradient depends on the global statistics.
    (y * torch.arange(y.numel()).reshape(y.shape).float().sin()).sum().backward()
    dist.all_reduce(bn.weight.grad)
    torch.save(
        {"y": y.detach(), "x_grad": shard.grad, "w_grad": bn.weight.grad,
         "running_mean": bn.running_mean, "running_var": bn.running_var},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )  # fmt: skip
    dist.barrier()
    dist.destroy_process_group()


def test_convert_sync_batchnorm_swaps_naive_sync_bn_keeping_its_state() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 4, 1), NaiveSyncBatchNorm(4), nn.Sequential(NaiveSyncBatchNorm(4)),
        nn.BatchNorm2d(4),
    )  # fmt: skip
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_()
            m.weight.data.uniform_()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    converted = convert_sync_batchnorm(net)
    assert type(converted[1]) is nn.SyncBatchNorm and type(converted[2][0]) is nn.SyncBatchNorm
    assert type(converted[3]) is nn.BatchNorm2d  # plain BN stays unsynchronised
    after = converted.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_convert_sync_batchnorm_keeps_the_parameter_and_buffer_objects() -> None:
    # An optimizer built before the conversion must still step the BatchNorm scale and shift.
    net = nn.Sequential(nn.Conv2d(3, 4, 1), NaiveSyncBatchNorm(4), NaiveSyncBatchNorm(4).eval())
    net[2].weight.requires_grad_(False)
    params = [id(p) for p in net.parameters()]
    buffers = [id(b) for b in net.buffers()]
    converted = convert_sync_batchnorm(net)
    assert [id(p) for p in converted.parameters()] == params
    assert [id(b) for b in converted.buffers()] == buffers
    assert converted[1].training and not converted[2].training
    assert not converted[2].weight.requires_grad and converted[2].bias.requires_grad


@pytest.mark.parametrize(
    ("scale", "offset", "atol"),
    [
        (3.0, 1.0, 1e-5),
        # |mean| / std = 6000: float32 itself only resolves the normalised values to ~4e-4 here,
        # while E[x^2] - E[x]^2 would get the variance wrong by a factor of several.
        (0.05, 300.0, 2e-3),
    ],
)
def test_naive_syncbn_across_two_processes_equals_batchnorm_on_the_global_batch(
    tmp_path, scale, offset, atol
):
    torch.manual_seed(1)
    x = torch.randn(4, 3, 5, 6) * scale + offset
    mp.spawn(_sync_bn_worker, args=(2, _free_port(), x, str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    # Reference: BatchNorm on the global batch, in float64.
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    bn = bn.double()
    xg = x.double().requires_grad_()
    y = bn(xg)
    for half in y.chunk(2):
        (half * torch.arange(half.numel()).reshape(half.shape).double().sin()).sum().backward(
            retain_graph=True
        )
    for rank, res in enumerate(results):
        half = y.chunk(2)[rank].detach().float()
        torch.testing.assert_close(res["y"], half, atol=atol, rtol=1e-5)
        torch.testing.assert_close(
            res["x_grad"], xg.grad.chunk(2)[rank].float(), atol=atol / scale, rtol=1e-3
        )
        torch.testing.assert_close(
            res["w_grad"], bn.weight.grad.float(), atol=100 * atol, rtol=1e-3
        )
        torch.testing.assert_close(res["running_mean"], bn.running_mean.float())
        torch.testing.assert_close(res["running_var"], bn.running_var.float(), rtol=1e-3, atol=1e-6)
