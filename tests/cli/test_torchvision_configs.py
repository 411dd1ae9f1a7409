"""The torchvision configs through the commands: export, predict and bundles like any config."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from atrous.cli.main import main
from tests.helpers import REPO_ROOT, TORCHVISION_REFERENCE_DIR

# The 21 Pascal VOC classes of torchvision's segmentation weights, in their order.
# fmt: off
VOC_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)
# fmt: on

CONFIG = REPO_ROOT / "configs" / "torchvision" / "deeplabv3_mobilenet_v3_large.yaml"
# The reference's width (tests/fixtures/torchvision/README.md), its weights, no test-time resize.
NARROW = [
    "MODEL.MOBILENET.WIDTH_MULT", "0.5",
    "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "32",
    "MODEL.PIXEL_MEAN", "[0, 0, 0]",
    "MODEL.PIXEL_STD", "[1, 1, 1]",
    "INPUT.MIN_SIZE_TEST", "0",
    "MODEL.DEVICE", "cpu",
]  # fmt: skip
WEIGHTS = ["MODEL.WEIGHTS", str(TORCHVISION_REFERENCE_DIR / "deeplabv3_mobilenet_v3.safetensors")]


def _photos(folder, sizes):
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i, size in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def _labels(folder, name):
    with Image.open(folder / f"{name}_labels.png") as image:
        return np.asarray(image), image.getpalette()[: 3 * 21]


@pytest.mark.slow  # ONNX tracing and a bundle (~30 s)
def test_export_and_predict_with_a_narrow_torchvision_config(tmp_path, capsys):
    photos = tmp_path / "photos"
    _photos(photos, [(64, 96), (75, 131)])  # the second is no multiple of the stride
    base = ["--config-file", str(CONFIG)]
    torch_out, onnx_out, bundle_out = tmp_path / "torch", tmp_path / "onnx", tmp_path / "bundle"
    assert main(["predict", *base, "--input", str(photos), "--output", str(torch_out),
                 *NARROW, *WEIGHTS]) == 0  # fmt: skip
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", "--format", "onnx", *base, "--output", str(onnx_file),
                 *NARROW, *WEIGHTS]) == 0  # fmt: skip
    assert main(["predict", *base, "--model", str(onnx_file), "--input", str(photos),
                 "--output", str(onnx_out), *NARROW]) == 0  # fmt: skip
    model_dir = tmp_path / "my_model"
    assert main(["export", "--format", "bundle", *base, "--output", str(model_dir),
                 *NARROW, *WEIGHTS]) == 0  # fmt: skip
    assert main(["predict", "--model", str(model_dir), "--input", str(photos),
                 "--output", str(bundle_out)]) == 0  # fmt: skip

    meta = json.loads((model_dir / "bundle.json").read_text())
    assert meta["classes"] == list(VOC_NAMES)  # the config's VOC names and colours
    assert meta["architecture"]["backbone_title"] == "MobileNetV3-Large (width 0.5)"
    card = (model_dir / "README.md").read_text()
    assert "on a MobileNetV3-Large (width 0.5) backbone" in card and "ResNet" not in card
    for name in ("0", "1"):
        expected, palette = _labels(torch_out, name)
        # VOC's palette: background black, aeroplane dark red, ...
        assert palette[:6] == [0, 0, 0, 128, 0, 0]
        for run in (onnx_out, bundle_out):
            got, got_palette = _labels(run, name)
            assert got.shape == expected.shape and got_palette == palette
            # ONNX Runtime's kernels differ in the last bits; near-ties may flip
            assert (got == expected).mean() >= 0.995, (run, name)
