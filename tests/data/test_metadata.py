from types import SimpleNamespace

import pytest

from atrous.data import Metadata, as_metadata, get_metadata
from atrous.data.metadata import default_colors


def test_a_metadata_passes_through_and_ignore_label_overrides():
    meta = Metadata(name="toy", stuff_classes=("a", "b"), stuff_colors=((1, 2, 3), (4, 5, 6)))
    assert as_metadata(meta) is meta
    assert as_metadata(meta, num_classes=2, ignore_label=7).ignore_label == 7
    with pytest.raises(ValueError, match="has 2 classes but num_classes=3"):
        as_metadata(meta, num_classes=3)


def test_a_dataset_name_is_refused_with_what_to_pass_instead():
    with pytest.raises(TypeError, match=r"get_metadata\('cityscapes_fine_sem_seg_val'\)"):
        as_metadata("cityscapes_fine_sem_seg_val")


def test_objects_with_the_fields_become_the_one_metadata_type():
    d2_style = SimpleNamespace(
        name="d2", stuff_classes=["x", "y", "z"], stuff_colors=None, gt_dir="/data/gtFine/val"
    )
    meta = as_metadata(d2_style)
    assert isinstance(meta, Metadata)
    assert meta.stuff_colors == default_colors(3) and meta.ignore_label == 255
    assert meta.gt_root == meta.gt_dir == "/data/gtFine/val"
    anonymous = as_metadata(None, num_classes=2)
    assert anonymous.stuff_classes == ("class_0", "class_1")
    with pytest.raises(ValueError, match="no stuff_classes"):
        as_metadata(SimpleNamespace(name="empty"))


def test_builtin_datasets_describe_themselves_with_it():
    meta = get_metadata("cityscapes_fine_sem_seg_val")
    assert isinstance(meta, Metadata) and meta.num_classes == 19
    assert meta.evaluator_type == "cityscapes_sem_seg"
