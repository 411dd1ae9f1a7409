"""Datasets, augmentations and loaders: from files on disk to the batches the model eats."""

from .catalog import (
    check_datasets,
    dataset_root,
    get_dataset_records,
    get_metadata,
    list_datasets,
    register_dataset,
)
from .errors import DatasetError, ImageReadError, ImageTooLargeError, UnknownColorError
from .image_io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ColorCoding,
    check_image_size,
    read_image,
    read_label,
)
from .loader import (
    InferenceSampler,
    TrainingSampler,
    build_test_loader,
    build_train_loader,
    train_data_seed,
)
from .mapper import (
    LABEL_RECORD_KEYS,
    DatasetMapper,
    build_mapper,
    build_test_augmentations,
    build_train_augmentations,
    load_sem_seg,
)
from .metadata import Metadata, as_metadata

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "LABEL_RECORD_KEYS",
    "ColorCoding",
    "DatasetError",
    "DatasetMapper",
    "ImageReadError",
    "ImageTooLargeError",
    "InferenceSampler",
    "Metadata",
    "TrainingSampler",
    "UnknownColorError",
    "as_metadata",
    "build_mapper",
    "build_test_augmentations",
    "build_test_loader",
    "build_train_augmentations",
    "build_train_loader",
    "check_datasets",
    "check_image_size",
    "dataset_root",
    "get_dataset_records",
    "get_metadata",
    "list_datasets",
    "load_sem_seg",
    "read_image",
    "read_label",
    "register_dataset",
    "train_data_seed",
]
