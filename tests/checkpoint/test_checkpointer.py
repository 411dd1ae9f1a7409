"""Checkpointer.load on every supported format, bad input, and atomic save / resume."""

from __future__ import annotations

import io
import logging
import os
import pickle
import random
import re
import socket
import tarfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from atrous.checkpoint import (
    Checkpointer,
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    UnsafePickleError,
)

from .hostile import Reduce
from .toy import ToySegmentor, d2_pickle, numpy_state


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------------------------- formats


def test_detectron2_zoo_pkl_loads_everything(tmp_path, caplog):
    source = ToySegmentor()
    path = d2_pickle(tmp_path / "model_final.pkl", numpy_state(source))
    target = ToySegmentor()
    with caplog.at_level(logging.INFO, logger="atrous.checkpoint"):
        report = Checkpointer(target).load(path)
    _assert_same_weights(source, target)
    assert report.ok and report.matching_heuristics
    assert len(report.matched) == len(target.state_dict())
    assert f"from {path} (matched by suffix): 0 missing, 0 unexpected" in caplog.text


def test_backbone_only_pkl_loads_by_suffix(tmp_path):
    source = ToySegmentor()
    backbone = {
        k[len("backbone.") :]: v
        for k, v in numpy_state(source).items()
        if k.startswith("backbone.")
    }
    path = d2_pickle(tmp_path / "R-103.pkl", backbone)
    target = ToySegmentor()
    report = Checkpointer(target).load(path)
    assert report.matched == sorted(k for k in target.state_dict() if k.startswith("backbone."))
    assert report.missing == ["sem_seg_head.predictor.bias", "sem_seg_head.predictor.weight"]
    assert report.unexpected == []
    torch.testing.assert_close(
        target.backbone.res2[0].conv1.weight, source.backbone.res2[0].conv1.weight
    )


def test_caffe2_pkl_without_author_drops_momentum_and_converts_names(tmp_path):
    source = ToySegmentor()
    blobs = {
        "conv1_w": source.backbone.stem.conv1.weight.detach().numpy(),
        "conv1_w_momentum": np.zeros(1),
        "res2_0_branch2a_w": source.backbone.res2[0].conv1.weight.detach().numpy(),
        "res2_0_branch2a_bn_s": np.full(4, 2.0, np.float32),
        "fc1000_w": np.zeros((10, 4), np.float32),
    }
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
    target = ToySegmentor()
    report = Checkpointer(target).load(path)
    assert report.matched == [
        "backbone.res2.0.conv1.norm.weight",
        "backbone.res2.0.conv1.weight",
        "backbone.stem.conv1.weight",
    ]
    assert report.unexpected == ["fc1000_w"]  # the momentum blob is gone, not unexpected
    torch.testing.assert_close(target.backbone.stem.conv1.weight, source.backbone.stem.conv1.weight)
    assert torch.all(target.backbone.res2[0].conv1.norm.weight == 2.0)


def test_raw_pkl_dict_with_module_names(tmp_path):
    # No "__author__": treated as a Caffe2-era file (suffix matching), yet PyTorch names such as
    # `norm.running_mean` survive the Caffe2 renaming.
    source = ToySegmentor()
    path = tmp_path / "raw.pkl"
    path.write_bytes(pickle.dumps(numpy_state(source), protocol=2))
    target = ToySegmentor()
    report = Checkpointer(target).load(path)
    assert report.ok and report.matching_heuristics
    _assert_same_weights(source, target)


def test_plain_state_dict_pth(tmp_path):
    source = ToySegmentor()
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    target = ToySegmentor()
    report = Checkpointer(target).load(str(path))
    assert report.ok and not report.matching_heuristics
    _assert_same_weights(source, target)


def test_model_dict_pth_and_module_prefix(tmp_path):
    source = ToySegmentor()
    path = tmp_path / "ddp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    target = ToySegmentor()
    assert Checkpointer(target).load(path).ok
    _assert_same_weights(source, target)


