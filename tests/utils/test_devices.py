"""Device choice: MODEL.DEVICE x visible GPUs x processes per machine, answered on CPU."""

from __future__ import annotations

import logging

import pytest
import torch

from atrous.config import get_cfg
from atrous.utils import devices
from atrous.utils.devices import (
    DeviceError,
    check_num_gpus,
    choose_device,
    gpu_index_for_process,
    pin_memory_for,
    resolve_device,
)


def test_the_default_is_auto_as_detectron2s_cuda_is_on_a_gpu_machine() -> None:
    # detectron2 defaults to "cuda": the seed's commands, which never set MODEL.DEVICE, train on
    # the GPUs. "auto" does the same where GPUs exist and still runs on a CPU-only machine.
    assert get_cfg().MODEL.DEVICE == "auto"
    assert choose_device("auto", cuda_count=8, processes_per_machine=8) == "cuda"
    assert choose_device("auto", cuda_count=1) == "cuda"
    assert choose_device("auto", cuda_count=0, processes_per_machine=8) == "cpu"


@pytest.mark.parametrize("cuda_count", [0, 1, 2, 8])
def test_cpu_is_always_the_cpu(cuda_count: int) -> None:
    assert choose_device("cpu", cuda_count=cuda_count, processes_per_machine=4) == "cpu"


def test_explicit_cuda_without_a_gpu_stays_an_error() -> None:
    for requested in ("cuda", "cuda:0"):
        with pytest.raises(DeviceError, match=r"sees no CUDA device: pass MODEL\.DEVICE cpu"):
            choose_device(requested, cuda_count=0)


@pytest.mark.parametrize("cuda_count", [1, 2, 8])
def test_cuda_means_the_process_gpu(cuda_count: int) -> None:
    assert choose_device("cuda", cuda_count=cuda_count, processes_per_machine=cuda_count) == "cuda"


def test_cuda_index_for_one_process_and_refused_for_several() -> None:
    assert choose_device("cuda:1", cuda_count=2) == "cuda:1"
    with pytest.raises(DeviceError, match=r"only 2 CUDA device\(s\) are visible"):
        choose_device("cuda:2", cuda_count=2)
    # Eight processes told "cuda:3" would all train on GPU 3 (or clash with DDP's device_ids).
    with pytest.raises(DeviceError, match=r"all 8 processes.*use MODEL\.DEVICE cuda"):
        choose_device("cuda:3", cuda_count=8, processes_per_machine=8)


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:x", "cpu:0", "", None, 0, "auto:1"])
def test_malformed_values_are_refused(bad: object) -> None:
    with pytest.raises(DeviceError, match="must be 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        choose_device(bad, cuda_count=8)


def test_num_gpus_above_the_visible_gpus_is_refused() -> None:
    check_num_gpus(8, device="cuda", cuda_count=8)
    check_num_gpus(2, device="cuda", cuda_count=8)
    check_num_gpus(8, device="cpu", cuda_count=0)  # CPU processes share the cores
    with pytest.raises(DeviceError, match=r"--num-gpus 8 .* only 2 are visible"):
        check_num_gpus(8, device="cuda", cuda_count=2)


# -- which GPU a process takes ------------------------------------------------------------------


@pytest.mark.parametrize("visible", [2, 8])
def test_processes_sharing_a_machine_take_the_gpu_of_their_local_rank(visible: int) -> None:
    for local_rank in range(visible):
        assert (
            gpu_index_for_process(local_rank=local_rank, local_world_size=visible, visible=visible)
            == local_rank
        )


def test_one_process_on_a_machine_takes_gpu_zero_whatever_its_count() -> None:
    for visible in (1, 2, 8):
        assert gpu_index_for_process(local_rank=0, local_world_size=1, visible=visible) == 0
    # One GPU and no word from the launcher: that GPU.
    assert gpu_index_for_process(local_rank=None, local_world_size=None, visible=1) == 0


def test_a_gpu_bound_per_task_is_taken_whatever_the_local_rank() -> None:
    # srun --gpus-per-task=1: each of 8 tasks sees one GPU (device_count() == 1) while
    # SLURM_LOCALID runs 0..7.
    for local_rank in range(8):
        index = gpu_index_for_process(
            local_rank=local_rank, local_world_size=8, visible=1, per_process_binding=True
        )
        assert index == 0


def test_more_processes_than_gpus_on_a_machine_are_refused() -> None:
    with pytest.raises(DeviceError, match=r"8 processes run on this machine but only 2"):
        gpu_index_for_process(local_rank=1, local_world_size=8, visible=2)
    # Without binding, eight processes on one visible GPU would share it.
    with pytest.raises(DeviceError, match=r"8 processes run on this machine but only 1"):
        gpu_index_for_process(local_rank=0, local_world_size=8, visible=1)
    with pytest.raises(DeviceError, match="Local rank 2 has no GPU: only 2 visible"):
        gpu_index_for_process(local_rank=2, local_world_size=None, visible=2)


def test_an_unknown_local_rank_with_several_gpus_is_refused_not_guessed() -> None:
    with pytest.raises(DeviceError, match="did not set LOCAL_RANK"):
        gpu_index_for_process(local_rank=None, local_world_size=None, visible=8)
    with pytest.raises(DeviceError, match="sees no CUDA device"):
        gpu_index_for_process(local_rank=0, local_world_size=1, visible=0)


# -- this machine -------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU fallback needs a machine without")
def test_auto_falls_back_to_the_cpu_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(devices, "_said_cpu_fallback", False)
    with caplog.at_level(logging.INFO, logger="atrous.utils.devices"):
        assert resolve_device("auto") == torch.device("cpu")
        assert resolve_device("auto") == torch.device("cpu")
        assert resolve_device("cpu") == torch.device("cpu")
    lines = [r.getMessage() for r in caplog.records if "running on the CPU" in r.getMessage()]
    assert len(lines) == 1 and "MODEL.DEVICE auto" in lines[0]


def test_pinned_memory_only_for_gpus() -> None:
    assert pin_memory_for("cuda") and pin_memory_for(torch.device("cuda", 3))
    assert not pin_memory_for("cpu")


@pytest.fixture
def restore_float32_precision():
    matmul, tf32 = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    yield
    torch.set_float32_matmul_precision(matmul)
    torch.backends.cudnn.allow_tf32 = tf32


@pytest.mark.usefixtures("restore_float32_precision")
def test_float32_precision_is_applied_not_ignored() -> None:
    from atrous.utils.devices import apply_float32_precision

    apply_float32_precision("high")
    assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
    apply_float32_precision("highest")
    assert torch.get_float32_matmul_precision() == "highest"
    assert not torch.backends.cudnn.allow_tf32  # IEEE convolutions too
    apply_float32_precision("")  # PyTorch's defaults stay as they are
    assert torch.get_float32_matmul_precision() == "highest"
    with pytest.raises(DeviceError, match="FLOAT32_PRECISION is 'tf32'"):
        apply_float32_precision("tf32")


def test_float32_precision_is_checked_with_the_config() -> None:
    from atrous.config import ConfigError
    from atrous.config.validate import validate_config

    cfg = get_cfg()
    cfg.FLOAT32_PRECISION = "tf32"
    with pytest.raises(ConfigError, match="FLOAT32_PRECISION is 'tf32'; it must be one of"):
        validate_config(cfg, check_device=False)
