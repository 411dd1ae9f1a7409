import pytest
import torch
import torch.distributed as dist

from atrous.utils import comm


def test_default_backend_follows_the_model_device():
    assert comm.default_backend("cpu") == "gloo"
    expected = "nccl" if torch.cuda.is_available() else "gloo"
    assert comm.default_backend("cuda") == expected
    assert comm.default_backend("cuda:1") == expected
    assert comm.default_backend() == expected


def test_collective_device_is_the_cpu_without_a_group_and_under_gloo(tmp_path):
    assert comm.collective_device() == torch.device("cpu")
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        assert comm.collective_device() == torch.device("cpu")
        reduced = comm.all_reduce_sum(torch.ones(3).to(comm.collective_device()))
        assert reduced.tolist() == [1.0, 1.0, 1.0]
    finally:
        dist.destroy_process_group()
