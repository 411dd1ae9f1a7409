"""Parameter groups, SGD settings and gradient clipping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from atrous.config import get_cfg
from atrous.solver import (
    GradientClipper,
    OptimizerCoverageError,
    build_gradient_clipper,
    build_optimizer,
    check_optimizer_covers,
)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.frozen = nn.Conv2d(4, 4, 1, bias=False)
        self.frozen.weight.requires_grad_(False)
        self.head = nn.Conv2d(4, 2, 1)
        self.shared = self.head  # a module reachable twice must not duplicate parameters


def _groups(opt: torch.optim.Optimizer) -> dict[int, tuple[float, float]]:
    return {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}


def test_default_groups_norm_weight_decay() -> None:
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.BASE_LR", 0.01, "SOLVER.WEIGHT_DECAY", 1e-4])
    net = _Net()
    opt = build_optimizer(cfg, net)
    g = _groups(opt)
    assert id(net.frozen.weight) not in g
    assert sum(len(x["params"]) for x in opt.param_groups) == len(g) == 8
    assert g[id(net.conv.weight)] == (0.01, 1e-4)
    assert g[id(net.conv.bias)] == (0.01, 1e-4)
    for p in (net.bn.weight, net.bn.bias, net.gn.weight, net.gn.bias):
        assert g[id(p)] == (0.01, 0.0)
    assert len(opt.param_groups) == 2
    d = opt.defaults
    assert d["momentum"] == 0.9 and d["nesterov"] is False


def test_bias_rules_and_nesterov() -> None:
    cfg = get_cfg()
    cfg.merge_from_list(
        [
            "SOLVER.BASE_LR",
            0.1,
            "SOLVER.WEIGHT_DECAY",
            1e-4,
            "SOLVER.BIAS_LR_FACTOR",
            2.0,
            "SOLVER.WEIGHT_DECAY_BIAS",
            0.0,
            "SOLVER.WEIGHT_DECAY_NORM",
            1e-5,
            "SOLVER.NESTEROV",
            True,
        ]
    )
    net = _Net()
    opt = build_optimizer(cfg, net)
    g = _groups(opt)
    assert g[id(net.conv.weight)] == (0.1, 1e-4)
    assert g[id(net.conv.bias)] == (0.2, 0.0)
    assert g[id(net.bn.weight)] == (0.1, 1e-5)
    assert g[id(net.bn.bias)] == (0.2, 0.0)  # the bias rule wins, as in detectron2
    assert opt.defaults["nesterov"] is True


def test_sgd_step_uses_group_weight_decay() -> None:
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.BASE_LR", 0.5, "SOLVER.WEIGHT_DECAY", 0.1, "SOLVER.MOMENTUM", 0.0])
    net = _Net()
    before_bn = net.bn.weight.detach().clone()
    before_conv = net.conv.weight.detach().clone()
    opt = build_optimizer(cfg, net)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(net.bn.weight, before_bn)  # no decay on norm layers
    torch.testing.assert_close(net.conv.weight, before_conv * (1 - 0.5 * 0.1))


def test_clip_value_norm_full_model() -> None:
    a = nn.Parameter(torch.zeros(4))
    b = nn.Parameter(torch.zeros(3))
    a.grad = torch.tensor([3.0, -4.0, 0.0, 0.5])
    b.grad = torch.tensor([0.0, 0.0, 12.0])
    GradientClipper(clip_type="value", clip_value=1.0)([a, b])
    assert a.grad.tolist() == [1.0, -1.0, 0.0, 0.5] and b.grad.tolist() == [0.0, 0.0, 1.0]

    a.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])
    b.grad = torch.tensor([0.0, 0.0, 0.5])
    GradientClipper(clip_type="norm", clip_value=1.0)([a, b])  # per parameter
    torch.testing.assert_close(a.grad, torch.tensor([0.6, 0.8, 0.0, 0.0]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.grad, torch.tensor([0.0, 0.0, 0.5]))

    a.grad = torch.tensor([3.0, 0.0, 0.0, 0.0])
    b.grad = torch.tensor([0.0, 0.0, 4.0])
    GradientClipper(clip_type="full_model", clip_value=1.0)([a, b])
    torch.testing.assert_close(a.grad, torch.tensor([0.6, 0.0, 0.0, 0.0]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.grad, torch.tensor([0.0, 0.0, 0.8]), rtol=1e-5, atol=1e-6)


def test_clipper_from_config_and_errors() -> None:
    cfg = get_cfg()
    assert build_gradient_clipper(cfg) is None
    cfg.merge_from_list(
        ["SOLVER.CLIP_GRADIENTS.ENABLED", True, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm"]
    )
    assert build_gradient_clipper(cfg).clip_type == "norm"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "max"
    with pytest.raises(ValueError, match="CLIP_TYPE"):
        build_gradient_clipper(cfg)


def test_seed_r103_syncbn_model_keeps_every_trainable_parameter_in_its_optimizer() -> None:
    # The seed's R103 DeepLabV3+ (SyncBN in backbone and head), built, given its optimizer,
    # then converted as the trainer does on CUDA before wrapping it in DDP: the conversion made
    # 228 BatchNorm weights and biases that the optimizer did not know, never to be updated.
    from atrous.layers import NaiveSyncBatchNorm, convert_sync_batchnorm
    from atrous.modeling import build_model
    from tests.helpers import V3PLUS_CONFIG, load_config

    cfg = load_config(V3PLUS_CONFIG, ["MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.RESNETS.NORM == "SyncBN"
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    converted = convert_sync_batchnorm(model)
    sync = [m for m in converted.modules() if isinstance(m, nn.SyncBatchNorm)]
    assert len(sync) > 100 and not any(
        isinstance(m, NaiveSyncBatchNorm) for m in converted.modules()
    )
    check_optimizer_covers(converted, optimizer)


def test_optimizer_coverage_names_what_is_missing_or_stale() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    model[2].weight.requires_grad_(False)  # frozen: needs no place in the optimizer
    check_optimizer_covers(
        model, torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    )

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model[1] = nn.BatchNorm2d(4)  # replaced after the optimizer was built
    with pytest.raises(
        OptimizerCoverageError,
        match=r"does not hold 2 of the model's 5 trainable parameters \(1\.weight, 1\.bias\)",
    ):
        check_optimizer_covers(model, optimizer)

    wrapped = nn.Sequential()
    wrapped.module = model  # how DDP names them: the prefix is not shown
    with pytest.raises(OptimizerCoverageError, match=r"\(1\.weight, 1\.bias\)"):
        check_optimizer_covers(wrapped, optimizer)

    fresh = torch.optim.SGD(
        [*[p for p in model.parameters() if p.requires_grad], model[2].weight], lr=0.1
    )
    with pytest.raises(OptimizerCoverageError, match=r"steps 1 tensor\(s\) that are not trainable"):
        check_optimizer_covers(model, fresh)