def test_pth_matching_heuristics_query(tmp_path):
    source = ToySegmentor()
    path = tmp_path / "backbone.pth"
    state = {k[len("backbone.") :]: v for k, v in source.state_dict().items() if "backbone" in k}
    torch.save(state, path)
    assert Checkpointer(ToySegmentor()).load(path).matched == []
    report = Checkpointer(ToySegmentor()).load(f"{path}?matching_heuristics=True")
    assert len(report.matched) == len(state)


def test_empty_path_loads_nothing():
    model = ToySegmentor()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = Checkpointer(model).load("")
    assert report.matched == [] and report.path == ""
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_num_batches_tracked_and_non_persistent_buffers_are_not_problems(tmp_path):
    # A BN checkpoint (with num_batches_tracked and an old pixel_mean) into a FrozenBN-like
    # model that has neither, and a BN model from a file without counters.
    class FrozenLike(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            for name in ("weight", "bias", "running_mean", "running_var"):
                self.register_buffer(name, torch.ones(n))

    weights = numpy_state(ToySegmentor())
    weights["pixel_mean"] = np.zeros((3, 1, 1), np.float32)
    frozen = Checkpointer(ToySegmentor(norm=FrozenLike)).load(
        d2_pickle(tmp_path / "bn.pkl", weights)
    )
    assert frozen.ok, frozen.summary()
    assert "pixel_mean" in frozen.ignored
    assert "backbone.stem.conv1.norm.num_batches_tracked" in frozen.ignored

    no_counters = {k: v for k, v in weights.items() if "num_batches_tracked" not in k}
    bn = Checkpointer(ToySegmentor()).load(d2_pickle(tmp_path / "nocount.pkl", no_counters))
    assert bn.ok, bn.summary()


def test_shape_mismatch_is_reported_not_loaded(tmp_path):
    source = ToySegmentor()
    target = ToySegmentor()
    before = target.backbone.stem.conv1.weight.clone()
    state = source.state_dict()
    state["backbone.stem.conv1.weight"] = torch.zeros(4, 3, 5, 5)  # another kernel size
    torch.save(state, tmp_path / "other_kernel.pth")
    report = Checkpointer(target).load(tmp_path / "other_kernel.pth")
    assert report.shape_mismatched == ["backbone.stem.conv1.weight"]
    assert report.shapes["backbone.stem.conv1.weight"] == ((4, 3, 5, 5), (4, 3, 3, 3))
    assert report.missing == [] and report.unexpected == [] and report.reinitialised == []
    assert torch.equal(target.backbone.stem.conv1.weight, before)
    assert "checkpoint (4, 3, 5, 5), model (4, 3, 3, 3)" in report.summary()


def test_another_class_count_leaves_the_predictor_to_fine_tuning(tmp_path):
    source = ToySegmentor(num_classes=5)
    target = ToySegmentor(num_classes=3)
    before = target.sem_seg_head.predictor.weight.clone()
    torch.save(source.state_dict(), tmp_path / "other_classes.pth")
    report = Checkpointer(target).load(tmp_path / "other_classes.pth")
    assert report.reinitialised == ["sem_seg_head.predictor.bias", "sem_seg_head.predictor.weight"]
    assert report.shape_mismatched == [] and report.class_counts() == (5, 3)
    assert report.shapes["sem_seg_head.predictor.weight"] == ((5, 4, 1, 1), (3, 4, 1, 1))
    assert report.missing == [] and report.unexpected == [] and not report.ok
    assert torch.equal(target.sem_seg_head.predictor.weight, before)
    assert report.fine_tuning_start() == (
        f"Loaded 18 of 20 model entries from {tmp_path / 'other_classes.pth'}; the predictor is "
        "re-initialised for 3 classes (the checkpoint has 5), as fine-tuning to other classes "
        "needs."
    )
    assert "checkpoint (5, 4, 1, 1), model (3, 4, 1, 1)" in report.summary()
    with pytest.raises(CheckpointError, match="strict loading"):
        Checkpointer(ToySegmentor(num_classes=3)).load(tmp_path / "other_classes.pth", strict=True)


# -------------------------------------------------------------------------------- bad input


def test_missing_path_says_what_to_pass(tmp_path):
    path = tmp_path / "nope" / "model_final.pth"
    with pytest.raises(CheckpointNotFoundError) as info:
        Checkpointer(ToySegmentor()).load(path)
    message = str(info.value)
    assert str(path) in message and "does not exist" in message and "model-zoo name" in message
    assert isinstance(info.value, FileNotFoundError)


def test_truncated_pkl(tmp_path):
    data = pickle.dumps({"model": numpy_state(ToySegmentor()), "__author__": "x"}, protocol=2)
    path = tmp_path / "cut.pkl"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CorruptCheckpointError, match="truncated or corrupt") as info:
        Checkpointer(ToySegmentor()).load(path)
    assert str(path) in str(info.value)


