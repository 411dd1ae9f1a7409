import logging

import numpy as np
import PIL
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from atrous.data import fused_crop
from atrous.data.fused_crop import (
    VERIFIED_PILLOW_VERSIONS,
    bilinear_window,
    crop_window,
    label_window,
    pillow_version,
    windowed_resampling_verified,
)
from atrous.data.image_io import LazyImage
from atrous.data.transforms import (
    FusedAugInput,
    RandomCropCategoryAreaConstraint,
    RandomFlip,
    ResizeShortestEdge,
    apply_augmentations,
)


def _pillow_differs(what: str) -> str:
    """The failure message when Pillow no longer resizes like the re-implementation."""
    major, minor = pillow_version()
    return (
        f"\n\nPillow {PIL.__version__} (installed) resizes differently from "
        f"atrous.data.fused_crop ({what}): this Pillow changed its pass order or rounding. "
        f"Remove ({major}, {minor}) from VERIFIED_PILLOW_VERSIONS "
        f"(now {sorted(VERIFIED_PILLOW_VERSIONS)}) so that crops come from Pillow's full "
        "resize, then bring the re-implementation in line with this Pillow.\n"
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(1, 60),
    w=st.integers(1, 60),
    nh=st.integers(1, 160),
    nw=st.integers(1, 160),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_bilinear_window_equals_pillow_for_enlargement(h, w, nh, nw, seed, data):
    nh, nw = max(nh, h), max(nw, w)  # the fused path uses it for enlargements only
    image = np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)
    full = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    y0 = data.draw(st.integers(0, nh - 1))
    x0 = data.draw(st.integers(0, nw - 1))
    ch = data.draw(st.integers(1, nh - y0))
    cw = data.draw(st.integers(1, nw - x0))
    np.testing.assert_array_equal(
        bilinear_window(image, nh, nw, y0, x0, ch, cw),
        full[y0 : y0 + ch, x0 : x0 + cw],
        err_msg=_pillow_differs(f"bilinear {h}x{w} -> {nh}x{nw}, window {y0, x0, ch, cw}"),
    )


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 60),
    w=st.integers(1, 60),
    nh=st.integers(1, 160),
    nw=st.integers(1, 160),
    seed=st.integers(0, 2**16),
)
def test_label_window_equals_pillow_nearest(h, w, nh, nw, seed):
    # The label is gathered through the nearest-neighbour tables for every size, not only
    # enlargements.
    label = np.random.RandomState(seed).randint(0, 256, (h, w)).astype(np.uint8)
    full = np.asarray(Image.fromarray(label).resize((nw, nh), Image.NEAREST))
    y0, x0 = nh // 3, nw // 4
    ch, cw = nh - y0, max(1, nw // 2)
    np.testing.assert_array_equal(
        label_window(label, nh, nw, y0, x0, ch, cw),
        full[y0 : y0 + ch, x0 : x0 + cw],
        err_msg=_pillow_differs(f"nearest {h}x{w} -> {nh}x{nw}"),
    )


# (source h, w), (resized h, w), window (y0, x0, h, w) in the resized image.
WINDOW_CASES = [
    ((37, 53), (74, 106), (10, 20, 17, 31)),  # 2x, small window: resampled in the window
    ((37, 53), (74, 106), (0, 3, 70, 100)),  # 2x, large window: Pillow on the top rows
    ((40, 30), (40, 77), (5, 6, 20, 30)),  # width only
    ((40, 30), (95, 30), (60, 0, 30, 30)),  # height only, window at the bottom
    ((29, 41), (61, 87), (0, 0, 61, 87)),  # odd scale, the whole image
    ((50, 60), (20, 25), (2, 3, 10, 12)),  # a reduction goes through Pillow
]


@pytest.mark.parametrize("lazy", [False, True], ids=["array", "LazyImage"])
@pytest.mark.parametrize(("size", "new_size", "window"), WINDOW_CASES)
def test_crop_window_equals_pillow_resize_then_crop(tmp_path, lazy, size, new_size, window):
    rng = np.random.RandomState(sum(size) + sum(new_size))
    rgb = rng.randint(0, 256, (*size, 3)).astype(np.uint8)
    label = rng.randint(0, 19, size).astype(np.uint8)
    if lazy:
        Image.fromarray(rgb).save(tmp_path / "a.png")
        image = LazyImage(tmp_path / "a.png", "BGR")
    else:
        image = rgb[:, :, ::-1]
    out, lab = crop_window(
        image,
        label,
        new_shape=new_size,
        window=window,
        window_fraction=FusedAugInput.WINDOW_FRACTION,
    )
    (nh, nw), (y0, x0, ch, cw) = new_size, window
    ref = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))[:, :, ::-1]
    ref_lab = np.asarray(Image.fromarray(label).resize((nw, nh), Image.NEAREST))
    what = f"{size} -> {new_size}, window {window}"
    np.testing.assert_array_equal(
        out, ref[y0 : y0 + ch, x0 : x0 + cw], err_msg=_pillow_differs(f"bilinear {what}")
    )
    np.testing.assert_array_equal(
        lab, ref_lab[y0 : y0 + ch, x0 : x0 + cw], err_msg=_pillow_differs(f"nearest {what}")
    )


def test_installed_pillow_version_gates_the_windowed_path():
    major, minor = (int(v) for v in PIL.__version__.split(".")[:2])
    assert pillow_version() == (major, minor)
    assert windowed_resampling_verified() == ((major, minor) in VERIFIED_PILLOW_VERSIONS)


def _must_not_run(*args, **kwargs):
    raise AssertionError("the windowed resampler ran with an unverified Pillow")


def test_unknown_pillow_falls_back_to_pillow_full_resize(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(PIL, "__version__", "99.0.0")
    monkeypatch.setattr(fused_crop, "_fallback_logged", False)
    # With an unverified Pillow neither re-implementation may run: only Pillow's resize.
    monkeypatch.setattr(fused_crop, "bilinear_window", _must_not_run)
    monkeypatch.setattr(fused_crop, "nearest_table", _must_not_run)
    assert pillow_version() == (99, 0) and not windowed_resampling_verified()
    rng = np.random.RandomState(0)
    rgb = rng.randint(0, 256, (40, 56, 3)).astype(np.uint8)
    label = np.kron(rng.randint(0, 4, (5, 7)), np.ones((8, 8), np.int64)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    augs = [
        ResizeShortestEdge(short_edge_length=(80, 100), max_size=400, sample_style="choice"),
        RandomCropCategoryAreaConstraint(
            crop_type="absolute",
            crop_size=(24, 32),
            single_category_max_area=0.6,
            ignored_category=255,
        ),
        RandomFlip(prob=0.5),
    ]
    caplog.set_level(logging.WARNING, logger=fused_crop.__name__)
    for seed in range(4):
        for image in (rgb[:, :, ::-1], LazyImage(tmp_path / "a.png", "BGR")):
            img, lab, _ = apply_augmentations(
                augs, image, label, np.random.RandomState(seed), fused=True
            )
            ref_img, ref_lab, _ = apply_augmentations(
                augs, rgb[:, :, ::-1], label, np.random.RandomState(seed), fused=False
            )
            np.testing.assert_array_equal(img, ref_img)
            np.testing.assert_array_equal(lab, ref_lab)
    fallback = [r for r in caplog.records if r.name == fused_crop.__name__]
    assert len(fallback) == 1  # once per process, not once per sample
    message = fallback[0].getMessage()
    assert "Pillow 99.0.0" in message and "VERIFIED_PILLOW_VERSIONS" in message
