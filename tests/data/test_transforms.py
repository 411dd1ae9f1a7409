import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from atrous.data.transforms import (
    AugInput,
    ColorJitter,
    RandomCrop,
    RandomCropCategoryAreaConstraint,
    RandomFlip,
    ResizeShortestEdge,
    apply_augmentations,
    resize_shortest_edge_shape,
)


@pytest.mark.parametrize(
    ("h", "w", "short", "max_size", "expected"),
    [
        (1024, 2048, 512, 4096, (512, 1024)),
        (1024, 2048, 2048, 4096, (2048, 4096)),
        (1024, 2048, 1536, 2048, (1024, 2048)),
        (375, 500, 800, 1333, (800, 1067)),  # 1066.67 rounds half up
        (500, 375, 800, 1333, (1067, 800)),
        (100, 1000, 800, 1333, (133, 1333)),  # long side capped, short side follows
        (7, 3, 5, 100, (12, 5)),  # 11.67 -> 12
    ],
)
def test_resize_shortest_edge_shape_matches_detectron2(h, w, short, max_size, expected):
    assert resize_shortest_edge_shape(h, w, short, max_size) == expected


def test_resize_sampling_choice_and_range():
    rng = np.random.RandomState(0)
    inp = AugInput(np.zeros((100, 200, 3), np.uint8))
    choice = ResizeShortestEdge(short_edge_length=(50, 80), max_size=1000, sample_style="choice")
    sizes = {choice.get_transform(inp, rng).new_h for _ in range(50)}
    assert sizes == {50, 80}
    rng_range = ResizeShortestEdge(short_edge_length=(50, 53), max_size=1000, sample_style="range")
    sizes = {rng_range.get_transform(inp, rng).new_h for _ in range(200)}
    assert sizes == {50, 51, 52, 53}
    zero = ResizeShortestEdge(short_edge_length=0, max_size=1000, sample_style="choice")
    out, _, _ = apply_augmentations([zero], inp.image, None, rng)
    assert out.shape == (100, 200, 3)


def test_random_draws_follow_detectron2_order():
    """Same calls, same order as detectron2 on the global RandomState: choice, rand/randint,
    randint(y), randint(x), uniform (flip)."""
    augs = [
        ResizeShortestEdge(short_edge_length=(60, 80, 100), max_size=400, sample_style="choice"),
        RandomCrop(crop_type="relative_range", crop_size=(0.5, 0.6)),
        RandomFlip(prob=0.5),
    ]
    image = np.zeros((50, 90, 3), np.uint8)
    for seed in range(20):
        _, _, ts = apply_augmentations(augs, image, None, np.random.RandomState(seed))
        g = np.random.RandomState(seed)
        size = g.choice((60, 80, 100))
        nh, nw = resize_shortest_edge_shape(50, 90, int(size), 400)
        frac = np.asarray((0.5, 0.6), np.float32) + g.rand(2) * (
            1 - np.asarray((0.5, 0.6), np.float32)
        )
        ch, cw = int(nh * frac[0] + 0.5), int(nw * frac[1] + 0.5)
        y0, x0 = g.randint(nh - ch + 1), g.randint(nw - cw + 1)
        flip = g.uniform(0.0, 1.0) < 0.5
        assert (ts[0].new_h, ts[0].new_w) == (nh, nw)
        assert (ts[1].y0, ts[1].x0, ts[1].h, ts[1].w) == (y0, x0, ch, cw)
        assert (type(ts[2]).__name__ == "HFlipTransform") == flip


def test_absolute_crop_of_small_image_is_padded_with_ignore():
    image = np.full((20, 30, 3), 7, np.uint8)
    label = np.ones((20, 30), np.uint8)
    crop = RandomCrop(crop_type="absolute", crop_size=(32, 40), label_pad=255)
    for fused in (False, True):
        out, lab, _ = apply_augmentations(
            [crop], image, label, np.random.RandomState(0), fused=fused
        )
        assert out.shape == (32, 40, 3) and lab.shape == (32, 40)
        assert (out[:20, :30] == 7).all() and (out[20:] == 0).all() and (out[:, 30:] == 0).all()
        assert (lab[:20, :30] == 1).all() and (lab[20:] == 255).all() and (lab[:, 30:] == 255).all()