def test_truncated_pth(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save(ToySegmentor().state_dict(), path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CorruptCheckpointError, match="truncated") as info:
        Checkpointer(ToySegmentor()).load(path)
    assert str(path) in str(info.value) and "Delete it" in str(info.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.touch()
    with pytest.raises(CorruptCheckpointError, match="is empty"):
        Checkpointer(ToySegmentor()).load(path)


def test_malicious_pkl_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": _RunsShell(marker)}, "__author__": "x"}))
    with pytest.raises(UnsafePickleError, match="nothing in it was executed"):
        Checkpointer(ToySegmentor()).load(path)
    assert not marker.exists()


def test_malicious_pth_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": ToySegmentor().state_dict(), "hook": _RunsShell(marker)}, path)
    with pytest.raises(UnsafePickleError) as info:
        Checkpointer(ToySegmentor()).load(path)
    assert not marker.exists()
    assert str(path) in str(info.value) and "system" in str(info.value)


def test_pickled_model_object_is_refused(tmp_path):
    path = tmp_path / "whole_model.pth"
    torch.save(ToySegmentor(), path)
    with pytest.raises(UnsafePickleError, match="ToySegmentor"):
        Checkpointer(ToySegmentor()).load(path)


def test_other_architecture_reports_without_crash_unless_strict(tmp_path, caplog):
    other = {"encoder.layer1.weight": np.zeros((4, 4), np.float32), "decoder.out.bias": np.ones(2)}
    path = d2_pickle(tmp_path / "other.pkl", other)
    model = ToySegmentor()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="atrous.checkpoint"):
        report = Checkpointer(model).load(path)
    assert report.matched == [] and len(report.unexpected) == 2
    assert len(report.missing) == len([k for k in before if "num_batches" not in k])
    assert "another architecture" in caplog.text
    assert f"Loaded 0 of {len(report.missing)} model entries" in report.summary()

    with pytest.raises(CheckpointError, match="strict") as info:
        Checkpointer(model).load(path, strict=True)
    assert "2 unexpected" in str(info.value)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_strict_accepts_an_exact_fit(tmp_path):
    path = tmp_path / "exact.pth"
    torch.save(ToySegmentor().state_dict(), path)
    assert Checkpointer(ToySegmentor()).load(path, strict=True).ok


# ------------------------------------------------------------------------ save and resume


def _training_objects():
    model = ToySegmentor()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return model, opt, sched


def _train_step(model, opt, sched):
    loss = sum(p.square().sum() for p in model.parameters())
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def test_save_and_resume_restores_everything(tmp_path):
    model, opt, sched = _training_objects()
    for _ in range(3):
        _train_step(model, opt, sched)
    ckpt = Checkpointer(model, tmp_path, optimizer=opt, scheduler=sched)
    path = ckpt.save("model_0000002", iteration=2, note="x")
    assert path == tmp_path / "model_0000002.pth"
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000002.pth"]
    # Readable without executing anything.
    raw = torch.load(path, weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng_state", "iteration", "note"} <= raw.keys()

    expected_random = (random.random(), np.random.rand(), torch.rand(1))
    model2, opt2, sched2 = _training_objects()
    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    ckpt2 = Checkpointer(model2, tmp_path, optimizer=opt2, scheduler=sched2)
    assert ckpt2.has_checkpoint()
    assert ckpt2.get_checkpoint_file() == str(path)
    extra = ckpt2.resume_or_load("ignored-when-resuming.pkl", resume=True)
    assert extra == {"iteration": 2, "note": "x"}
    _assert_same_weights(model, model2)
    assert sched2.state_dict() == sched.state_dict()
    assert torch.equal(
        opt2.state_dict()["state"][0]["momentum_buffer"],
        opt.state_dict()["state"][0]["momentum_buffer"],
    )
    assert (random.random(), np.random.rand()) == expected_random[:2]
    assert torch.equal(torch.rand(1), expected_random[2])
    assert ckpt2.last_report is not None and ckpt2.last_report.checkpointables == [
        "optimizer",
        "scheduler",
    ]


def test_resume_without_checkpoint_loads_weights_only(tmp_path):
    source, _, _ = _training_objects()
    weights = tmp_path / "init.pth"
    torch.save({"model": source.state_dict(), "iteration": 500}, weights)
    model, opt, sched = _training_objects()
    ckpt = Checkpointer(model, tmp_path / "out", optimizer=opt, scheduler=sched)
    assert not ckpt.has_checkpoint() and ckpt.get_checkpoint_file() == ""
    assert ckpt.resume_or_load(weights, resume=True) == {}  # never the file's iteration
    _assert_same_weights(source, model)


def test_last_checkpoint_naming_a_deleted_file(tmp_path):
    ckpt = Checkpointer(ToySegmentor(), tmp_path)
    ckpt.save("model_0000009")
    (tmp_path / "model_0000009.pth").unlink()
    with pytest.raises(CheckpointNotFoundError, match=r"delete .*last_checkpoint"):
        ckpt.resume_or_load("", resume=True)


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = ToySegmentor()
    ckpt = Checkpointer(model, tmp_path)
    good = ckpt.save("model_final", iteration=1)
    content = good.read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save("model_final", iteration=2)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save("model_0000002", iteration=2)
    assert good.read_bytes() == content
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


def test_unserialisable_extra_is_rejected_before_writing(tmp_path):
    ckpt = Checkpointer(ToySegmentor(), tmp_path)
    with pytest.raises(CheckpointError, match=r"Cannot save m\['stats'\].*numpy"):
        ckpt.save("m", stats=np.zeros(3))
    assert os.listdir(tmp_path) == []


def test_save_needs_a_directory_and_reserved_names():
    with pytest.raises(CheckpointError, match="save_dir"):
        Checkpointer(ToySegmentor()).save("x")
    with pytest.raises(ValueError, match="reserved"):
        Checkpointer(
            ToySegmentor(), "unused", optimizer=torch.optim.SGD([torch.zeros(1)], 0.1)
        ).save("x", optimizer=1)


def test_not_writing_process_saves_nothing(tmp_path):
    ckpt = Checkpointer(ToySegmentor(), tmp_path, save_to_disk=False)
    assert ckpt.save("model_final") is None
    assert ckpt.prune(1) == []
    assert os.listdir(tmp_path) == []


def test_prune_never_deletes_the_resume_target(tmp_path):
    ckpt = Checkpointer(ToySegmentor(), tmp_path)
    for it in (1, 2, 3):
        ckpt.save(f"model_{it:07d}")
    ckpt.tag_last_checkpoint("model_0000001.pth")
    ckpt.prune(1)
    assert sorted(os.listdir(tmp_path)) == [
        "last_checkpoint",
        "model_0000001.pth",
        "model_0000003.pth",
    ]


def _save_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        torch.manual_seed(0)  # same weights on both ranks, as after DDP's broadcast
        ckpt = Checkpointer(ToySegmentor(), out_dir)
        written = ckpt.save("model_0000000", iteration=0)
        assert (written is not None) == (rank == 0)
        dist.barrier()
        assert ckpt.resume_or_load("", resume=True) == {"iteration": 0}
    finally:
        dist.destroy_process_group()


def test_only_rank_zero_writes_under_torch_distributed(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_save_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000000.pth"]


def test_torch_file_holding_numpy_arrays(tmp_path):
    source = ToySegmentor()
    path = tmp_path / "numpy_inside.pth"
    torch.save({"model": numpy_state(source)}, path)
    target = ToySegmentor()
    assert Checkpointer(target).load(path).ok
    _assert_same_weights(source, target)


def test_plain_pickle_under_a_pth_name(tmp_path):
    source = ToySegmentor()
    path = tmp_path / "pickled.pth"
    path.write_bytes(pickle.dumps(numpy_state(source), protocol=4))
    target = ToySegmentor()
    report = Checkpointer(target).load(path)
    assert report.ok and not report.matching_heuristics
    _assert_same_weights(source, target)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="is a directory"):
        Checkpointer(ToySegmentor()).load(tmp_path)


# ------------------------------------------------------------ damaged and malformed files


def _write(path, data):
    if path.suffix == ".pkl":
        path.write_bytes(pickle.dumps(data, protocol=2))
    else:
        torch.save(data, path)
    return path


_BIAS = "sem_seg_head.predictor.bias"


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ([1.0, 2.0, 3.0], f"the weight {_BIAS!r} is a list ([1.0, 2.0, 3.0]), not an array"),
        (None, f"the weight {_BIAS!r} is None, not an array or tensor"),
        ({"w": np.zeros(3)}, f"the weight {_BIAS!r} is a dict ({{'w': array("),
        ("0.5", f"the weight {_BIAS!r} is a str ('0.5'), not an array"),
    ],
)
def test_weights_that_are_not_arrays_name_the_key(tmp_path, suffix, value, fragment):
    weights = {**numpy_state(ToySegmentor()), _BIAS: value}
    path = _write(tmp_path / f"odd{suffix}", {"model": weights, "__author__": "x"})
    with pytest.raises(CorruptCheckpointError) as info:
        Checkpointer(ToySegmentor()).load(path)
    assert str(info.value).startswith(f"{path}: ") and fragment in str(info.value)


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_string_arrays_are_refused_naming_the_key(tmp_path, suffix):
    weights = {**numpy_state(ToySegmentor()), _BIAS: np.array(["a", "b", "c"])}
    path = _write(tmp_path / f"strings{suffix}", {"model": weights, "__author__": "x"})
    with pytest.raises(UnsafePickleError) as info:
        Checkpointer(ToySegmentor()).load(path)
    message = str(info.value)
    assert f"Refusing to load {path}: entry ['model'][{_BIAS!r}]" in message
    assert "dtype '<U1' (unicode strings)" in message or "dtype 'U1'" in message


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_non_string_keys_and_non_dict_parts_are_named(tmp_path, suffix):
    path = _write(tmp_path / f"intkey{suffix}", {"model": {3: np.zeros(3)}, "__author__": "x"})
    with pytest.raises(CorruptCheckpointError, match="has the key 3 of type int"):
        Checkpointer(ToySegmentor()).load(path)
    path = _write(tmp_path / f"nomodel{suffix}", {"model": None, "__author__": "x"})
    with pytest.raises(CorruptCheckpointError, match="the 'model' entry is None, not a dict"):
        Checkpointer(ToySegmentor()).load(path)


