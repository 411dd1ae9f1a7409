"""Checkpoints: detectron2 model-zoo compatibility, safe loading, atomic saving, downloads,
safetensors.

Public entry points::

    from atrous.checkpoint import Checkpointer
    report = Checkpointer(model).load("DeepLabV3+_R103")   # name, path or URL -> LoadReport
"""

from .bundle_reader import BundleMetadata, LoadedBundle, is_bundle, load_bundle
from .checkpointer import Checkpointer, LoadReport
from .detectron2 import MatchReport, align_and_update_state_dicts, convert_basic_c2_names
from .download import cache_dir, cached_file_path, download, expected_sha256_prefix
from .errors import (
    BundleError,
    CheckpointError,
    CheckpointNotFoundError,
    ChecksumMismatchError,
    CorruptCheckpointError,
    DownloadError,
    UnsafePickleError,
)
from .model_zoo import MODEL_ZOO, get_checkpoint_url, list_models, resolve_url
from .readers import load_checkpoint_file
from .rng import capture_rng_state, restore_rng_state
from .safe_pickle import SafeUnpickler, load_pickle, loads_pickle
from .weights_io import is_safetensors_file, read_safetensors, save_weights

__all__ = [
    "MODEL_ZOO",
    "BundleError",
    "BundleMetadata",
    "CheckpointError",
    "CheckpointNotFoundError",
    "Checkpointer",
    "ChecksumMismatchError",
    "CorruptCheckpointError",
    "DownloadError",
    "LoadReport",
    "LoadedBundle",
    "MatchReport",
    "SafeUnpickler",
    "UnsafePickleError",
    "align_and_update_state_dicts",
    "cache_dir",
    "cached_file_path",
    "capture_rng_state",
    "convert_basic_c2_names",
    "download",
    "expected_sha256_prefix",
    "get_checkpoint_url",
    "is_bundle",
    "is_safetensors_file",
    "list_models",
    "load_bundle",
    "load_checkpoint_file",
    "load_pickle",
    "loads_pickle",
    "read_safetensors",
    "resolve_url",
    "restore_rng_state",
    "save_weights",
]
