"""benchmarks/profile_inference.py prints the operator table of a config's model."""

from __future__ import annotations

import importlib.util

import torch

from tests.helpers import REPO_ROOT


def test_profile_prints_the_convolutions_of_the_mobilenet_model(capsys):
    spec = importlib.util.spec_from_file_location(
        "profile_inference", REPO_ROOT / "benchmarks" / "profile_inference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = REPO_ROOT / "configs" / "Custom" / "deeplab_v3_plus_mobilenet_v3_large_cpu.yaml"
    threads = torch.get_num_threads()
    try:
        assert module.main(["--config-file", str(config), "--size", "64x96", "--dtype", "fp32",
                            "--threads", "1", "--iters", "1", "MODEL.MOBILENET.WIDTH_MULT", "0.5",
                            "INPUT.CROP.ENABLED", "False"]) == 0  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "convolution" in out and "Self CPU" in out
