"""Class-weighted losses against hand-written references; all-ones weights change nothing."""

from __future__ import annotations

import pytest
import torch

from atrous.config import ConfigError
from atrous.modeling.build import build_loss
from atrous.modeling.losses import DeepLabCE, UnresolvedClassWeights, build_sem_seg_loss
from tests.helpers import class_weights_cfg as _cfg

WEIGHTS = [0.5, 2.0, 1.25]


def _batch(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=g, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, 3, (2, 4, 5), generator=g)
    labels[0, 0, :3] = 255
    labels[1, 3, 4] = 255
    return logits, labels


def _pixel_losses_by_hand(logits, labels, weights):
    """-w[y] * log_softmax(logits)[y] per pixel, 0 where ignored, in (N*H*W,) order."""
    log_p = torch.log_softmax(logits, dim=1)
    out = []
    for n in range(labels.shape[0]):
        for i in range(labels.shape[1]):
            for j in range(labels.shape[2]):
                y = int(labels[n, i, j])
                out.append(
                    torch.zeros((), dtype=logits.dtype)
                    if y == 255
                    else -weights[y] * log_p[n, y, i, j]
                )
    return torch.stack(out)


def test_weighted_cross_entropy_is_the_weighted_mean_of_the_labelled_pixels():
    logits, labels = _batch()
    loss = build_sem_seg_loss("cross_entropy", ignore_label=255, class_weights=WEIGHTS)
    pixels = _pixel_losses_by_hand(logits, labels, WEIGHTS)
    labelled = labels.reshape(-1) != 255
    weight_sum = sum(WEIGHTS[int(y)] for y in labels.reshape(-1)[labelled])
    expected = pixels.sum() / weight_sum
    assert torch.allclose(loss(logits, labels), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("top_k", [0.2, 0.5, 1.0])
def test_weighted_hard_pixel_mining_weights_each_pixel_then_keeps_the_top_k(top_k):
    logits, labels = _batch()
    loss = build_sem_seg_loss(
        "hard_pixel_mining", ignore_label=255, top_k_percent_pixels=top_k, class_weights=WEIGHTS
    )
    pixels = _pixel_losses_by_hand(logits, labels, WEIGHTS)
    k = int(top_k * pixels.numel())  # 40 pixels: 8, 20 or all 40; ignored ones are zeros
    expected = torch.sort(pixels, descending=True).values[:k].sum() / k
    assert torch.allclose(loss(logits, labels), expected, rtol=1e-12, atol=0)
    # Weighting changes which pixels are the hardest: not the unweighted top-k rescaled.
    unweighted = _pixel_losses_by_hand(logits, labels, [1.0, 1.0, 1.0])
    order_w = torch.sort(pixels, descending=True).indices[:k]
    order_u = torch.sort(unweighted, descending=True).indices[:k]
    if top_k < 1:
        assert set(order_w.tolist()) != set(order_u.tolist())


@pytest.mark.parametrize(
    ("loss_type", "top_k"),
    [("cross_entropy", 0.2), ("hard_pixel_mining", 0.2), ("hard_pixel_mining", 1.0)],
)
def test_all_ones_weights_equal_the_unweighted_loss_exactly(loss_type, top_k):
    logits, labels = _batch(torch.float32)
    plain = build_sem_seg_loss(loss_type, ignore_label=255, top_k_percent_pixels=top_k)
    ones = build_sem_seg_loss(
        loss_type, ignore_label=255, top_k_percent_pixels=top_k, class_weights=[1.0] * 3
    )
    a, b = plain(logits, labels), ones(logits, labels)
    assert torch.equal(a, b)
    (grad_a,) = torch.autograd.grad(a, logits)
    (grad_b,) = torch.autograd.grad(b, logits)
    assert torch.equal(grad_a, grad_b)


def test_weights_follow_the_module_but_stay_out_of_the_state_dict():
    loss = DeepLabCE(weight=WEIGHTS)
    assert loss.state_dict() == {}
    assert loss.weight.dtype == torch.float32 and loss.weight.tolist() == WEIGHTS
    assert loss.to(torch.float64).weight.dtype == torch.float64
    with pytest.raises(ValueError, match="finite and >= 0"):
        DeepLabCE(weight=[1.0, -1.0])


def test_build_loss_reads_a_list_and_defers_a_method():
    assert build_loss(_cfg("None")).weight is None
    assert build_loss(_cfg("[1, 2.5, 3]", loss_type="cross_entropy")).weight.tolist() == [1, 2.5, 3]
    pending = build_loss(_cfg("median_frequency"))
    assert isinstance(pending, UnresolvedClassWeights)
    logits, labels = _batch()
    with pytest.raises(
        ConfigError, match=r"computed from the training data by atrous\.engine\.Trainer"
    ):
        pending(logits, labels)
    resolved = build_loss(_cfg("median_frequency"), class_weights=WEIGHTS)
    assert isinstance(resolved, DeepLabCE) and resolved.weight.tolist() == WEIGHTS
    with pytest.raises(ValueError, match=r"2 class weights for MODEL\.SEM_SEG_HEAD\.NUM_CLASSES 3"):
        build_loss(_cfg("median_frequency"), class_weights=[1.0, 2.0])


@pytest.mark.parametrize("loss_type", ["cross_entropy", "hard_pixel_mining"])
def test_weighted_losses_under_bfloat16_autocast_stay_close_to_float32(loss_type):
    logits, labels = _batch(torch.float32)
    loss = build_sem_seg_loss(loss_type, ignore_label=255, class_weights=WEIGHTS)
    reference = loss(logits, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(logits.to(torch.bfloat16), labels)
    assert mixed.dtype == torch.float32  # cross_entropy runs in float32 under autocast
    assert torch.allclose(mixed, reference, rtol=2e-2)
    half = loss(logits.detach().to(torch.bfloat16), labels)  # no autocast: weights follow
    assert half.dtype == torch.bfloat16 and torch.allclose(half.float(), reference, rtol=5e-2)
