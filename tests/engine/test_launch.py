"""Real multi-process launches on CPU (gloo): spawn, torchrun-style env://, and a dying rank."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from atrous.engine.launch import find_free_port

_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    import torch
    import torch.distributed as dist
    from atrous.engine import launch
    from atrous.utils import comm

    def work(out_dir, mode):
        rank = comm.get_rank()
        if mode == "die" and rank == 1:
            os._exit(3)  # a crashed rank: no clean shutdown, no error message to the others
        if mode == "raise" and rank == 1:
            raise RuntimeError("rank 1 failed on purpose")
        t = torch.tensor([float(rank + 1)])
        comm.all_reduce_sum(t)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"rank": rank, "world": comm.get_world_size(),
                       "local": comm.get_local_rank(), "sum": t.item(),
                       "backend": dist.get_backend() if dist.is_initialized() else None}, f)
        return "done"

    if __name__ == "__main__":
        out_dir, mode, num = sys.argv[1], sys.argv[2], int(sys.argv[3])
        result = launch(work, num, args=(out_dir, mode))
        print("RESULT", result)
    """
)


def _write_script(tmp_path: Path) -> Path:
    script = tmp_path / "job.py"
    script.write_text(_SCRIPT)
    return script


def _env(**extra: str) -> dict[str, str]:
    # Neither torchrun's nor SLURM's variables of a surrounding job may leak into the runs.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK") and not k.startswith("SLURM_")
    }
    env.update(extra)
    return env


def test_spawn_two_gloo_processes(tmp_path: Path) -> None:
    script = _write_script(tmp_path)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "ok", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in results] == [0, 1]
    assert [r["local"] for r in results] == [0, 1]
    assert all(r["world"] == 2 and r["sum"] == 3.0 and r["backend"] == "gloo" for r in results)


def test_single_process_runs_inline(tmp_path: Path) -> None:
    script = _write_script(tmp_path)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "ok", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert "RESULT done" in proc.stdout
    assert json.loads((tmp_path / "rank0.json").read_text())["world"] == 1


def _torchrun_style(tmp_path: Path, mode: str, timeout_s: str = "60") -> list[subprocess.Popen]:
    script = _write_script(tmp_path)
    port = str(find_free_port())
    procs = []
    for rank in (0, 1):
        env = _env(
            RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            ATROUS_DIST_TIMEOUT=timeout_s,
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), str(tmp_path), mode, "8"],  # --num-gpus is ignored
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def test_torchrun_env_rendezvous(tmp_path: Path) -> None:
    procs = _torchrun_style(tmp_path, "ok")
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["sum"] == 3.0 for r in results)


@pytest.mark.slow
def test_dead_rank_makes_the_other_fail_in_bounded_time(tmp_path: Path) -> None:
    start = time.monotonic()
    procs = _torchrun_style(tmp_path, "die", timeout_s="10")
    outs = [p.communicate(timeout=90) for p in procs]
    elapsed = time.monotonic() - start
    assert procs[1].returncode == 3
    assert procs[0].returncode != 0, outs[0]
    assert not (tmp_path / "rank0.json").exists()
    assert elapsed < 60


