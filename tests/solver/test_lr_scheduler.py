"""LR schedules against their closed-form definitions (projects/DeepLab, detectron2)."""

from __future__ import annotations

import math

import pytest
import torch

from atrous.config import get_cfg
from atrous.solver import WarmupPolyLR, build_lr_scheduler


def _optimizer(base_lr: float = 0.01, groups: int = 2) -> torch.optim.Optimizer:
    params = [
        {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": base_lr * (g + 1)}
        for g in range(groups)
    ]
    return torch.optim.SGD(params, lr=base_lr, momentum=0.9)


def _run(sched: torch.optim.lr_scheduler.LRScheduler, n: int) -> list[list[float]]:
    """LRs used at iterations 0..n-1 (the trainer steps the scheduler after each iteration)."""
    out = []
    for _ in range(n):
        out.append([g["lr"] for g in sched.optimizer.param_groups])
        sched.optimizer.step()
        sched.step()
    return out


def _poly_formula(it, *, base, max_iter, wf, wi, method, power, ending):
    warm = 1.0
    if it < wi:
        warm = wf if method == "constant" else wf * (1 - it / wi) + it / wi
    poly = (1 - it / max_iter) ** power
    if ending > 0 and warm == 1.0 and poly < ending:
        return base * ending
    return base * warm * poly


@pytest.mark.parametrize("method", ["linear", "constant"])
@pytest.mark.parametrize("ending", [0.0, 0.3])
def test_warmup_poly_matches_formula_everywhere(method: str, ending: float) -> None:
    max_iter, wi, wf, power = 200, 30, 0.001, 0.9
    opt = _optimizer()
    sched = WarmupPolyLR(
        opt,
        max_iters=max_iter,
        warmup_factor=wf,
        warmup_iters=wi,
        warmup_method=method,
        power=power,
        constant_ending=ending,
    )
    lrs = _run(sched, max_iter)
    for it, per_group in enumerate(lrs):
        for g, lr in enumerate(per_group):
            base = 0.01 * (g + 1)
            expected = _poly_formula(
                it,
                base=base,
                max_iter=max_iter,
                wf=wf,
                wi=wi,
                method=method,
                power=power,
                ending=ending,
            )
            assert lr == pytest.approx(expected, rel=1e-12, abs=1e-15), (it, g)


def test_warmup_poly_key_points() -> None:
    opt = _optimizer(groups=1)
    sched = WarmupPolyLR(
        opt, max_iters=100, warmup_factor=0.1, warmup_iters=10, power=1.0, constant_ending=0.25
    )
    lrs = [x[0] for x in _run(sched, 100)]
    assert lrs[0] == pytest.approx(0.01 * 0.1)  # warmup starts at WARMUP_FACTOR
    assert lrs[5] == pytest.approx(0.01 * (0.1 * 0.5 + 0.5) * 0.95)
    # Warmup boundary: iteration 9 is still warming up, 10 is pure poly.
    assert lrs[9] == pytest.approx(0.01 * (0.1 * 0.1 + 0.9) * 0.91)
    assert lrs[10] == pytest.approx(0.01 * 0.9)
    # Constant ending: poly factor 1 - it/100 falls below 0.25 after iteration 75.
    assert lrs[75] == pytest.approx(0.01 * 0.25)
    assert lrs[76] == pytest.approx(0.01 * 0.25)
    assert lrs[99] == pytest.approx(0.01 * 0.25)
    assert lrs[74] == pytest.approx(0.01 * 0.26)


def test_constant_ending_not_applied_during_warmup() -> None:
    # Warmup longer than the point where poly drops below the ending: the original keeps the
    # warmup*poly product during warmup.
    opt = _optimizer(groups=1)
    sched = WarmupPolyLR(
        opt, max_iters=10, warmup_factor=0.5, warmup_iters=8, power=1.0, constant_ending=0.9
    )
    lrs = [x[0] for x in _run(sched, 10)]
    assert lrs[2] == pytest.approx(0.01 * (0.5 * 0.75 + 0.25) * 0.8)
    assert lrs[8] == pytest.approx(0.01 * 0.9)


def test_build_seed_poly_schedule() -> None:
    cfg = get_cfg()
    cfg.merge_from_file(
        "configs/Cityscapes-SemanticSegmentation/deeplab_v3_plus_R_103_os16_mg124_poly_90k_bs16.yaml"
    )
    sched = build_lr_scheduler(cfg, _optimizer(groups=1))
    assert isinstance(sched, WarmupPolyLR)
    for it in (0, 1, 500, 999, 1000, 1001, 45000, 89999):
        assert sched.factor_at(it) == pytest.approx(
            _poly_formula(
                it,
                base=1.0,
                max_iter=90000,
                wf=0.001,
                wi=1000,
                method="linear",
                power=0.9,
                ending=0.0,
            ),
            rel=1e-12,
        )


def test_multistep_matches_detectron2_semantics() -> None:
    cfg = get_cfg()
    cfg.merge_from_list(
        [
            "SOLVER.LR_SCHEDULER_NAME",
            "WarmupMultiStepLR",
            "SOLVER.MAX_ITER",
            100,
            "SOLVER.STEPS",
            (40, 70, 500),
            "SOLVER.WARMUP_ITERS",
            10,
            "SOLVER.WARMUP_FACTOR",
            0.1,
            "SOLVER.BASE_LR",
            0.01,
        ]
    )
    sched = build_lr_scheduler(cfg, _optimizer(groups=1))
    lrs = [x[0] for x in _run(sched, 100)]
    for it, lr in enumerate(lrs):
        if it < 10:
            expected = 0.01 * (0.1 + (1 - 0.1) * it / 10)
        else:
            expected = 0.01 * 0.1 ** sum(it >= s for s in (40, 70))
        assert lr == pytest.approx(expected, rel=1e-9), it


def test_cosine_matches_detectron2_semantics() -> None:
    cfg = get_cfg()
    cfg.merge_from_list(
        [
            "SOLVER.LR_SCHEDULER_NAME",
            "WarmupCosineLR",
            "SOLVER.MAX_ITER",
            100,
            "SOLVER.WARMUP_ITERS",
            10,
            "SOLVER.WARMUP_FACTOR",
            0.1,
            "SOLVER.BASE_LR",
            0.01,
            "SOLVER.BASE_LR_END",
            0.001,
        ]
    )
    sched = build_lr_scheduler(cfg, _optimizer(groups=1))
    lrs = [x[0] for x in _run(sched, 100)]

    def cos(w: float) -> float:
        return 0.1 + 0.5 * (1 - 0.1) * (1 + math.cos(math.pi * w))

    for it, lr in enumerate(lrs):
        # detectron2 ramps linearly from WARMUP_FACTOR * f(0) to f(warmup_length).
        expected = 0.1 + (cos(0.1) - 0.1) * it / 10 if it < 10 else cos(it / 100)
        assert lr == pytest.approx(0.01 * expected, rel=1e-9), it


def test_resumed_scheduler_continues_exactly() -> None:
    def make() -> WarmupPolyLR:
        return WarmupPolyLR(_optimizer(), max_iters=50, warmup_factor=0.01, warmup_iters=5)

    full = _run(make(), 50)
    first = make()
    _run(first, 20)
    state = first.state_dict()
    second = make()
    second.load_state_dict(state)
    # The optimizer's LR is set by the scheduler at its next step; mirror what resuming does.
    for g, lr in zip(second.optimizer.param_groups, second.get_last_lr()):
        g["lr"] = lr
    assert _run(second, 30) == full[20:]


def test_bad_names_are_clear() -> None:
    cfg = get_cfg()
    cfg.SOLVER.LR_SCHEDULER_NAME = "Poly"
    with pytest.raises(ValueError, match=r"SOLVER\.LR_SCHEDULER_NAME"):
        build_lr_scheduler(cfg, _optimizer())
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"
    cfg.SOLVER.WARMUP_METHOD = "exp"
    with pytest.raises(ValueError, match=r"SOLVER\.WARMUP_METHOD"):
        build_lr_scheduler(cfg, _optimizer())
