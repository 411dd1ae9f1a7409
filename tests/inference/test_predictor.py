"""Predictor: reference parity end to end, channel order, batching, config-driven wrappers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atrous.inference import Predictor, build_inference_model
from atrous.inference.sliding_window import SlidingWindowInference
from atrous.inference.tta import SemanticSegmentorWithTTA


@pytest.fixture
def cfg(tiny_cfg, reference_dir):
    cfg = tiny_cfg.clone()
    cfg.MODEL.WEIGHTS = str(reference_dir / "small_v3plus.pkl")
    cfg.INPUT.MIN_SIZE_TEST = 0  # keep the image size, as the reference run did
    return cfg


def test_predictor_reproduces_the_detectron2_reference(cfg, reference_dir):
    image = np.load(reference_dir / "input_128x256.npy")  # (H, W, 3) uint8 RGB
    ref_logits = np.load(reference_dir / "small_v3plus_nocrop__128x256__logits.npy")
    predictor = Predictor(cfg)
    result = predictor(image, return_probabilities=True)
    assert result.labels.shape == (128, 256) and result.labels.dtype == np.int64
    # exactly what the model gives for the reference's input tensor
    with torch.no_grad():
        direct = predictor.model(
            [
                {
                    "image": torch.from_numpy(image.transpose(2, 0, 1).copy()),
                    "height": 128,
                    "width": 256,
                }
            ]
        )[0]["sem_seg"]
    np.testing.assert_array_equal(result.labels, direct.argmax(0).numpy())
    # and the reference's numbers, up to the model's float tolerance
    ref_probs = torch.from_numpy(ref_logits).softmax(0).numpy()
    np.testing.assert_allclose(result.probabilities, ref_probs, atol=1e-5)
    top2 = np.sort(ref_logits, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-3
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(result.labels[clear], ref_logits.argmax(0)[clear])


def test_bgr_models_receive_bgr(cfg, reference_dir):
    image = np.load(reference_dir / "input_128x256.npy")[:64, :96]
    rgb = Predictor(cfg)(image, return_probabilities=True)
    cfg_bgr = cfg.clone()
    cfg_bgr.INPUT.FORMAT = "BGR"
    cfg_bgr.MODEL.PIXEL_MEAN = list(reversed(cfg.MODEL.PIXEL_MEAN))
    cfg_bgr.MODEL.PIXEL_STD = list(reversed(cfg.MODEL.PIXEL_STD))
    bgr_predictor = Predictor(cfg_bgr)
    # the same weights see channels reversed: flip the first conv's input channels back
    with torch.no_grad():
        conv = bgr_predictor.model.backbone.stem.conv1
        conv.weight.copy_(conv.weight.flip(1))
    bgr = bgr_predictor(image, return_probabilities=True)
    np.testing.assert_allclose(bgr.probabilities, rgb.probabilities, atol=1e-5)


def test_resizes_for_the_model_and_answers_at_the_original_size(cfg):
    cfg = cfg.clone()
    cfg.INPUT.MIN_SIZE_TEST = 32
    image = np.random.default_rng(0).integers(0, 256, (48, 72, 3), dtype=np.uint8)
    predictor = Predictor(cfg)
    seen = []
    predictor.inference_model.register_forward_pre_hook(
        lambda m, args: seen.append(tuple(args[0][0]["image"].shape))
    )
    result = predictor(image, return_probabilities=True)
    assert seen == [(3, 32, 48)]
    assert result.labels.shape == (48, 72) and result.probabilities.shape == (19, 48, 72)
    np.testing.assert_allclose(result.probabilities.sum(0), 1.0, atol=1e-5)


def test_batches_give_the_per_image_results(cfg):
    rng = np.random.default_rng(1)
    images = [
        rng.integers(0, 256, shape, dtype=np.uint8)
        for shape in [(40, 56, 3), (32, 48, 3), (40, 56, 3), (40, 56, 3)]
    ]
    predictor = Predictor(cfg)
    single = [predictor(img, return_probabilities=True) for img in images]
    batched = predictor.predict_batch(images, batch_size=3, return_probabilities=True)
    for a, b in zip(single, batched):
        # batched convolutions round differently; labels must agree wherever not a near-tie
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-4)
        top2 = np.sort(a.probabilities, axis=0)[-2:]
        clear = (top2[1] - top2[0]) > 1e-3
        np.testing.assert_array_equal(a.labels[clear], b.labels[clear])


def test_rejects_images_that_are_not_rgb_uint8(cfg):
    predictor = Predictor(cfg)
    with pytest.raises(ValueError, match=r"image 0: expected an \(H, W, 3\) uint8"):
        predictor(np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="float32"):
        predictor(np.zeros((8, 8, 3), dtype=np.float32))


def test_config_selects_the_inference_wrappers(cfg, model):
    cfg = cfg.clone()
    assert build_inference_model(cfg, model) is model
    cfg.TEST.SLIDING_WINDOW.ENABLED = True
    cfg.TEST.SLIDING_WINDOW.SIZE = (32, 32)
    cfg.TEST.SLIDING_WINDOW.STRIDE = (16, 16)
    cfg.TEST.AUG.ENABLED = True
    cfg.TEST.AUG.MIN_SIZES = (32, 48)
    wrapped = build_inference_model(cfg, model)
    assert isinstance(wrapped, SemanticSegmentorWithTTA)
    assert isinstance(wrapped.model, SlidingWindowInference) and wrapped.model.model is model
    with torch.no_grad():
        out = wrapped([{"image": torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8)}])
    assert out[0]["sem_seg"].shape == (19, 40, 56)


def test_fast_path_keeps_the_prediction(cfg, reference_dir):
    from atrous.deploy import FastInferenceModel
    from atrous.layers import FrozenBatchNorm2d

    image = np.load(reference_dir / "input_128x256.npy")
    plain_predictor = Predictor(cfg)
    plain = plain_predictor(image, return_probabilities=True)
    cfg = cfg.clone()
    cfg.TEST.FAST.ENABLED = True
    cfg.TEST.FAST.DTYPE = "float32"  # BN folding alone changes only rounding
    predictor = Predictor(cfg)
    # The fast path really runs: the predictor's model is the folded, channels_last copy.
    fast_model = predictor.inference_model
    assert isinstance(fast_model, FastInferenceModel)
    norms = (torch.nn.BatchNorm2d, FrozenBatchNorm2d)
    assert not any(isinstance(m, norms) for m in fast_model.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain_predictor.model.modules())
    conv = next(m for m in fast_model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    fast = predictor(image, return_probabilities=True)
    np.testing.assert_allclose(fast.probabilities, plain.probabilities, atol=1e-4)


def test_prediction_over_the_output_budget_is_refused(cfg):
    from atrous.modeling import OutputTooLargeError

    cfg.merge_from_list(["TEST.MAX_OUTPUT_MB", "1"])  # 19 x 96 x 128 x 4 bytes = 0.89 MiB fit
    predictor = Predictor(cfg)
    assert predictor(np.zeros((96, 128, 3), np.uint8)).labels.shape == (96, 128)
    with pytest.raises(OutputTooLargeError, match=r"128x128 \(HxW\) with 19 classes"):
        predictor(np.zeros((128, 128, 3), np.uint8))
    cfg.TEST.SLIDING_WINDOW.ENABLED = True
    cfg.TEST.SLIDING_WINDOW.SIZE = (32, 32)
    cfg.TEST.SLIDING_WINDOW.STRIDE = (16, 16)
    with pytest.raises(OutputTooLargeError, match=r"TEST\.MAX_OUTPUT_MB"):
        Predictor(cfg, model=predictor.model)(np.zeros((128, 128, 3), np.uint8))


def test_a_bundle_folder_predicts_like_its_config_and_weights(cfg, reference_dir, reference_bundle):
    # The bundle was written from this same config (reference_bundle_overrides).
    image = np.load(reference_dir / "input_128x256.npy")
    expected = Predictor(cfg)(image, return_probabilities=True)
    for predictor in (Predictor(reference_bundle), Predictor(str(reference_bundle)),
                      Predictor.from_bundle(reference_bundle)):  # fmt: skip
        result = predictor(image, return_probabilities=True)
        np.testing.assert_array_equal(result.labels, expected.labels)
        np.testing.assert_array_equal(result.probabilities, expected.probabilities)
        assert predictor.metadata.stuff_classes[0] == "road"
    assert Predictor(cfg).metadata is None


def test_bundle_predictor_takes_overrides_and_refuses_a_second_model(reference_bundle, model):
    predictor = Predictor.from_bundle(reference_bundle, opts=["TEST.AUG.ENABLED", "True"])
    assert isinstance(predictor.inference_model, SemanticSegmentorWithTTA)
    with pytest.raises(ValueError, match="brings its own model"):
        Predictor(reference_bundle, model=model)


def test_labels_from_scores_are_argmax_with_ties_and_non_finite_scores():
    from atrous.inference.predictor import labels_from_scores

    generator = torch.Generator().manual_seed(0)
    for trial in range(60):
        scores = torch.randint(-2, 3, (5, 6, 7), generator=generator).float()  # many ties
        special = torch.rand(scores.shape, generator=generator)
        if trial % 3 == 0:
            scores[special < 0.05] = float("nan")
        scores[(special > 0.9) & (special < 0.95)] = float("-inf")
        if trial % 2 == 0:
            scores[special > 0.97] = float("inf")
        labels = labels_from_scores(scores)
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(labels, scores.argmax(dim=0).numpy())
    scores = torch.randn(19, 64, 128, generator=generator).to(torch.bfloat16)
    np.testing.assert_array_equal(labels_from_scores(scores), scores.argmax(dim=0).numpy())
