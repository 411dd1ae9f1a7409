"""The crop window of a resized image and label, computed without resizing the whole image.

`atrous.data.transforms.FusedAugInput` knows the final crop window before any pixel is
touched; this module produces the pixels of that window exactly as Pillow's full resize
followed by the crop would:

* the label is gathered through Pillow's nearest-neighbour index tables (`nearest_table`);
* when the crop is a small part of an enlarged image, the image is resampled only inside the
  window by `bilinear_window`, a re-implementation of Pillow's 8-bit fixed-point bilinear
  filter (same coefficients, same integer rounding, horizontal pass first). Pillow 13 runs the
  vertical pass first for some reductions, so the window is only resampled here for
  enlargements, the case where it saves most (the Cityscapes recipe upsamples to 2x and crops
  a quarter or less); everything else goes through Pillow itself;
* an `atrous.data.image_io.LazyImage` is decoded only down to the last source row the window
  depends on.

The re-implementation mirrors Pillow's C code, which Pillow may change in any release, so it is
used only with the Pillow versions in `VERIFIED_PILLOW_VERSIONS` (tests/data/test_fused_crop.py
compares it with Pillow bit for bit). With any other version the window is cut from Pillow's
own full resize of the fully decoded image: identical to the reference path, only slower, and
logged once per process.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import PIL
from PIL import Image

__all__ = [
    "VERIFIED_PILLOW_VERSIONS",
    "bilinear_window",
    "crop_window",
    "label_window",
    "nearest_table",
    "pil_resize",
    "pillow_version",
    "windowed_resampling_verified",
]

logger = logging.getLogger(__name__)

# (major, minor) Pillow releases whose resize `bilinear_window` and `nearest_table` reproduce
# bit for bit: tests/data/test_fused_crop.py, test_transforms.py and test_mapper.py pass with
# each installed (10.4.0, 11.3.0, 12.0.0, 13.0.0). Add a release only after they pass with it.
VERIFIED_PILLOW_VERSIONS = frozenset({(10, 4), (11, 3), (12, 0), (12, 3), (13, 0)})

_fallback_logged = False


def pillow_version() -> tuple[int, int]:
    """(major, minor) of the installed Pillow; (0, 0) if its version string cannot be read."""
    try:
        major, minor = PIL.__version__.split(".")[:2]
        return int(major), int(minor)
    except (AttributeError, ValueError):
        return (0, 0)


def windowed_resampling_verified() -> bool:
    """Whether the installed Pillow is one the window resamplers were verified against.

    Logs once per process (every data-loader worker is one) why the slower path runs if not.
    """
    global _fallback_logged
    version = pillow_version()
    if version in VERIFIED_PILLOW_VERSIONS:
        return True
    if not _fallback_logged:
        _fallback_logged = True
        verified = ", ".join(f"{a}.{b}" for a, b in sorted(VERIFIED_PILLOW_VERSIONS))
        logger.warning(
            "Pillow %s is not among the versions atrous' windowed crop resampling was verified "
            "against (%s): crops are cut from Pillow's full resize instead (identical pixels, "
            "slower data loading). Run tests/data/test_fused_crop.py with this Pillow and add "
            "it to atrous.data.fused_crop.VERIFIED_PILLOW_VERSIONS if they pass.",
            getattr(PIL, "__version__", "?"),
            verified,
        )
    return False


def crop_window(
    image,
    sem_seg: np.ndarray | None,
    *,
    new_shape: tuple[int, int] | None,
    window: tuple[int, int, int, int],
    window_fraction: float,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize an image and its label to `new_shape`, then crop `window`, computing only it.

    Args:
        image: (H, W, C) uint8, or a `LazyImage` (decoded only down to the rows needed;
            only its `shape`, `array(rows)` and `resized(new_h, new_w, rows=...)` are used).
        sem_seg: (H, W) integer labels or None.
        new_shape: (new_h, new_w) of the bilinear (image) / nearest (label) resize, or None
            for no resize.
        window: (y0, x0, h, w) inside the resized image.
        window_fraction: resample the window here only if it covers at most this fraction of
            the resized image; a larger one is cut from Pillow's full resize (faster then).

    Returns:
        (h, w, C) image (in the `LazyImage`'s channel order) and (h, w) label or None; either
        may be a view of the input.
    """
    y0, x0, ch, cw = window
    lazy = not isinstance(image, np.ndarray)
    h, w = image.shape[:2]
    if new_shape is None or tuple(new_shape) == (h, w):
        if lazy:
            image = image.array(y0 + ch)
        image = image[y0 : y0 + ch, x0 : x0 + cw]
        if sem_seg is not None:
            sem_seg = sem_seg[y0 : y0 + ch, x0 : x0 + cw]
        return image, sem_seg
    nh, nw = new_shape
    if sem_seg is not None:
        sem_seg = label_window(sem_seg, nh, nw, y0, x0, ch, cw)
    if not windowed_resampling_verified():
        full = image.resized(nh, nw) if lazy else pil_resize(image, nh, nw, Image.BILINEAR)
        return full[y0 : y0 + ch, x0 : x0 + cw], sem_seg
    # Source rows below the window's vertical filter support are never read, so a lazily
    # decoded image is decoded only down to that row.
    rows = _rows_needed(h, nh, y0, ch) if nh != h else y0 + ch
    # The windowed resampler follows Pillow's horizontal-then-vertical order, which Pillow
    # uses for enlargements; shrinking goes through Pillow itself.
    upscale = nh >= h and nw >= w
    if upscale and ch * cw <= window_fraction * nh * nw:
        src = image.array(rows) if lazy else image
        image = bilinear_window(src, nh, nw, y0, x0, ch, cw, in_h=h)
    elif lazy:
        image = image.resized(nh, nw, rows=rows)[y0 : y0 + ch, x0 : x0 + cw]
    else:
        image = pil_resize(image, nh, nw, Image.BILINEAR)[y0 : y0 + ch, x0 : x0 + cw]
    return image, sem_seg