def test_spawned_failure_is_reported(tmp_path: Path) -> None:
    script = _write_script(tmp_path)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "raise", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(ATROUS_DIST_TIMEOUT="10"),
    )
    assert proc.returncode != 0
    assert "rank 1 failed on purpose" in proc.stderr


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_machines": 2, "machine_rank": 0, "dist_url": "auto"}, "tcp://HOST:PORT"),
        ({"num_machines": 2, "machine_rank": 2, "dist_url": "tcp://1.2.3.4:5"}, "--machine-rank"),
        ({"num_machines": 0}, "at least 1"),
    ],
)
def test_bad_launch_arguments_are_clear(
    kwargs: dict, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from atrous.engine import launch

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    with pytest.raises(ValueError, match=re.escape(message)):
        launch(print, 1, **kwargs)


_REPORT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from atrous.data.errors import DatasetError
    from atrous.engine import launch
    from atrous.utils import comm

    def work():
        if comm.get_rank() == 1:
            raise DatasetError("rank 1: bad image")
        comm.synchronize()  # rank 0 fails too, as a victim, once rank 1 is gone

    if __name__ == "__main__":
        try:
            launch(work, 2)
        except Exception as error:
            print("TYPE", type(error).__name__)
            print("MESSAGE", error)
            print("CAUSE", type(error.__cause__).__name__, "rank 1" in str(error.__cause__))
    """
)


def test_a_spawned_ranks_exception_is_re_raised_in_the_parent(tmp_path: Path) -> None:
    script = tmp_path / "report.py"
    script.write_text(_REPORT_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(ATROUS_DIST_TIMEOUT="10"),
    )
    assert proc.returncode == 0, proc.stderr
    # The rank that raised first, not the first process to exit; the same type, so the command
    # line can report it as one line; its traceback is the cause.
    assert "TYPE DatasetError" in proc.stdout and "MESSAGE rank 1: bad image" in proc.stdout
    assert "CAUSE _RemoteTraceback True" in proc.stdout
    assert "Traceback" not in proc.stderr  # no rank prints its own without ATROUS_VERBOSE=1


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("gpu7", ["gpu7"]),
        ("node[01-03],gpu7", ["node01", "node02", "node03", "gpu7"]),
        ("n[1,3-4]", ["n1", "n3", "n4"]),
        ("rack[1-2]-n[08-09]", ["rack1-n08", "rack1-n09", "rack2-n08", "rack2-n09"]),
        ("a[9-10].lan,b", ["a9.lan", "a10.lan", "b"]),
    ],
)
def test_slurm_nodelist_expands_like_scontrol(nodelist: str, hosts: list[str]) -> None:
    from atrous.engine.launch import parse_slurm_nodelist

    assert parse_slurm_nodelist(nodelist) == hosts


@pytest.mark.parametrize("nodelist", ["node[01-03", "node]1[", "node[a-b]", "node[1-]"])
def test_bad_slurm_nodelist_is_clear(nodelist: str) -> None:
    from atrous.engine.launch import parse_slurm_nodelist

    with pytest.raises(ValueError, match="SLURM node list"):
        parse_slurm_nodelist(nodelist)


def _slurm(rank: int, **extra: str) -> dict[str, str]:
    return {"SLURM_JOB_ID": "777", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2",
            "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0",
            **extra}  # fmt: skip


def test_slurm_tasks_form_a_gloo_group(tmp_path: Path) -> None:
    # Two processes started the way srun starts them; --num-gpus (8) is ignored.
    script = _write_script(tmp_path)
    port = str(find_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path), "ok", "8"],
            env=_env(**_slurm(rank, MASTER_ADDR="127.0.0.1", MASTER_PORT=port)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in results] == [0, 1]
    assert [r["local"] for r in results] == [0, 1]
    assert all(r["world"] == 2 and r["sum"] == 3.0 and r["backend"] == "gloo" for r in results)


def test_slurm_rendezvous_address_and_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    from atrous.engine.launch import _slurm_env

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    slurm = _slurm(1, SLURM_JOB_NODELIST="node[03-04]", SLURM_NTASKS_PER_NODE="1")
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    env = _slurm_env()
    assert env == {"rank": 1, "world_size": 2, "local_rank": 1, "local_world_size": 1,
                   "init_method": "tcp://node03:20777", "per_process_binding": True}  # fmt: skip
    # Explicit MASTER_ADDR / MASTER_PORT win over the node list and the job id.
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.5")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert _slurm_env()["init_method"] == "tcp://10.0.0.5:29500"
    # The batch shell of sbatch (no job step) and one-task steps keep using the flags.
    monkeypatch.delenv("SLURM_STEP_ID")
    assert _slurm_env() is None
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert _slurm_env() is None


def test_torchrun_variables_win_over_slurm(tmp_path: Path) -> None:
    # torchrun inside an srun step: its RANK/WORLD_SIZE describe the group, SLURM's do not
    # (here SLURM claims 3 tasks, of which this would be the last; torchrun says 2).
    script = _write_script(tmp_path)
    port = str(find_free_port())
    procs = []
    for rank in (0, 1):
        env = _env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, **_slurm(2, SLURM_NTASKS="3"))  # fmt: skip
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), str(tmp_path), "ok", "1"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [json.loads((tmp_path / f"rank{r}.json").read_text())["world"] for r in (0, 1)] == [2, 2]


# -- which GPU each process of a launcher takes, on 1, 2 and 8 GPU machines ----------------------


def _gpu_of(place: dict, visible: int) -> int:
    from atrous.utils.devices import gpu_index_for_process

    return gpu_index_for_process(
        local_rank=place["local_rank"],
        local_world_size=place["local_world_size"],
        visible=visible,
        per_process_binding=place.get("per_process_binding", False),
    )


def _torchrun_vars(rank: int, world: int, per_node: int | None, **extra: str) -> dict[str, str]:
    env = {"RANK": str(rank), "WORLD_SIZE": str(world), **extra}
    if per_node is not None:
        env.update(LOCAL_RANK=str(rank % per_node), LOCAL_WORLD_SIZE=str(per_node))
    return env


@pytest.mark.parametrize("gpus", [1, 2, 8])
def test_torchrun_processes_take_the_gpu_of_their_local_rank(gpus: int) -> None:
    from atrous.engine.launch import _torchrun_env

    # Two machines of `gpus` GPUs each: on the second, rank gpus + i takes GPU i.
    for rank in range(2 * gpus):
        place = _torchrun_env(_torchrun_vars(rank, 2 * gpus, gpus))
        assert (place["rank"], place["world_size"]) == (rank, 2 * gpus)
        assert _gpu_of(place, gpus) == rank % gpus


def test_without_local_rank_the_global_rank_is_not_taken_for_one() -> None:
    from atrous.engine.launch import _torchrun_env
    from atrous.utils.devices import DeviceError

    # Rank 9 of 16 on the second 8-GPU machine, started by a launcher that sets no LOCAL_RANK:
    # GPU 9 does not exist, and rank 9's GPU is not GPU 9 % 8 unless the machines are equal.
    place = _torchrun_env(_torchrun_vars(9, 16, None))
    assert place["local_rank"] is None
    with pytest.raises(DeviceError, match="did not set LOCAL_RANK"):
        _gpu_of(place, 8)
    # One GPU per pod (a Kubeflow PyTorchJob with one process per pod): that GPU.
    assert _gpu_of(place, 1) == 0
    # MPI launchers say it their own way.
    place = _torchrun_env(
        {**_torchrun_vars(9, 16, None), "OMPI_COMM_WORLD_LOCAL_RANK": "1",
         "OMPI_COMM_WORLD_LOCAL_SIZE": "8"}
    )  # fmt: skip
    assert (place["local_rank"], place["local_world_size"]) == (1, 8)
    assert _gpu_of(place, 8) == 1


def _slurm_vars(proc: int, *, nodes: int, per_node: int) -> dict[str, str]:
    return {
        "SLURM_PROCID": str(proc),
        "SLURM_LOCALID": str(proc % per_node),
        "SLURM_STEP_ID": "0",
        "SLURM_NTASKS": str(nodes * per_node),
        "SLURM_STEP_TASKS_PER_NODE": f"{per_node}(x{nodes})",
        "SLURM_JOB_NODELIST": f"gpu[01-{nodes:02d}]",
        "SLURM_JOB_ID": "4242",
    }


@pytest.mark.parametrize("gpus", [2, 8])
def test_slurm_tasks_sharing_a_node_take_the_gpu_of_their_local_id(gpus: int) -> None:
    from atrous.engine.launch import _slurm_env

    for proc in range(2 * gpus):  # srun --ntasks-per-node=gpus --gres=gpu:gpus on two nodes
        place = _slurm_env(_slurm_vars(proc, nodes=2, per_node=gpus))
        assert place["rank"] == proc and place["local_world_size"] == gpus
        assert _gpu_of(place, gpus) == proc % gpus


def test_slurm_tasks_bound_to_one_gpu_each_all_take_their_own() -> None:
    from atrous.engine.launch import _slurm_env

    # srun --gpus-per-task=1: every task sees exactly one GPU while SLURM_LOCALID runs 0..7.
    for proc in range(16):
        place = _slurm_env(_slurm_vars(proc, nodes=2, per_node=8))
        assert place["local_rank"] == proc % 8
        assert _gpu_of(place, 1) == 0


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, (16, 8)),  # --num-gpus 8 --num-machines 2
        (_torchrun_vars(3, 4, 4), (4, 4)),  # torchrun --nproc-per-node 4: flags ignored
        (_slurm_vars(0, nodes=2, per_node=2), (4, 2)),
    ],
)
def test_process_counts_follow_the_launcher(environ: dict, expected: tuple[int, int]) -> None:
    from atrous.engine.launch import process_counts

    assert process_counts(8, 2, environ) == expected


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="needs fewer than 2 visible GPUs")
def test_num_gpus_above_the_visible_gpus_is_refused_before_spawning() -> None:
    # On this CPU machine NCCL cannot start: asking `launch` for it with 2 processes must fail
    # in the parent, before any process exists, with the count in the message.
    from atrous.engine.launch import launch
    from atrous.utils.devices import DeviceError

    with pytest.raises(DeviceError, match=r"--num-gpus 2 asks for one GPU per process"):
        launch(print, 2, backend="nccl", args=("spawned",))
