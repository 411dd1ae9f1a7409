"""Load weights from any supported source into a model, and save/resume training state.

The files are read by :mod:`.readers`; this module matches their weights to a model, reports
what matched, and writes and finds training checkpoints.

Sources accepted by :meth:`Checkpointer.load`:

* detectron2 model-zoo ``.pkl`` files (``{"model": {name: ndarray}, "__author__": ...}``), with
  suffix matching when ``"matching_heuristics"`` is set, so backbone-only files like
  ``R-103.pkl`` load into a full segmentor;
* other ``.pkl`` files (Caffe2 / Detectron1 / raw ``{name: ndarray}``), treated as detectron2 does:
  ``"blobs"`` unwrapped, ``*_momentum`` dropped, Caffe2 names converted, suffix matching on;
* ``.safetensors`` files (any name: detected by their header), read by the `safetensors`
  library, which validates the header against the data (see :mod:`.weights_io`);
* torch files: plain state dicts, ``{"model": state_dict}`` and atrous' own checkpoints (which also
  hold optimizer, scheduler, iteration and RNG states); ``?matching_heuristics=True`` appended to
  the path switches suffix matching on, as in detectron2;
* ``https://`` and ``detectron2://`` URLs and model-zoo names (see :mod:`.model_zoo`), downloaded
  into the cache first.

Nothing in a file is ever executed: pickles go through :mod:`.safe_pickle` and torch files through
``torch.load(weights_only=True)``; numpy arrays in either are rebuilt by :mod:`.safe_pickle` from
a checked boolean/numeric dtype, shape and byte count, so no file can make numpy read its bytes
as memory addresses. Values that cannot be weights are errors naming their key. safetensors
files hold no code at all.
"""

from __future__ import annotations

import logging
import os
import re
import reprlib
import stat
import urllib.parse
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..utils import comm
from ..utils.file_io import atomic_write
from ..utils.version import version_metadata
from . import model_zoo
from .detectron2 import align_and_update_state_dicts
from .download import download
from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
)
from .readers import describe_value, load_checkpoint_file, weight_tensor
from .rng import capture_rng_state, restore_rng_state
from .torchvision import (
    TORCHVISION_LAYOUTS,
    convert_torchvision_state_dict,
    detect_torchvision_layout,
)

__all__ = ["Checkpointer", "LoadReport"]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"
# Keys of a checkpoint file that describe it rather than hold state for someone.
_META_KEYS = ("model", "__author__", "matching_heuristics", "metadata")
# ``last_checkpoint`` holds one file name; anything longer is not a record this code wrote.
_MAX_RECORD_BYTES = 1024


class _Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> Any: ...


