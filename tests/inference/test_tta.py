"""Test-time augmentation: flip equivariance, identity at one scale, multi-scale averaging."""

from __future__ import annotations

import pytest
import torch

from atrous.inference.resize import resize_image, shortest_edge_size
from atrous.inference.tta import SemanticSegmentorWithTTA


def _probs(out):
    return out[0]["sem_seg"].softmax(dim=0)


def test_flip_averaging_is_symmetric_on_a_symmetric_image(model):
    half = torch.randint(0, 256, (3, 48, 32), dtype=torch.uint8)
    image = torch.cat([half, half.flip(-1)], dim=-1)  # mirror-symmetric (3, 48, 64)
    assert torch.equal(image, image.flip(-1))
    inp = [{"image": image, "height": 48, "width": 64}]
    with torch.no_grad():
        raw = model(inp)[0]["sem_seg"].softmax(dim=0)
        tta = _probs(SemanticSegmentorWithTTA(model, min_sizes=[48], max_size=4000, flip=True)(inp))
    # the network alone is not mirror-equivariant, so symmetry comes from flipping back
    assert not torch.allclose(raw, raw.flip(-1), atol=1e-3)
    torch.testing.assert_close(tta, tta.flip(-1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(tta, (raw + raw.flip(-1)) / 2, atol=1e-6, rtol=1e-5)


def test_tta_commutes_with_mirroring_the_input(model):
    image = torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8)
    tta = SemanticSegmentorWithTTA(model, min_sizes=[32, 40, 48], max_size=4000, flip=True)
    with torch.no_grad():
        a = _probs(tta([{"image": image, "height": 40, "width": 56}]))
        b = _probs(tta([{"image": image.flip(-1), "height": 40, "width": 56}]))
    torch.testing.assert_close(b, a.flip(-1), atol=1e-5, rtol=1e-4)


def test_single_scale_without_flip_is_the_model(model):
    image = torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8)
    inp = [{"image": image, "height": 40, "width": 56}]
    with torch.no_grad():
        expected = model(inp)[0]["sem_seg"].softmax(dim=0)
        got = _probs(
            SemanticSegmentorWithTTA(model, min_sizes=[40], max_size=4000, flip=False)(inp)
        )
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_multi_scale_is_the_mean_of_per_scale_probabilities(model):
    image = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)
    sizes = [24, 40, 56]
    tta = SemanticSegmentorWithTTA(model, min_sizes=sizes, max_size=80, flip=False)
    with torch.no_grad():
        out = tta([{"image": image, "height": 50, "width": 75}])[0]["sem_seg"]
        expected = []
        for s in sizes:
            resized = resize_image(image, shortest_edge_size(40, 60, s, 80))
            logits = model([{"image": resized, "height": 50, "width": 75}])[0]["sem_seg"]
            expected.append(logits.softmax(dim=0))
    probs = out.softmax(dim=0)
    assert probs.shape == (19, 50, 75)
    torch.testing.assert_close(probs.sum(0), torch.ones(50, 75))
    torch.testing.assert_close(probs, torch.stack(expected).mean(0), atol=1e-6, rtol=1e-4)
    # the scales really differ, so averaging is not trivially one of them
    assert not torch.allclose(expected[0], expected[2], atol=1e-3)


def test_shortest_edge_size_follows_detectron2():
    assert shortest_edge_size(1024, 2048, 1024, 2048) == (1024, 2048)
    assert shortest_edge_size(1024, 2048, 512, 4000) == (512, 1024)
    assert shortest_edge_size(100, 300, 200, 400) == (133, 400)  # long side capped
    assert shortest_edge_size(301, 200, 100, 1000) == (151, 100)  # 150.5 rounds half up
    assert shortest_edge_size(37, 53, 0, 10) == (37, 53)  # 0 disables resizing


def test_requires_sizes(model):
    with pytest.raises(ValueError, match="MIN_SIZES"):
        SemanticSegmentorWithTTA(model, min_sizes=[], max_size=10, flip=True)


def test_shortest_edge_size_agrees_with_the_data_pipeline():
    from atrous.data.transforms import resize_shortest_edge_shape

    for h, w, short, max_size in [(1024, 2048, 800, 1333), (375, 500, 512, 4096),
                                  (513, 511, 300, 320), (40, 60, 56, 80)]:  # fmt: skip
        assert shortest_edge_size(h, w, short, max_size) == resize_shortest_edge_shape(
            h, w, short, max_size
        )