def test_category_area_constraint_retries_and_excludes_ignore():
    # Left 90% is class 0, right 10% class 1: most 10x10 crops hold class 0 only.
    label = np.zeros((10, 100), np.uint8)
    label[:, 90:] = 1
    image = np.zeros((10, 100, 3), np.uint8)
    aug = RandomCropCategoryAreaConstraint(
        crop_type="absolute",
        crop_size=(10, 20),
        single_category_max_area=0.75,
        ignored_category=255,
    )
    for seed in range(30):
        t = apply_augmentations([aug], image, label, np.random.RandomState(seed))[2][0]
        # detectron2's loop, transcribed: up to 10 draws of (y0, x0), first acceptable wins.
        g = np.random.RandomState(seed)
        for _ in range(10):
            y0, x0 = g.randint(1), g.randint(81)
            _, cnt = np.unique(label[y0 : y0 + 10, x0 : x0 + 20], return_counts=True)
            if len(cnt) > 1 and cnt.max() < cnt.sum() * 0.75:
                break
        assert (t.y0, t.x0) == (y0, x0)
    accepted = 0
    for seed in range(50):
        _, lab, _ = apply_augmentations([aug], image, label, np.random.RandomState(seed))
        accepted += len(np.unique(lab)) > 1
    plain = RandomCrop(crop_type="absolute", crop_size=(10, 20))
    plain_two = sum(
        len(np.unique(apply_augmentations([plain], image, label, np.random.RandomState(s))[1])) > 1
        for s in range(50)
    )
    assert accepted > plain_two  # retries make mixed crops far more likely
    # Ignore pixels do not count: a crop of class 0 + ignore only is rejected as single-class.
    label_ignore = np.full((10, 100), 255, np.uint8)
    label_ignore[:, :50] = 0
    for seed in range(5):
        g = np.random.RandomState(seed)
        inp = AugInput(image, label_ignore)
        aug.get_transform(inp, g)
        # 10 attempts, each drawing y0 and x0 (absolute crops draw no size)
        g2 = np.random.RandomState(seed)
        for _ in range(10):
            g2.randint(1), g2.randint(81)
        assert g.randint(1 << 30) == g2.randint(1 << 30)
    # With max area 1.0 it is a plain crop with identical draws.
    off = RandomCropCategoryAreaConstraint(crop_type="absolute", crop_size=(10, 20))
    for seed in range(5):
        a = apply_augmentations([off], image, label, np.random.RandomState(seed))[2][0]
        b = apply_augmentations([plain], image, label, np.random.RandomState(seed))[2][0]
        assert (a.y0, a.x0) == (b.y0, b.x0)


def test_color_jitter_changes_only_the_image():
    rng = np.random.RandomState(0)
    image = np.random.RandomState(1).randint(0, 256, (16, 16, 3)).astype(np.uint8)
    label = np.arange(256, dtype=np.uint8).reshape(16, 16)
    aug = ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, channel_order="BGR")
    out, lab, _ = apply_augmentations([aug], image, label, rng)
    assert out.dtype == np.uint8 and out.shape == image.shape and not np.array_equal(out, image)
    np.testing.assert_array_equal(lab, label)