@dataclass
class LoadReport:
    """What :meth:`Checkpointer.load` did with a checkpoint.

    Attributes:
        source: what was asked for (path, URL or model-zoo name).
        path: the local file that was read ("" when nothing was loaded).
        matched: model keys that received a value.
        missing: model keys the checkpoint had nothing for (they keep their initialisation).
        unexpected: checkpoint keys that went nowhere.
        shape_mismatched: model keys whose checkpoint value had another shape (not loaded),
            other than `reinitialised`.
        reinitialised: the segmentation head's final classifier (``...predictor.weight`` /
            ``.bias``) when the checkpoint has another class count: it keeps its
            initialisation, which is what fine-tuning to another set of classes needs.
        shapes: for each shape-mismatched or reinitialised key, (checkpoint shape, model shape).
        ignored: differences that are expected and harmless: ``num_batches_tracked`` counters
            (FrozenBN has none, model-zoo files often lack them) and values for non-persistent
            buffers such as ``pixel_mean`` (they come from the config).
        checkpointables: names of the other objects (optimizer, scheduler, ...) restored.
        extra: the remaining entries of the file (e.g. ``iteration``, ``rng_state``).
        matching_heuristics: whether keys were matched by suffix.
        metadata: the file's version stamp and other string entries (``{}`` for files written
            elsewhere or before the stamp existed), e.g. ``{"atrous_version": "0.1.0", ...}``.
    """

    source: str = ""
    path: str = ""
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatched: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    checkpointables: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    matching_heuristics: bool = False
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every model key was loaded and every checkpoint key was used."""
        return not (self.missing or self.unexpected or self.shape_mismatched or self.reinitialised)

    def class_counts(self) -> tuple[int, int] | None:
        """(checkpoint classes, model classes) when the predictor was re-initialised, else None."""
        if not self.reinitialised:
            return None
        checkpoint, model = self.shapes[self.reinitialised[0]]
        return checkpoint[0], model[0]

    def summary(self, *, max_keys: int = 20) -> str:
        """Human-readable summary: counts, then the problem keys grouped by module."""
        reshaped = sorted(self.shape_mismatched + self.reinitialised)
        total = len(self.matched) + len(self.missing) + len(reshaped)
        lines = [
            f"Loaded {len(self.matched)} of {total} model entries from {self.path or self.source}"
            + (" (matched by suffix)" if self.matching_heuristics else "")
            + f": {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(reshaped)} with a different shape."
        ]
        if reshaped:
            lines.append("Shape mismatches (not loaded):")
            for key in reshaped[:max_keys]:
                ckpt_shape, model_shape = self.shapes.get(key, ((), ()))
                lines.append(f"  {key}: checkpoint {ckpt_shape}, model {model_shape}")
            if len(reshaped) > max_keys:
                lines.append(f"  ... and {len(reshaped) - max_keys} more")
        for title, keys in (
            ("Missing in the checkpoint (model keeps its initialisation):", self.missing),
            ("Unused from the checkpoint:", self.unexpected),
        ):
            if keys:
                lines.append(title)
                groups = _group_keys(keys)
                lines.extend(f"  {g}" for g in groups[:max_keys])
                if len(groups) > max_keys:
                    lines.append(f"  ... and {len(groups) - max_keys} more groups")
        return "\n".join(lines)

    def fine_tuning_start(self) -> str | None:
        """One line for a load whose only difference is the class count of the predictor (the
        start of fine-tuning to other classes), else None."""
        counts = self.class_counts()
        if counts is None or self.missing or self.unexpected or self.shape_mismatched:
            return None
        return (
            f"Loaded {len(self.matched)} of {len(self.matched) + len(self.reinitialised)} model "
            f"entries from {self.path or self.source}; the predictor is re-initialised for "
            f"{counts[1]} classes (the checkpoint has {counts[0]}), as fine-tuning to other "
            "classes needs."
        )

    def __str__(self) -> str:
        return self.summary()


def _group_keys(keys: Iterable[str]) -> list[str]:
    """``a.b.weight, a.b.bias`` -> ``a.b.{bias, weight}`` so long key lists stay readable."""
    groups: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        prefix, _, leaf = key.rpartition(".")
        groups[prefix].append(leaf)
    out = []
    for prefix, leaves in sorted(groups.items()):
        body = leaves[0] if len(leaves) == 1 else "{" + ", ".join(sorted(leaves)) + "}"
        out.append(f"{prefix}.{body}" if prefix else body)
    return out


def _unwrap(model: nn.Module) -> nn.Module:
    # Saved names must not depend on whether training ran under (Distributed)DataParallel.
    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        return model.module
    return model


def _non_persistent_buffers(model: nn.Module) -> set[str]:
    names = set()
    for prefix, module in model.named_modules():
        for name in module._non_persistent_buffers_set:
            names.add(f"{prefix}.{name}" if prefix else name)
    return names


def _is_harmless(key: str, non_persistent: set[str]) -> bool:
    return key.endswith("num_batches_tracked") or key in non_persistent


def _split_query(source: str) -> tuple[str, dict[str, list[str]]]:
    """Separate detectron2's ``?matching_heuristics=True`` suffix from a path or URL."""
    if "?" not in source or os.path.exists(source):
        return source, {}
    base, _, query = source.partition("?")
    return base, urllib.parse.parse_qs(query)