def label_window(
    label: np.ndarray, new_h: int, new_w: int, y0: int, x0: int, h: int, w: int
) -> np.ndarray:
    """``pil_resize(label, new_h, new_w, NEAREST)[y0 : y0 + h, x0 : x0 + w]``, computing only it.

    Args:
        label: (H, W) integer labels.

    Returns:
        (h, w) labels of the same dtype.
    """
    if not windowed_resampling_verified():
        return pil_resize(label, new_h, new_w, Image.NEAREST)[y0 : y0 + h, x0 : x0 + w]
    ys = nearest_table(label.shape[0], new_h)[y0 : y0 + h]
    xs = nearest_table(label.shape[1], new_w)[x0 : x0 + w]
    return label[ys[:, None], xs[None, :]]


def pil_resize(array: np.ndarray, new_h: int, new_w: int, resample) -> np.ndarray:
    """Pillow's resize of an (H, W), (H, W, 1) or (H, W, 3) array to (new_h, new_w).

    uint8 arrays go through Pillow; 16-bit label maps (nearest only, which Pillow cannot do on
    them) through the same index tables as Pillow's.
    """
    if array.dtype == np.uint8:
        if array.ndim == 3 and array.shape[2] == 1:
            img = Image.fromarray(np.ascontiguousarray(array[:, :, 0]), mode="L")
        else:
            img = Image.fromarray(np.ascontiguousarray(array))
        out = np.asarray(img.resize((new_w, new_h), resample))
        return out[:, :, None] if array.ndim == 3 and array.shape[2] == 1 else out
    if array.ndim == 2 and resample == Image.NEAREST:
        ys = nearest_table(array.shape[0], new_h)
        xs = nearest_table(array.shape[1], new_w)
        return array[ys[:, None], xs[None, :]]
    raise TypeError(f"cannot resize an array of dtype {array.dtype} with shape {array.shape}")


# ------------------------------------------------------------------------------------------
# Exact Pillow resampling inside a window
# ------------------------------------------------------------------------------------------

_PRECISION_BITS = 32 - 8 - 2


def nearest_table(in_size: int, out_size: int) -> np.ndarray:
    """Source index of every output pixel in Pillow's nearest-neighbour resize.

    Pillow accumulates the source coordinate (start + step / 2, then + step per pixel) in
    double precision; `np.add.accumulate` adds in the same sequential order.

    Returns:
        (out_size,) int64 indices into [0, in_size).
    """
    step = float(in_size) / out_size
    steps = np.full(out_size, step, dtype=np.float64)
    steps[0] = 0.0 + step * 0.5
    coords = np.add.accumulate(steps)
    idx = coords.astype(np.int64)  # truncation, like C's (int) on non-negative values
    return np.minimum(idx, in_size - 1)


