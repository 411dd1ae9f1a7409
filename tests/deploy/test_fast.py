"""The fast inference path: forward contract, accuracy against float32, capability checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atrous.data.datasets.synthetic import generate_scene, render_scene
from atrous.deploy import fast_path_supported, optimize_for_inference
from atrous.deploy.fast import FastInferenceModel, Float32Island, cpu_flags, parse_dtype
from atrous.modeling import build_model

# Steps of fitting the small model to two 48x96 scenes: enough for confident predictions (when
# this was written the bf16 agreement was 99.5% after 100 steps and 99.8% after 140).
_FIT_STEPS = 150


def _scene(seed: int, height: int = 48, width: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    rendered = render_scene(generate_scene(rng, height, width), rng)
    image = torch.from_numpy(rendered["image"]).permute(2, 0, 1).contiguous()
    labels = torch.from_numpy(rendered["train_ids"].astype(np.int64))
    return image, labels


@pytest.fixture
def fitted_model_and_scenes(tiny_cfg):
    """The small V3+ trained until confident on two synthetic street scenes.

    Random-weight models predict near-ties almost everywhere, so no reduced precision can
    reproduce their argmax; a trained model's predictions are confident, which is the case the
    fast path is for.
    """
    torch.manual_seed(0)
    model = build_model(tiny_cfg)
    scenes = [_scene(seed) for seed in (0, 1)]
    batch = [{"image": image, "sem_seg": labels} for image, labels in scenes]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    # One thread: these layers are too small to split, and on a busy machine spinning OpenMP
    # threads make the fit ten times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(_FIT_STEPS):
            loss = model(batch)["loss_sem_seg"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), scenes


def _predict(model, image, **size):
    with torch.no_grad():
        return model([{"image": image, **size}])[0]["sem_seg"]


def test_bf16_argmax_agrees_with_float32(fitted_model_and_scenes):
    model, scenes = fitted_model_and_scenes
    fast = optimize_for_inference(model, dtype="bfloat16", channels_last=True, fold_bn=True)
    for image, labels in scenes:
        reference = _predict(model, image)
        assert (reference.argmax(0) == labels).float().mean() > 0.95  # the model is trained
        logits = _predict(fast, image)
        assert logits.dtype == torch.float32
        agreement = (logits.argmax(0) == reference.argmax(0)).float().mean().item()
        assert agreement >= 0.995, agreement


def test_float32_fast_path_matches_reference_outputs(
    reference_model, reference_image, reference_dir
):
    # channels_last + folded BN in float32 must still reproduce detectron2's logits.
    expected = torch.from_numpy(np.load(reference_dir / "small_v3plus_nocrop__128x256__logits.npy"))
    fast = optimize_for_inference(
        reference_model, dtype="float32", channels_last=True, fold_bn=True
    )
    logits = _predict(fast, reference_image, height=128, width=256)
    assert logits.shape == expected.shape
    # 1e-3 rather than 1e-4: folding reassociates float32 sums and the random reference network
    # amplifies rounding (see test_fold_bn); the argmax must still be that of the original.
    assert (logits - expected).abs().max() < 1e-3
    agreement = (logits.argmax(0) == expected.argmax(0)).float().mean().item()
    assert agreement >= 0.999, agreement


def test_forward_contract_and_original_untouched(reference_model, reference_image):
    fast = optimize_for_inference(reference_model, dtype="bfloat16")
    assert isinstance(fast, FastInferenceModel) and not fast.training
    out = fast([{"image": reference_image, "height": 64, "width": 100}, {"image": reference_image}])
    assert [o["sem_seg"].shape for o in out] == [(19, 64, 100), (19, 128, 256)]
    assert all(o["sem_seg"].dtype == torch.float32 for o in out)
    assert fast.num_classes == 19  # the segmentor's attributes stay reachable
    # bf16 convolutions, except the final predictor whose logits are upsampled in float32.
    assert fast.backbone.stem.conv1.weight.dtype == torch.bfloat16
    assert isinstance(fast.sem_seg_head.predictor, Float32Island)
    assert fast.sem_seg_head.predictor.module.weight.dtype == torch.float32
    unfolded = optimize_for_inference(reference_model, dtype="bfloat16", fold_bn=False)
    norm = unfolded.backbone.stem.conv1.norm
    assert isinstance(norm, torch.nn.BatchNorm2d) and norm.running_var.dtype == torch.float32
    assert unfolded.backbone.stem.conv1.weight.dtype == torch.bfloat16
    assert unfolded([{"image": reference_image}])[0]["sem_seg"].dtype == torch.float32
    # The original keeps its BatchNorms, its memory format and its ability to train.
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in reference_model.modules())
    assert reference_model.backbone.stem.conv1.weight.is_contiguous()
    assert all(p.requires_grad for p in reference_model.parameters())
    with pytest.raises(RuntimeError, match="cannot be trained"):
        fast.train()


def test_compiled_fast_path_matches_eager(reference_model, reference_image):
    image = reference_image[:, :64, :128].contiguous()
    eager = optimize_for_inference(reference_model, dtype="float32", fold_bn=True)
    compiled = optimize_for_inference(reference_model, dtype="float32", fold_bn=True, compile=True)
    expected = _predict(eager, image)
    torch.testing.assert_close(_predict(compiled, image), expected, rtol=0, atol=1e-3)


def test_capability_checks():
    assert fast_path_supported("cpu", "float32")
    flags = cpu_flags()
    if {"avx512_bf16", "amx_bf16"} & flags:
        assert fast_path_supported("cpu", "bfloat16")
    if not torch.cuda.is_available():
        assert not fast_path_supported("cuda", "bfloat16")
    with pytest.raises(ValueError, match="Unsupported inference dtype"):
        parse_dtype("int8")
    assert parse_dtype("bf16") is torch.bfloat16