class Checkpointer:
    """Loads weights into a model and saves / resumes full training state.

    Example::

        ckpt = Checkpointer(model, "output", optimizer=opt, scheduler=sched)
        report = ckpt.load("detectron2://DeepLab/R-103.pkl")   # LoadReport
        extra = ckpt.resume_or_load(cfg.MODEL.WEIGHTS, resume=True)
        start_iter = extra.get("iteration", -1) + 1
        ckpt.save("model_0000999", iteration=999)            # output/model_0000999.pth

    Args:
        model: the model; a (Distributed)DataParallel wrapper is unwrapped so saved names never
            carry a ``module.`` prefix.
        save_dir: directory for :meth:`save` and ``last_checkpoint``; None disables saving.
        optimizer: saved and restored under ``"optimizer"``.
        scheduler: saved and restored under ``"scheduler"``.
        save_to_disk: whether this process writes files; defaults to "is the main process", so
            in distributed training only rank 0 writes.
        rng_states: whether :meth:`save` stores this process's RNG states (``"rng_state"``) and
            :meth:`resume_or_load` restores them. Right for one process; a multi-process trainer
            passes False and records every rank's states itself (`atrous.engine.Trainer`), since
            this file holds only the writing rank's.
        **checkpointables: more objects with ``state_dict``/``load_state_dict``, saved under
            their keyword.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str | os.PathLike[str] | None = None,
        *,
        optimizer: _Stateful | None = None,
        scheduler: _Stateful | None = None,
        save_to_disk: bool | None = None,
        rng_states: bool = True,
        **checkpointables: _Stateful,
    ) -> None:
        self.model = _unwrap(model)
        self.rng_states = rng_states
        self.save_dir = Path(save_dir) if save_dir else None
        self.save_to_disk = comm.is_main_process() if save_to_disk is None else save_to_disk
        self.checkpointables: dict[str, _Stateful] = {}
        if optimizer is not None:
            self.checkpointables["optimizer"] = optimizer
        if scheduler is not None:
            self.checkpointables["scheduler"] = scheduler
        for name, obj in checkpointables.items():
            if name in _META_KEYS or name in self.checkpointables:
                raise ValueError(f"checkpointable name {name!r} is reserved")
            self.checkpointables[name] = obj
        self.last_report: LoadReport | None = None

    # ------------------------------------------------------------------ loading

    def _resolve(self, source: str) -> str:
        """Local file for a path, URL or model-zoo name (downloading into the cache if needed)."""
        if "://" in source:
            if source.startswith("file://"):
                return urllib.parse.urlparse(source).path
            return os.fspath(download(source))
        expanded = os.path.expanduser(source)
        if source.endswith((".yaml", ".yml")):
            # A config file names its published weights, never a checkpoint to unpickle.
            return os.fspath(download(model_zoo.get_checkpoint_url(source)))
        if not os.path.exists(expanded):
            url = model_zoo.lookup(source)
            if url is not None:
                return os.fspath(download(url))
        return expanded

    def load(
        self,
        path: str | os.PathLike[str],
        checkpointables: Iterable[str] | None = None,
        *,
        strict: bool = False,
    ) -> LoadReport:
        """Load a checkpoint into the model (and the other checkpointables it holds).

        Args:
            path: local path, ``https://`` / ``detectron2://`` URL, or model-zoo name. An empty
                string loads nothing (the model keeps its initialisation).
            checkpointables: names of the other objects to restore; None restores every one the
                file holds, ``[]`` only the model.
            strict: raise instead of loading when any key is missing, unexpected or of another
                shape (the model is left untouched).

        Returns:
            The :class:`LoadReport`, also logged (summary at INFO, problems at WARNING).

        Raises:
            CheckpointNotFoundError, CorruptCheckpointError, UnsafePickleError, DownloadError:
                see :func:`load_checkpoint_file` and :func:`~atrous.checkpoint.download`.
            CheckpointError: `strict` and the checkpoint does not fit exactly.
        """
        source = os.fspath(path)
        if not source:
            logger.info("No checkpoint given; the model keeps its initialisation.")
            self.last_report = LoadReport()
            return self.last_report
        base, query = _split_query(source)
        local = self._resolve(base)
        checkpoint = load_checkpoint_file(local)
        if query.get("matching_heuristics") == ["True"]:
            checkpoint["matching_heuristics"] = True

        report = self._load_model(checkpoint, local, strict=strict)
        report.source = source
        names = self.checkpointables if checkpointables is None else list(checkpointables)
        for name in names:
            if name not in self.checkpointables:
                raise KeyError(f"{name!r} is not a checkpointable of this Checkpointer")
            if name in checkpoint:
                logger.info("Loading %s from %s", name, local)
                obj = self.checkpointables[name]
                try:
                    obj.load_state_dict(checkpoint.pop(name))
                except Exception as exc:
                    # torch's load_state_dict methods report a foreign or damaged state with
                    # whatever exception the first bad entry causes (KeyError, TypeError, ...).
                    raise CheckpointError(
                        f"{local}: its {name!r} entry cannot be loaded into the "
                        f"{type(obj).__name__} ({type(exc).__name__}: {reprlib.repr(str(exc))}). "
                        "The file was saved for another setup or is damaged; load the weights "
                        "alone with checkpointables=[] (resume=False) to start a new run from it."
                    ) from exc
                report.checkpointables.append(name)
            elif checkpointables is not None:
                logger.warning("%s holds no %r state; it keeps its current state", local, name)
        report.extra = {
            k: v
            for k, v in checkpoint.items()
            if k not in _META_KEYS and k not in self.checkpointables
        }
        self._log(report)
        self.last_report = report
        return report

    def _load_model(self, checkpoint: dict[str, Any], path: str, *, strict: bool) -> LoadReport:
        raw = checkpoint.get("model")
        if not isinstance(raw, Mapping):
            raise CorruptCheckpointError(
                f"{path}: the 'model' entry is {describe_value(raw)}, not a dict of weights."
            )
        report = LoadReport(
            path=path,
            matching_heuristics=bool(checkpoint.get("matching_heuristics")),
            metadata=_string_metadata(checkpoint.get("metadata")),
        )
        state: dict[str, torch.Tensor] = {}
        for key, value in raw.items():
            if not isinstance(key, str):
                raise CorruptCheckpointError(
                    f"{path}: the 'model' entry has the key {key!r:.80} of type "
                    f"{type(key).__name__}; parameter names are strings, so this file is damaged "
                    "or not a model checkpoint."
                )
            # Like detectron2, a value that is not an array is an error rather than skipped:
            # the file is not what its name says, and a partial load would hide that.
            state[key] = weight_tensor(value, key, path)
        non_finite = [
            k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())
        ]
        if non_finite:
            # Such a model predicts garbage (NaN scores argmax to class 0) without failing.
            logger.warning(
                "%s: %d weights hold NaN or infinite values (%s); whatever this model predicts "
                "or scores is meaningless. The training that wrote it diverged, or the file is "
                "damaged.",
                path,
                len(non_finite),
                ", ".join(non_finite[:3]) + (", ..." if len(non_finite) > 3 else ""),
            )
        # Saved from a (Distributed)DataParallel wrapper.
        if state and all(k.startswith("module.") for k in state):
            state = {k[len("module.") :]: v for k, v in state.items()}

        model_state = self.model.state_dict()
        layout = None if report.matching_heuristics else detect_torchvision_layout(state)
        if layout is not None:
            state = convert_torchvision_state_dict(state, layout=layout, model_keys=model_state)
            logger.info(
                "%s is in the layout of a %s: renamed by name", path, TORCHVISION_LAYOUTS[layout]
            )
        unexpected: list[str] = []
        if report.matching_heuristics:
            try:
                state, match = align_and_update_state_dicts(
                    model_state, state, c2_conversion=checkpoint.get("__author__") == "Caffe2"
                )
            except ValueError as exc:  # ambiguous names: no way to tell which weight is meant
                raise CheckpointError(f"{path}: {exc}") from None
            unexpected += match.unexpected
            report.shapes = dict(match.shape_mismatched)
        else:
            for key in list(state):
                if key in model_state and tuple(state[key].shape) != tuple(model_state[key].shape):
                    report.shapes[key] = (tuple(state[key].shape), tuple(model_state[key].shape))
                    del state[key]
            unexpected += [k for k in state if k not in model_state]
        report.reinitialised = sorted(k for k, v in report.shapes.items() if _other_classes(k, *v))
        report.shape_mismatched = sorted(k for k in report.shapes if k not in report.reinitialised)
        missing = [k for k in model_state if k not in state and k not in report.shapes]

        non_persistent = _non_persistent_buffers(self.model)
        report.ignored = sorted(k for k in missing + unexpected if _is_harmless(k, non_persistent))
        report.missing = sorted(k for k in missing if not _is_harmless(k, non_persistent))
        report.unexpected = sorted(k for k in unexpected if not _is_harmless(k, non_persistent))
        if strict and not report.ok:
            raise CheckpointError(
                f"{path} does not fit the model exactly and strict loading was requested; "
                f"nothing was loaded.\n{report.summary()}"
            )

        incompatible = self.model.load_state_dict(state, strict=False)
        # Modules with custom _load_from_state_dict (e.g. FrozenBN filling absent running
        # statistics) may accept keys that a plain key comparison would call missing.
        accepted_missing = set(incompatible.missing_keys)
        report.missing = [k for k in report.missing if k in accepted_missing]
        report.matched = sorted(k for k in state if k in model_state)
        return report

    def _log(self, report: LoadReport) -> None:
        if report.ok:
            logger.info("%s", report.summary())
            return
        fine_tuning = report.fine_tuning_start()
        if fine_tuning is not None:
            # A predictor for other classes is what fine-tuning starts from: one line.
            logger.info("%s", fine_tuning)
            return
        logger.warning("%s", report.summary())
        total = len(report.matched) + len(report.missing) + len(report.shape_mismatched)
        if total and len(report.matched) < total / 2:
            logger.warning(
                "Only %d of %d model entries were loaded from %s: is it a checkpoint for another "
                "architecture or config? Pass strict=True to make this an error.",
                len(report.matched),
                total,
                report.path,
            )

    # ------------------------------------------------------------------ saving

    def save(self, name: str, *, tag_last: bool = True, **extra: Any) -> Path | None:
        """Write ``<save_dir>/<name>.pth`` atomically and point ``last_checkpoint`` at it.

        The file holds ``"model"``, each checkpointable's state, ``"rng_state"`` (unless the
        Checkpointer was made with ``rng_states=False``), `extra`
        (e.g. ``iteration=999``) and ``"metadata"`` (the atrous and torch versions that wrote it,
        see `atrous.utils.version.version_metadata`); it loads with
        ``torch.load(weights_only=True)``. It is written to a temporary file in `save_dir`,
        fsynced and renamed, so a crash leaves either the previous file or the complete new one;
        ``last_checkpoint`` is updated the same way afterwards.

        Args:
            name: file name without (or with) the ``.pth`` suffix.
            tag_last: point ``last_checkpoint`` at the file; False for a file that is not where
                a resumed run continues from (``model_best.pth``).
            **extra: more tensors / plain values to store (not "model" or a checkpointable).

        Returns:
            The written path, or None in processes that do not write (non-main ranks).

        Raises:
            CheckpointError: no `save_dir`, or `extra` holds a value that a weights-only load
                could not read back.
        """
        if not self.save_to_disk:
            return None
        if self.save_dir is None:
            raise CheckpointError("Checkpointer.save needs a save_dir; none was given.")
        clash = [k for k in extra if k in _META_KEYS or k in self.checkpointables]
        if clash:
            raise ValueError(f"extra state may not use the reserved names {clash}")
        data: dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        if self.rng_states:
            data["rng_state"] = capture_rng_state()
        data.update(extra)
        data["metadata"] = version_metadata()
        _check_weights_only(data, name)

        self.save_dir.mkdir(parents=True, exist_ok=True)
        filename = name if name.endswith(".pth") else f"{name}.pth"
        path = self.save_dir / filename
        atomic_write(path, lambda f: torch.save(data, f))
        if tag_last:
            self.tag_last_checkpoint(filename)
        logger.info("Saved checkpoint to %s", path)
        return path

    def tag_last_checkpoint(self, filename: str) -> None:
        """Atomically record `filename` (relative to `save_dir`) as the one to resume from."""
        if not self.save_to_disk or self.save_dir is None:
            return
        atomic_write(self.save_dir / LAST_CHECKPOINT, lambda f: f.write(filename.encode()))

    def has_checkpoint(self) -> bool:
        """Whether `save_dir` has a ``last_checkpoint`` record to resume from."""
        return self.save_dir is not None and (self.save_dir / LAST_CHECKPOINT).is_file()

    def _read_record(self) -> tuple[str, str]:
        """(path named by ``last_checkpoint``, "") or ("", why it cannot be used).

        ("", "") when there is no record at all. The record is read only when it is a regular
        file of at most a few hundred bytes holding a plain file name: its content may have
        been written by anyone, and is never followed out of `save_dir` or quoted at length.
        """
        assert self.save_dir is not None
        record = self.save_dir / LAST_CHECKPOINT
        try:
            st = record.lstat()
        except FileNotFoundError:
            return "", ""
        except OSError as exc:
            return "", f"cannot be read ({exc.strerror})"
        if stat.S_ISLNK(st.st_mode):
            return "", "is a symbolic link, not the file a run writes"
        if not stat.S_ISREG(st.st_mode):
            return "", "is not a regular file"
        if st.st_size > _MAX_RECORD_BYTES:
            return "", f"is {st.st_size} bytes long, not a file name"
        try:
            raw = record.read_bytes()
        except OSError as exc:
            return "", f"cannot be read ({exc.strerror})"
        try:
            name = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            return "", "does not hold a file name (not UTF-8 text)"
        if not name:
            return "", "is empty"
        if name != os.path.basename(name) or name in (".", "..") or not name.isprintable():
            return "", f"names {name[:80]!r}, which is not a file name in {self.save_dir}"
        path = self.save_dir / name
        if path.is_symlink() or not path.is_file():
            return "", f"names {name}, which is not a file in {self.save_dir}"
        return os.fspath(path), ""

    def get_checkpoint_file(self) -> str:
        """Path of the checkpoint ``last_checkpoint`` names, or "" when there is none.

        Raises:
            CheckpointNotFoundError: ``last_checkpoint`` exists but names no file in `save_dir`
                (missing, a link, a path elsewhere) or is not a readable record.
        """
        if self.save_dir is None:
            return ""
        path, problem = self._read_record()
        if path or not problem or problem == "is empty":
            return path
        record = self.save_dir / LAST_CHECKPOINT
        raise CheckpointNotFoundError(
            f"{record} {problem}. Restore the checkpoint it named, or delete {record} to start "
            "from MODEL.WEIGHTS instead."
        )

    def get_all_checkpoint_files(self) -> list[str]:
        """All ``.pth`` files in `save_dir`, sorted by name."""
        if self.save_dir is None or not self.save_dir.is_dir():
            return []
        return sorted(os.fspath(p) for p in self.save_dir.glob("*.pth"))

    def find_resume_file(self) -> str:
        """The checkpoint a resumed run continues from, or "" when `save_dir` holds no run.

        ``last_checkpoint`` when it names a file of `save_dir`; otherwise (missing, empty, not a
        regular file, naming a missing file) the ``.pth`` file of `save_dir` with the largest
        ``iteration`` recorded inside it among those that read back whole. A run that has
        checkpoints is never answered with "": it resumes or is refused.

        Raises:
            CheckpointNotFoundError: ``last_checkpoint`` or ``.pth`` files exist but none is a
                readable training checkpoint; the message names what was found.
        """
        if self.save_dir is None or not self.save_dir.is_dir():
            return ""
        path, problem = self._read_record()
        if path:
            return path
        record = self.save_dir / LAST_CHECKPOINT
        candidates = [
            p
            for p in sorted(self.save_dir.glob("*.pth"))
            if p.is_file() and not p.is_symlink() and not p.name.startswith(".")
        ]
        if not candidates:
            if not problem:
                return ""
            raise CheckpointNotFoundError(
                f"{record} {problem}, and {self.save_dir} holds no checkpoint (.pth) to resume "
                f"from. Restore the checkpoint it named, or delete {record} to start from "
                "MODEL.WEIGHTS instead."
            )
        best: tuple[int, Path] | None = None
        unreadable: list[str] = []
        for candidate in candidates:
            try:
                data = load_checkpoint_file(candidate)
            except CheckpointError:
                unreadable.append(candidate.name)
                continue
            iteration = data.get("iteration")
            del data
            if type(iteration) is not int or iteration < 0:
                unreadable.append(candidate.name)
            elif best is None or iteration > best[0]:
                best = (iteration, candidate)
        why = f"{record} {problem}" if problem else f"there is no {record}"
        if best is None:
            shown = ", ".join(unreadable[:5]) + (
                f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
            )
            raise CheckpointNotFoundError(
                f"Cannot resume the run in {self.save_dir}: {why}, and none of its "
                f"{len(candidates)} .pth files is a readable training checkpoint ({shown}). "
                "Nothing was changed. Restore a checkpoint into it, or start afresh with "
                "--overwrite (which moves its files to previous/)."
            )
        logger.warning(
            "%s; resuming from %s, the checkpoint with the largest iteration (%d) in %s%s",
            why[0].upper() + why[1:],
            best[1].name,
            best[0],
            self.save_dir,
            f" ({len(unreadable)} unreadable: {', '.join(unreadable[:5])})" if unreadable else "",
        )
        return os.fspath(best[1])

    def resume_or_load(
        self, path: str | os.PathLike[str], *, resume: bool = True
    ) -> dict[str, Any]:
        """Resume from `save_dir` when asked and it holds a run, else load `path`'s weights.

        Resuming (see `find_resume_file` for which file) restores the model, every
        checkpointable and (with `rng_states`) this process's RNG states, and returns the file's
        remaining state (e.g. ``{"iteration": 999}``), without ``"rng_state"``. Loading `path`
        (weights only, e.g. ``cfg.MODEL.WEIGHTS``) returns ``{}`` so a pretrained file never
        sets the start iteration. Nothing is written.

        Raises:
            CheckpointNotFoundError: `save_dir` holds a run but no checkpoint to resume.
            CorruptCheckpointError: the checkpoint's ``iteration`` is missing, not an integer
                or negative, or its ``rng_state`` is malformed.
        """
        resume_file = self.find_resume_file() if resume else ""
        if resume_file:
            report = self.load(resume_file)
            # Files from before ``rng_states=False`` existed hold rank 0's states here even when
            # written by a trainer that also kept every rank's: that copy is not ours to restore.
            rng_state = report.extra.pop("rng_state", None)
            if rng_state is not None and self.rng_states:
                try:
                    restore_rng_state(rng_state)
                except Exception as exc:
                    raise CorruptCheckpointError(
                        f"{report.path}: its 'rng_state' entry is malformed "
                        f"({type(exc).__name__}: {reprlib.repr(str(exc))}); the file is damaged "
                        "or was not written by atrous."
                    ) from exc
            iteration = report.extra.get("iteration")
            if type(iteration) is not int or iteration < 0:
                raise CorruptCheckpointError(
                    f"{report.path}: its 'iteration' entry is {describe_value(iteration)}, not an "
                    "integer of 0 or more, so it is not a checkpoint a run can resume from; the "
                    "file is damaged or was not written by atrous. Nothing was changed."
                )
            return report.extra
        self.load(path, checkpointables=[])
        return {}

    def prune(self, keep_last: int, *, prefix: str = "model") -> list[str]:
        """Delete all but the newest `keep_last` ``<prefix>_<digits>.pth`` files in `save_dir`.

        ``<prefix>_final.pth`` and other names never match, and the file ``last_checkpoint``
        names is always kept. Only the writing process deletes.

        Returns:
            The deleted paths.
        """
        if not self.save_to_disk or self.save_dir is None or keep_last <= 0:
            return []
        pattern = re.compile(rf"^{re.escape(prefix)}_(\d+)\.pth$")
        numbered = sorted(
            (int(m.group(1)), p)
            for p in self.save_dir.iterdir()
            if (m := pattern.match(p.name)) and p.is_file()
        )
        current = self.get_checkpoint_file() if self.has_checkpoint() else ""
        deleted = []
        for _, p in numbered[: max(len(numbered) - keep_last, 0)]:
            if os.fspath(p) == current:
                continue
            p.unlink(missing_ok=True)
            deleted.append(os.fspath(p))
        return deleted


def _other_classes(key: str, checkpoint: tuple[int, ...], model: tuple[int, ...]) -> bool:
    """Whether `key` is the segmentation head's classifier and only its class count differs."""
    return (
        key.startswith("sem_seg_head.")
        and key.endswith(("predictor.weight", "predictor.bias"))
        and len(checkpoint) == len(model)
        and checkpoint[1:] == model[1:]
        and checkpoint[0] != model[0]
    )


def _string_metadata(value: Any) -> dict[str, str]:
    # Only a mapping of strings is a stamp; anything else under that name is not ours to read.
    if not isinstance(value, Mapping):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, str)}


def _check_weights_only(obj: Any, where: str) -> None:
    """Fail at save time on values that ``torch.load(weights_only=True)`` would refuse."""
    plain = (torch.Tensor, torch.Size, torch.dtype, torch.device, str, bytes, int, float, complex)
    if obj is None or isinstance(obj, plain):
        return
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            _check_weights_only(value, f"{where}[{key!r}]")
    elif isinstance(obj, list | tuple | set | frozenset):
        for i, value in enumerate(obj):
            _check_weights_only(value, f"{where}[{i}]")
    else:
        raise CheckpointError(
            f"Cannot save {where}: a {type(obj).__module__}.{type(obj).__name__} could not be "
            "read back by a weights-only load. Store tensors, numbers, strings and "
            "dicts/lists of them (convert numpy arrays with torch.from_numpy)."
        )
