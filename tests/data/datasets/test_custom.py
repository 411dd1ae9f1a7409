"""Dataset YAML files: unknown fields are errors; list files take paths with spaces."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml
from PIL import Image

from atrous.data import DatasetError, get_dataset_records
from atrous.data.datasets.custom import load_dataset_yaml, pair_list


def _pair(root, image: str, mask: str) -> None:
    for rel, mode in ((image, "RGB"), (mask, "L")):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new(mode, (4, 3)).save(path)


def _spec(tmp_path, **extra) -> dict:
    _pair(tmp_path, "images/a.png", "masks/a.png")
    (tmp_path / "val.txt").write_text("images/a.png masks/a.png\n")
    return {"classes": ["bg", "fg"], "ignore_value": 255, "splits": {"val": {"list": "val.txt"}},
            **extra}  # fmt: skip


@pytest.mark.parametrize(
    ("field", "suggestion"),
    [("colours", "colors"), ("label_mpa", "label_map"), ("mask_extension", "mask_ext")],
)
def test_a_misspelt_optional_field_is_an_error_with_a_suggestion(tmp_path, field, suggestion):
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(_spec(tmp_path, **{field: None})))
    with pytest.raises(
        DatasetError,
        match=rf"data\.yaml: unknown field '{field}'\. Did you mean '{suggestion}'\? Valid fields",
    ):
        load_dataset_yaml(path)


def test_a_misspelt_split_field_is_an_error(tmp_path):
    spec = _spec(tmp_path)
    spec["splits"]["val"]["mask"] = "masks"
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(
        DatasetError, match=r"unknown field 'mask' in split 'val'\. Did you mean 'masks'\?"
    ):
        load_dataset_yaml(path)


def test_unrelated_unknown_field_lists_the_valid_ones(tmp_path):
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(_spec(tmp_path, zzz=1)))
    with pytest.raises(DatasetError, match=r"unknown field 'zzz'\. Valid fields: classes, "):
        load_dataset_yaml(path)


def test_list_file_paths_with_spaces_quoted_or_tab_separated(tmp_path):
    _pair(tmp_path, "my images/a 1.png", "my masks/a 1.png")
    _pair(tmp_path, "my images/b 2.png", "my masks/b 2.png")
    _pair(tmp_path, "my images/c 3.png", "my masks/c 3.png")
    _pair(tmp_path, "plain/d.png", "plain/d_mask.png")
    _pair(tmp_path, "o'brien.png", "o'brien_mask.png")  # an apostrophe, unquoted (old files)
    _pair(tmp_path, r"win\e.png", r"win\e_mask.png")  # a backslash stays a backslash
    (tmp_path / "list.txt").write_text(
        "# comment\n"
        '"my images/a 1.png" "my masks/a 1.png"\n'
        "'my images/b 2.png'   'my masks/b 2.png'\n"
        "my images/c 3.png\tmy masks/c 3.png\n"
        "\n"
        "plain/d.png   plain/d_mask.png\n"
        "o'brien.png o'brien_mask.png\n"
        "win\\e.png win\\e_mask.png\n"
    )
    records = pair_list(tmp_path / "list.txt", root=tmp_path)
    got = [(r["file_name"], r["sem_seg_file_name"]) for r in records]
    expected = [
        ("my images/a 1.png", "my masks/a 1.png"), ("my images/b 2.png", "my masks/b 2.png"),
        ("my images/c 3.png", "my masks/c 3.png"), ("plain/d.png", "plain/d_mask.png"),
        ("o'brien.png", "o'brien_mask.png"), ("win\\e.png", "win\\e_mask.png"),
    ]  # fmt: skip
    assert got == [(str(tmp_path / i), str(tmp_path / m)) for i, m in expected]
    assert records[0]["image_id"] == "my images/a 1"


def test_an_unquoted_path_with_spaces_explains_the_format(tmp_path):
    (tmp_path / "list.txt").write_text("my images/a 1.png my masks/a 1.png\n")
    expected = re.escape("list.txt:1: expected 'image_path mask_path'")
    with pytest.raises(DatasetError, match=expected):
        pair_list(tmp_path / "list.txt", root=tmp_path)
    with pytest.raises(DatasetError, match="quote a path that contains spaces"):
        pair_list(tmp_path / "list.txt", root=tmp_path)


def test_a_dataset_yaml_with_a_quoted_list_trains_from_records(tmp_path):
    _pair(tmp_path, "my images/a 1.png", "my masks/a 1.png")
    (tmp_path / "val.txt").write_text('"my images/a 1.png" "my masks/a 1.png"\n')
    spec = {"classes": ["bg", "fg"], "ignore_value": 255, "splits": {"val": {"list": "val.txt"}}}
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(spec))
    (record,) = get_dataset_records(f"{path}:val")
    assert record["file_name"].endswith("a 1.png") and (record["height"], record["width"]) == (3, 4)
    assert np.asarray(Image.open(record["sem_seg_file_name"])).shape == (3, 4)


def test_dataset_yaml_alias_bomb_and_huge_class_names_are_refused(tmp_path):
    from tests.helpers import alias_bomb

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb("classes"))
    with pytest.raises(DatasetError, match=r"bomb.yaml was refused: .*aliases"):
        load_dataset_yaml(bomb)
    long = tmp_path / "long.yaml"
    spec = {"classes": ["road", "x" * 1_000_000], "ignore_value": 255, "splits": {}}
    long.write_text(yaml.safe_dump(spec))
    with pytest.raises(DatasetError) as info:
        load_dataset_yaml(long)
    assert "class 1 has a name of 1,000,000 characters" in str(info.value)
    assert len(str(info.value)) < 500