def test_blobs_that_are_not_a_dict_are_named(tmp_path):
    path = _write(tmp_path / "caffe2.pkl", {"blobs": [1, 2]})
    with pytest.raises(CorruptCheckpointError, match=r"the 'blobs' entry is a list \(\[1, 2\]\)"):
        Checkpointer(ToySegmentor()).load(path)


def test_big_endian_and_fortran_arrays_load(tmp_path):
    source = ToySegmentor()
    weights = {}
    for key, value in numpy_state(source).items():
        value = value.astype(value.dtype.newbyteorder(">"))
        weights[key] = np.asfortranarray(value) if value.ndim > 1 else value
    target = ToySegmentor()
    assert Checkpointer(target).load(d2_pickle(tmp_path / "be.pkl", weights)).ok
    _assert_same_weights(source, target)


@pytest.mark.parametrize("kind", ["sparse", "meta"])
def test_tensors_that_cannot_be_weights_name_the_key(tmp_path, kind):
    dense = torch.zeros(3)
    value = {
        "sparse": dense.to_sparse(),
        "meta": torch.zeros(3, device="meta"),
    }[kind]
    path = tmp_path / f"{kind}.pth"
    torch.save({**ToySegmentor().state_dict(), _BIAS: value}, path)
    with pytest.raises(CorruptCheckpointError) as info:
        Checkpointer(ToySegmentor()).load(path)
    assert f"{path}: the weight {_BIAS!r} is a Tensor with layout" in str(info.value)
    assert "only dense CPU tensors can be loaded" in str(info.value)