def _blocky_label(rng, h, w, block=8):
    small = rng.randint(0, 5, ((h + block - 1) // block, (w + block - 1) // block))
    label = np.kron(small, np.ones((block, block), np.int64))[:h, :w].astype(np.uint8)
    return label


crop_settings = st.one_of(
    st.tuples(st.just("relative"), st.tuples(st.floats(0.1, 1.0), st.floats(0.1, 1.0))),
    st.tuples(st.just("relative_range"), st.tuples(st.floats(0.1, 1.0), st.floats(0.1, 1.0))),
    st.tuples(st.just("absolute"), st.tuples(st.integers(1, 80), st.integers(1, 80))),
    st.tuples(
        st.just("absolute_range"),
        st.tuples(st.integers(1, 40), st.integers(0, 40)).map(lambda t: (t[0], t[0] + t[1])),
    ),
)


@example(h=8, w=8, short=[1], max_size=16, crop=("relative", (0.25, 1.0)), max_area=1.0, seed=0)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(8, 64),
    w=st.integers(8, 64),
    short=st.lists(st.integers(0, 96), min_size=1, max_size=3),
    max_size=st.integers(16, 200),
    crop=st.one_of(st.none(), crop_settings),
    max_area=st.sampled_from([1.0, 0.6]),
    seed=st.integers(0, 2**16),
)
def test_fuzz_pipeline_aligned_and_shaped(h, w, short, max_size, crop, max_area, seed):
    rng = np.random.RandomState(seed)
    label = _blocky_label(rng, h, w)
    label[:2, :2] = 255
    # Channel 0 encodes the label, so misalignment between image and label shows up.
    image = np.stack([label * 40 % 251, rng.randint(0, 256, (h, w)), np.zeros((h, w))], -1)
    image = image.astype(np.uint8)
    augs = [
        ResizeShortestEdge(short_edge_length=tuple(short), max_size=max_size, sample_style="choice")
    ]
    if crop is not None:
        augs.append(
            RandomCropCategoryAreaConstraint(
                crop_type=crop[0],
                crop_size=crop[1],
                single_category_max_area=max_area,
                ignored_category=255,
            )
        )
    augs.append(RandomFlip(prob=0.5))
    ref_img, ref_lab, ts = apply_augmentations(
        augs, image, label, np.random.RandomState(seed), fused=False
    )
    img, lab, _ = apply_augmentations(augs, image, label, np.random.RandomState(seed), fused=True)
    # Fused and eager paths are bit-identical.
    np.testing.assert_array_equal(img, ref_img)
    np.testing.assert_array_equal(lab, ref_lab)
    # Promised shapes.
    assert img.shape[:2] == lab.shape and img.shape[2] == 3 and img.dtype == np.uint8
    rh, rw = ts[0].output_shape((h, w)) if hasattr(ts[0], "new_h") else (h, w)
    if crop is not None:
        kind, size = crop
        if kind == "absolute":
            assert lab.shape == (size[0], size[1])
        elif kind == "absolute_range":
            assert size[0] <= lab.shape[0] <= max(size[1], size[0])
            assert size[0] <= lab.shape[1] <= max(size[1], size[0])
        elif kind == "relative":
            assert lab.shape == (int(rh * size[0] + 0.5), int(rw * size[1] + 0.5))
        else:
            assert int(rh * size[0] + 0.5) - 1 <= lab.shape[0] <= rh
            assert int(rw * size[1] + 0.5) - 1 <= lab.shape[1] <= rw
    else:
        assert lab.shape == (rh, rw)
    # Labels only from the valid set.
    assert set(np.unique(lab).tolist()) <= {0, 1, 2, 3, 4, 255}
    # Alignment: where the label is uniform over the bilinear filter's reach (and not padding),
    # the resized image channel 0 equals the label's code.
    scale = rh / h
    r = 2 + int(np.ceil(max(scale, 1 / scale)))
    k = 2 * r + 1
    if lab.shape[0] >= k and lab.shape[1] >= k:
        from numpy.lib.stride_tricks import sliding_window_view

        win = sliding_window_view(lab, (k, k))
        centre = lab[r:-r, r:-r]
        ok = (win == centre[..., None, None]).all(axis=(-1, -2)) & (centre != 255)
        code = (centre.astype(np.int64) * 40 % 251).astype(np.uint8)
        np.testing.assert_array_equal(img[r:-r, r:-r, 0][ok], code[ok])
