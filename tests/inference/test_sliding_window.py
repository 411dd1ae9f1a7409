"""Sliding-window inference: whole-image equality, overlap averaging, window placement."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from atrous.inference.sliding_window import SlidingWindowInference, window_starts
from atrous.modeling import OutputTooLargeError


class _WindowCoordinates(nn.Module):
    """Toy segmentor whose logits are the pixel's column and row inside the input it is given,
    which makes the stitched result depend on where every window starts."""

    def forward(self, batched_inputs):
        out = []
        for x in batched_inputs:
            h, w = x["image"].shape[-2:]
            ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            logits = torch.stack([xs, ys]).float()
            out.append(
                {
                    "sem_seg": F.interpolate(
                        logits[None],
                        size=(x["height"], x["width"]),
                        mode="bilinear",
                        align_corners=False,
                    )[0]
                }
            )
        return out


class _Pointwise(nn.Module):
    """Per-pixel model: any tiling must reproduce whole-image inference."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 1)

    def forward(self, batched_inputs):
        return [{"sem_seg": self.conv(x["image"].float()[None])[0]} for x in batched_inputs]


def test_window_starts():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]  # the last window ends at the border
    assert window_starts(4, 4, 2) == [0]
    assert window_starts(3, 8, 2) == [0]
    with pytest.raises(ValueError):
        window_starts(10, 0, 1)


def test_window_covering_the_image_equals_whole_image_inference(model):
    image = torch.randint(0, 256, (3, 40, 72), dtype=torch.uint8)
    inp = [{"image": image, "height": 50, "width": 90}]
    with torch.no_grad():
        whole = model(inp)[0]["sem_seg"]
        for window in [(40, 72), (64, 128)]:
            slid = SlidingWindowInference(model, window=window, stride=(8, 8))(inp)[0]["sem_seg"]
            assert torch.equal(slid, whole)


def test_tiling_a_pointwise_model_equals_whole_image():
    model = _Pointwise().eval()
    image = torch.randint(0, 256, (3, 37, 53), dtype=torch.uint8)
    inp = [{"image": image, "height": 37, "width": 53}]
    with torch.no_grad():
        whole = model(inp)[0]["sem_seg"]
        slid = SlidingWindowInference(model, window=(16, 20), stride=(9, 11), batch_size=3)(inp)
    torch.testing.assert_close(slid[0]["sem_seg"], whole, atol=1e-5, rtol=1e-6)


def test_overlapping_logits_are_averaged():
    h, w, window, stride = 10, 13, (4, 6), (3, 4)
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    out = SlidingWindowInference(_WindowCoordinates(), window=window, stride=stride)(
        [{"image": image, "height": h, "width": w}]
    )[0]["sem_seg"]
    total = torch.zeros(2, h, w)
    count = torch.zeros(h, w)
    for y in window_starts(h, window[0], stride[0]):
        for x in window_starts(w, window[1], stride[1]):
            for yy in range(y, y + window[0]):
                for xx in range(x, x + window[1]):
                    total[0, yy, xx] += xx - x
                    total[1, yy, xx] += yy - y
                    count[yy, xx] += 1
    assert count.min() >= 1 and count.max() > 1
    torch.testing.assert_close(out, total / count)


def test_stitched_logits_are_resized_to_the_output_size(model):
    image = torch.randint(0, 256, (3, 48, 80), dtype=torch.uint8)
    inp = [{"image": image, "height": 60, "width": 100}]
    with torch.no_grad():
        out = SlidingWindowInference(model, window=(32, 48), stride=(16, 32), batch_size=2)(inp)
    logits = out[0]["sem_seg"]
    assert logits.shape == (19, 60, 100) and torch.isfinite(logits).all()


def test_stride_larger_than_window_is_refused():
    with pytest.raises(ValueError, match="skips pixels"):
        SlidingWindowInference(_Pointwise(), window=(8, 8), stride=(9, 4))


def test_stitched_output_over_the_budget_is_refused_before_any_window(model):
    calls = []
    model.backbone.register_forward_hook(lambda *args: calls.append(1))
    image = torch.randint(0, 256, (3, 40, 72), dtype=torch.uint8)
    # 19 classes x 80 x 144 x 4 bytes = 875520: the output size decides, not the window's
    wrapper = SlidingWindowInference(
        model, window=(32, 32), stride=(16, 16), max_output_bytes=875519
    )
    with torch.no_grad(), pytest.raises(OutputTooLargeError, match=r"TEST\.MAX_OUTPUT_MB"):
        wrapper([{"image": image, "height": 80, "width": 144, "file_name": "x.png"}])
    assert calls == []
    wrapper.max_output_bytes = 875520
    with torch.no_grad():
        out = wrapper([{"image": image, "height": 80, "width": 144}])
    assert out[0]["sem_seg"].shape == (19, 80, 144) and calls