@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_zero_filled_file_is_corrupt_and_never_suggests_weights_only_false(tmp_path, suffix):
    path = tmp_path / f"model_final{suffix}"
    path.write_bytes(bytes(4096))
    with pytest.raises(CorruptCheckpointError) as info:
        Checkpointer(ToySegmentor()).load(path)
    message = str(info.value)
    assert message.startswith(f"{path} holds nothing but zero bytes (4096 of them)")
    assert "Delete it and download or copy it again" in message
    assert "weights_only" not in message


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("noise", np.random.default_rng(0).bytes(4096), "its pickle data is malformed"),
        ("bad_zip", b"PK\x03\x04" + bytes(4000), "PytorchStreamReader failed reading zip"),
        ("half_zeros", b"\x80\x02" + bytes(4094), "its pickle data is malformed"),
    ],
)
def test_garbage_pth_is_corrupt_and_never_suggests_weights_only_false(
    tmp_path, name, content, reason
):
    path = tmp_path / f"{name}.pth"
    path.write_bytes(content)
    with pytest.raises(CorruptCheckpointError) as info:
        Checkpointer(ToySegmentor()).load(path)
    message = str(info.value)
    assert message.startswith(f"{path} is truncated, corrupt or not a torch checkpoint")
    assert reason in message and "Delete it" in message
    assert "weights_only" not in message