def _bilinear_coeffs(in_size: int, out_size: int, start: int, count: int):
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc for outputs [start, start + count).

    Returns:
        (xmin (count,), kk (count, ksize) int32 fixed-point weights).
    """
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ksize = math.ceil(support) * 2 + 1
    xx = np.arange(start, start + count, dtype=np.float64)
    center = 0.0 + (xx + 0.5) * scale
    ss = 1.0 / filterscale
    xmin = np.trunc(center - support + 0.5).astype(np.int64)
    xmin = np.maximum(xmin, 0)
    xmax = np.trunc(center + support + 0.5).astype(np.int64)
    xmax = np.minimum(xmax, in_size) - xmin
    taps = np.arange(ksize, dtype=np.int64)
    arg = ((taps[None, :] + xmin[:, None]).astype(np.float64) - center[:, None] + 0.5) * ss
    arg = np.abs(arg)
    w = np.where(arg < 1.0, 1.0 - arg, 0.0)
    w = np.where(taps[None, :] < xmax[:, None], w, 0.0)
    ww = np.zeros(count, dtype=np.float64)
    for k in range(ksize):  # sequential, as Pillow sums
        ww = ww + w[:, k]
    w = np.where(ww[:, None] != 0.0, w / np.where(ww == 0.0, 1.0, ww)[:, None], w)
    scaled = w * float(1 << _PRECISION_BITS)
    kk = np.where(w < 0, np.trunc(-0.5 + scaled), np.trunc(0.5 + scaled)).astype(np.int32)
    return xmin, kk


def _clip8(acc: np.ndarray) -> np.ndarray:
    return np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)


def _rows_needed(in_h: int, new_h: int, y0: int, h: int) -> int:
    """Source rows [0, n) that output rows [y0, y0 + h) of a bilinear resize depend on."""
    if h <= 0:  # an empty crop (e.g. a relative crop of a 1-pixel-high image) reads nothing
        return 0
    ymin, kk = _bilinear_coeffs(in_h, new_h, y0, h)
    return min(int(ymin.max()) + kk.shape[1], in_h)


def _filter_pass(src: np.ndarray, first: np.ndarray, kk: np.ndarray, axis: int) -> np.ndarray:
    """One fixed-point pass of Pillow's resampler along `axis` (0: rows, 1: columns).

    Output i along `axis` is ``sum_k kk[i, k] * src[first[i] + k]`` (indices clamped to the
    input), rounded and clipped to uint8 as Pillow does.
    """
    shape = list(src.shape)
    shape[axis] = kk.shape[0]
    acc = np.full(shape, 1 << (_PRECISION_BITS - 1), np.int32)
    for k in range(kk.shape[1]):
        weight = kk[:, k]
        if not weight.any():
            continue
        idx = np.minimum(first + k, src.shape[axis] - 1)
        if axis == 0:
            acc += src[idx].astype(np.int32) * weight[:, None, None]
        else:
            acc += src[:, idx, :].astype(np.int32) * weight[None, :, None]
    return _clip8(acc)


def bilinear_window(
    image: np.ndarray,
    new_h: int,
    new_w: int,
    y0: int,
    x0: int,
    h: int,
    w: int,
    *,
    in_h: int | None = None,
) -> np.ndarray:
    """``Image.resize((new_w, new_h), BILINEAR)`` of a uint8 image, cropped to a window.

    Computes only the window: the same coefficients, integer arithmetic and two passes
    (horizontal, then vertical) as Pillow's 8-bit resampler, hence identical pixels (for the
    Pillow versions in `VERIFIED_PILLOW_VERSIONS`, for enlargements).

    Args:
        image: (H, W, C) or (H, W) uint8.
        new_h, new_w: size of the full resized image.
        y0, x0, h, w: window inside the resized image.
        in_h: height of the full source image when `image` holds only its top rows (at least
            those the window depends on).

    Returns:
        (h, w, C) or (h, w) uint8.
    """
    in_w = image.shape[1]
    in_h = image.shape[0] if in_h is None else in_h
    squeeze = image.ndim == 2
    if squeeze:
        image = image[:, :, None]
    # Vertical coefficients decide which source rows the horizontal pass needs.
    if new_h != in_h:
        ymin, kky = _bilinear_coeffs(in_h, new_h, y0, h)
        row_first = int(ymin[0])
        row_last = min(int(ymin.max()) + kky.shape[1], in_h, image.shape[0])
    else:
        row_first, row_last = y0, y0 + h
    rows = image[row_first:row_last]
    if new_w != in_w:
        xmin, kkx = _bilinear_coeffs(in_w, new_w, x0, w)
        tmp = _filter_pass(rows, xmin, kkx, axis=1)
    else:
        tmp = rows[:, x0 : x0 + w]
    out = _filter_pass(tmp, ymin - row_first, kky, axis=0) if new_h != in_h else tmp
    return out[:, :, 0] if squeeze else out
