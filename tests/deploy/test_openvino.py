"""OpenVINO IR export: dynamic sizes, the version stamp, parity with PyTorch, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from torch.nn import functional as F

import atrous
from atrous.deploy.openvino import export_openvino, read_openvino_metadata
from tests.conftest import run_cli_without

from .conftest import build_reference_model

# OpenVINO and NNCF run in-process here; see the `isolated` marker in pyproject.toml.
pytestmark = pytest.mark.isolated

REPO = Path(__file__).resolve().parents[2]


def _resized(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    resized = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)
    return resized[0].round().clamp(0, 255)


def _compile_f32(path: Path):
    # The CPU plugin runs float32 layers in bf16 where the processor has it, unless told not to;
    # parity is about the graph, so compare in float32.
    return ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


@pytest.mark.slow
def test_openvino_ir_matches_pytorch_at_two_sizes(
    tiny_cfg, reference_dir, reference_image, tmp_path
):
    # The (64, 128) crop gives the fixed (4, 8) image-pooling window sliding over larger maps,
    # the case the shipped configs have at test time.
    tiny_cfg.merge_from_list(["INPUT.CROP.ENABLED", "True", "INPUT.CROP.SIZE", "(64, 128)"])
    model = build_reference_model(tiny_cfg, reference_dir)
    xml = export_openvino(model, tmp_path / "out" / "model.xml", metadata={"classes": "a,b"})
    assert xml == tmp_path / "out" / "model.xml"
    assert sorted(p.name for p in xml.parent.iterdir()) == ["model.bin", "model.xml"]
    assert read_openvino_metadata(xml) == {
        "atrous_version": atrous.__version__,
        "torch_version": torch.__version__,
        "classes": "a,b",
    }
    ir = ov.Core().read_model(str(xml))
    shape = ir.input(0).get_partial_shape()
    assert [d.is_dynamic for d in shape] == [True, False, True, True] and shape[1].get_length() == 3
    assert ir.input(0).get_any_name() == "images" and ir.output(0).get_any_name() == "logits"
    # fp32 weights: no f16 constants (compress_to_fp16 off).
    assert not [op for op in ir.get_ops() if op.get_type_name() == "Constant"
                and op.get_element_type() == ov.Type.f16]  # fmt: skip

    compiled = _compile_f32(xml)
    for image in (reference_image.float(), _resized(reference_image, (150, 300))):
        with torch.no_grad():
            expected = model([{"image": image}])[0]["sem_seg"].numpy()
        got = compiled(image[None].numpy())[0][0]
        assert got.shape == expected.shape
        # Relative to the logit scale: OpenVINO's convolutions sum in another order than
        # PyTorch's (measured 4e-4 on logits of magnitude 8, i.e. 5e-5 of the scale).
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_openvino_export_needs_an_xml_path(reference_model, tmp_path):
    with pytest.raises(ValueError, match=r"\.xml"):
        export_openvino(reference_model, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_failed_openvino_export_leaves_no_files(reference_model, tmpfs):
    # A real full disk: the staged ONNX file (2.5 MB) fits, the IR's weights next to it do not.
    disk = tmpfs("4m")
    with pytest.raises(OSError, match=r"could not write .*model\.xml.*disk may be full"):
        export_openvino(reference_model, disk / "model.xml")
    assert list(disk.iterdir()) == []


def test_missing_openvino_names_the_extra(tmp_path):
    # A process where `import openvino` fails, as on an install without the extra.
    config = REPO / "configs" / "Synthetic" / "deeplab_v3_plus_R_50_quickstart.yaml"
    args = ["export", "--format", "openvino", "--output", str(tmp_path / "m.xml"),
            "--config-file", str(config)]  # fmt: skip
    proc = run_cli_without("openvino", args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'atrous[openvino]'" in lines[0], proc.stderr
    assert "'openvino'" in lines[0]
    assert list(tmp_path.iterdir()) == []