def test_legacy_tar_archive_is_named_as_such(tmp_path):
    path = tmp_path / "old.pth"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("sys_info")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(CorruptCheckpointError) as info:
        Checkpointer(ToySegmentor()).load(path)
    assert "pre-1.6 .tar format" in str(info.value)
    assert "weights_only" not in str(info.value)


def test_hostile_plain_pickle_under_a_pth_name_names_what_it_asked_for(tmp_path):
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"w": _RunsShell(tmp_path / "pwned")}, protocol=4))
    with pytest.raises(UnsafePickleError, match=r"references posix\.system|nt\.system"):
        Checkpointer(ToySegmentor()).load(path)
    assert not (tmp_path / "pwned").exists()


def test_ambiguous_suffix_match_is_a_checkpoint_error_naming_the_file(tmp_path):
    path = d2_pickle(tmp_path / "amb.pkl", {"weight": np.zeros((4, 4, 3, 3), np.float32)})
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: Ambiguous checkpoint"):
        Checkpointer(ToySegmentor()).load(path)


def test_optimizer_state_of_another_setup_names_the_entry(tmp_path):
    model, opt, sched = _training_objects()
    Checkpointer(model, tmp_path, optimizer=opt, scheduler=sched).save("model_0000000")
    other = ToySegmentor()
    other_opt = torch.optim.SGD([{"params": [other.backbone.stem.conv1.weight]}, {"params": []}])
    with pytest.raises(CheckpointError) as info:
        Checkpointer(other, tmp_path, optimizer=other_opt).resume_or_load("", resume=True)
    message = str(info.value)
    assert "model_0000000.pth: its 'optimizer' entry cannot be loaded into the SGD" in message
    assert "ValueError" in message


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"rng_state": {"python": {"version": 3}}}, "its 'rng_state' entry is malformed"),
        ({"iteration": "10"}, "its 'iteration' entry is a str ('10'), not an integer"),
    ],
)
def test_resume_from_malformed_training_state_names_the_entry(tmp_path, extra, fragment):
    model = ToySegmentor()
    torch.save({"model": model.state_dict(), **extra}, tmp_path / "model_0000000.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000000.pth")
    with pytest.raises(CorruptCheckpointError, match=re.escape(fragment)):
        Checkpointer(ToySegmentor(), tmp_path).resume_or_load("", resume=True)


def test_torch_file_asking_for_a_huge_bytearray_is_refused_before_allocating(tmp_path):
    # torch's weights-only unpickler admits builtins.bytearray itself; bytearray(n) would zero-fill
    # n bytes (2**62 cannot be allocated, so without the check this fails with MemoryError).
    path = tmp_path / "alloc.pth"
    torch.save({"model": {}, "pad": Reduce(bytearray, (2**62,))}, path)
    with pytest.raises(UnsafePickleError) as info:
        Checkpointer(ToySegmentor()).load(path)
    message = str(info.value)
    assert message.startswith(f"Refusing to load {path}: the pickle references builtins.bytearray")


def test_legacy_format_pth_asking_for_a_huge_bytearray_is_refused_before_allocating(tmp_path):
    # Not a zip: torch reads it as its legacy format, whose first pickle it would run at once.
    path = tmp_path / "alloc_legacy.pth"
    path.write_bytes(pickle.dumps(Reduce(bytearray, (2**62,)), protocol=2))
    with pytest.raises(UnsafePickleError, match="would allocate as much memory as the file asks"):
        Checkpointer(ToySegmentor()).load(path)


def test_without_rng_states_nothing_of_the_rng_is_saved_or_restored(tmp_path):
    model, opt, sched = _training_objects()
    ckpt = Checkpointer(model, tmp_path, optimizer=opt, scheduler=sched, rng_states=False)
    path = ckpt.save("model_0000002", iteration=2)
    assert "rng_state" not in torch.load(path, weights_only=True)

    # A file that has them (an older trainer's, or a plain Checkpointer's) leaves the RNG alone.
    Checkpointer(model, tmp_path, optimizer=opt, scheduler=sched).save("model_0000003", iteration=3)
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    model2, opt2, sched2 = _training_objects()
    torch.manual_seed(5)
    resumer = Checkpointer(model2, tmp_path, optimizer=opt2, scheduler=sched2, rng_states=False)
    assert resumer.resume_or_load("", resume=True) == {"iteration": 3}
    assert torch.equal(torch.rand(1), expected)
    _assert_same_weights(model, model2)


def test_non_finite_weights_are_named_when_loaded(tmp_path, caplog):
    source = ToySegmentor()
    state = source.state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    torch.save({"model": state}, tmp_path / "nan.pth")
    with caplog.at_level(logging.WARNING, logger="atrous"):
        Checkpointer(ToySegmentor()).load(tmp_path / "nan.pth")
    assert f"1 weights hold NaN or infinite values ({name})" in caplog.text


def test_a_damaged_file_not_named_like_a_checkpoint_is_never_to_be_deleted(tmp_path):
    # /etc/passwd given as MODEL.WEIGHTS (or named by a hostile last_checkpoint).
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(CorruptCheckpointError) as info:
        Checkpointer(ToySegmentor()).load(passwd)
    message = str(info.value)
    assert "Check the path" in message and "delete" not in message.lower()
    assert "root:x:0:0" not in message
