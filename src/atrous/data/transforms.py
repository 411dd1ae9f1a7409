"""Joint image/label augmentations with detectron2's semantics.

An *augmentation* draws its random parameters (from an explicit ``numpy.random.RandomState``,
in the same order and with the same calls as detectron2 draws from the global one) and returns
a *transform*, which applies the same geometry to the image and the label: images are resized
bilinearly, labels with nearest neighbour, exactly as detectron2 does it through Pillow.

Two ways to run a list of augmentations give bit-identical results:

* `AugInput` applies every transform to the whole image in turn (the reference).
* `FusedAugInput` only records the transforms, then computes the final crop window directly
  with `atrous.data.fused_crop` (Pillow's nearest-neighbour tables for the label, Pillow's
  bilinear filter re-implemented inside the window for enlarged images, an
  `atrous.data.image_io.LazyImage` decoded only down to the last row the crop depends on).
  Tests compare both paths against Pillow on many sizes.

Deviation from detectron2, documented: for crop types "absolute" and "absolute_range", an image
smaller than the crop is cropped as detectron2 does (the crop shrinks to the image), then padded
at the bottom/right to the requested crop size with 0 (image) and the ignore label (label).
detectron2 would return the smaller crop and leave the padding to the batching, which breaks
DeepLab's crop-sized ASPP pooling; with images at least as large as the crop (the Cityscapes
configs) nothing changes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
from PIL import Image

from .fused_crop import crop_window, label_window, pil_resize

__all__ = [
    "AugInput",
    "Augmentation",
    "ColorJitter",
    "ColorTransform",
    "CropTransform",
    "FusedAugInput",
    "HFlipTransform",
    "NoOpTransform",
    "RandomCrop",
    "RandomCropCategoryAreaConstraint",
    "RandomFlip",
    "ResizeShortestEdge",
    "ResizeTransform",
    "Transform",
    "apply_augmentations",
    "resize_shortest_edge_shape",
]


# ------------------------------------------------------------------------------------------
# Transforms
# ------------------------------------------------------------------------------------------


class Transform:
    """Deterministic geometry/photometry applied identically to an image and its label."""

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, C) uint8 -> (H', W', C) uint8."""
        raise NotImplementedError

    def apply_segmentation(self, sem_seg: np.ndarray) -> np.ndarray:
        """(H, W) integer labels -> (H', W')."""
        raise NotImplementedError

    def output_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        return shape


class NoOpTransform(Transform):
    def apply_image(self, image):
        return image

    def apply_segmentation(self, sem_seg):
        return sem_seg


class ResizeTransform(Transform):
    """Resize (h, w) -> (new_h, new_w): Pillow bilinear for images, nearest for labels."""

    def __init__(self, *, h: int, w: int, new_h: int, new_w: int) -> None:
        self.h, self.w, self.new_h, self.new_w = int(h), int(w), int(new_h), int(new_w)

    def apply_image(self, image):
        if image.shape[:2] != (self.h, self.w):
            raise ValueError(f"ResizeTransform expects {(self.h, self.w)}, got {image.shape[:2]}")
        return pil_resize(image, self.new_h, self.new_w, Image.BILINEAR)

    def apply_segmentation(self, sem_seg):
        return pil_resize(sem_seg, self.new_h, self.new_w, Image.NEAREST)

    def output_shape(self, shape):
        return (self.new_h, self.new_w)


class CropTransform(Transform):
    """Crop (y0, x0, h, w), then pad bottom/right to (out_h, out_w) if that is larger.

    Args:
        x0, y0, w, h: crop window inside the input.
        out_h, out_w: output size (>= h, w); the extra area is padding.
        image_pad: value of padded image pixels.
        label_pad: value of padded label pixels (the ignore label).
    """

    def __init__(
        self,
        *,
        x0: int,
        y0: int,
        w: int,
        h: int,
        out_h: int | None = None,
        out_w: int | None = None,
        image_pad: int = 0,
        label_pad: int = 255,
    ) -> None:
        self.x0, self.y0, self.w, self.h = int(x0), int(y0), int(w), int(h)
        self.out_h = max(self.h, int(out_h if out_h is not None else h))
        self.out_w = max(self.w, int(out_w if out_w is not None else w))
        self.image_pad, self.label_pad = image_pad, label_pad

    def _apply(self, array: np.ndarray, pad) -> np.ndarray:
        crop = array[self.y0 : self.y0 + self.h, self.x0 : self.x0 + self.w]
        if (self.out_h, self.out_w) == (self.h, self.w):
            return crop
        out = np.full((self.out_h, self.out_w, *array.shape[2:]), pad, dtype=array.dtype)
        out[: self.h, : self.w] = crop
        return out

    def apply_image(self, image):
        return self._apply(image, self.image_pad)

    def apply_segmentation(self, sem_seg):
        return self._apply(sem_seg, self.label_pad)

    def output_shape(self, shape):
        return (self.out_h, self.out_w)


class HFlipTransform(Transform):
    """Mirror left-right (returns a view)."""

    def apply_image(self, image):
        return image[:, ::-1]

    def apply_segmentation(self, sem_seg):
        return sem_seg[:, ::-1]


class ColorTransform(Transform):
    """Brightness, contrast and saturation blends (photometric: labels are untouched).

    Each factor f blends the image with a reference as ``f * img + (1 - f) * ref`` like
    detectron2's RandomBrightness (ref 0), RandomContrast (ref = mean) and RandomSaturation
    (ref = grayscale), applied in that order.

    Args:
        brightness, contrast, saturation: blend factors (1 leaves the image unchanged).
        channel_order: "RGB" or "BGR", so the grayscale weights hit the right channels.
    """

    def __init__(
        self, *, brightness: float, contrast: float, saturation: float, channel_order: str
    ) -> None:
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation
        self.channel_order = channel_order

    def apply_image(self, image):
        img = image.astype(np.float32)
        img = self.brightness * img
        img = np.clip(img, 0, 255)
        img = self.contrast * img + (1 - self.contrast) * img.mean()
        img = np.clip(img, 0, 255)
        weights = np.array([0.299, 0.587, 0.114], np.float32)
        if self.channel_order == "BGR":
            weights = weights[::-1]
        gray = img @ weights
        img = self.saturation * img + (1 - self.saturation) * gray[..., None]
        return np.clip(img, 0, 255).astype(np.uint8)

    def apply_segmentation(self, sem_seg):
        return sem_seg


# ------------------------------------------------------------------------------------------
# Augmentations
# ------------------------------------------------------------------------------------------


class Augmentation:
    """Draws random parameters and returns the `Transform` to apply."""

    def get_transform(self, inp: AugInput, rng: np.random.RandomState) -> Transform:
        raise NotImplementedError


def resize_shortest_edge_shape(h: int, w: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge.get_output_shape: (new_h, new_w), rounded half up."""
    size = short_edge * 1.0
    scale = size / min(h, w)
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh = newh * scale
        neww = neww * scale
    return int(newh + 0.5), int(neww + 0.5)


class ResizeShortestEdge(Augmentation):
    """Resize so the short side is a sampled length, the long side at most `max_size`.

    Args:
        short_edge_length: "choice": the lengths to choose from; "range": [min, max].
            A sampled length of 0 leaves the image unchanged.
        max_size: limit of the long side (detectron2 default: no limit).
        sample_style: "choice" or "range".
    """

    def __init__(
        self,
        *,
        short_edge_length: int | Sequence[int],
        max_size: int = sys.maxsize,
        sample_style: str = "range",
    ) -> None:
        if sample_style not in ("range", "choice"):
            raise ValueError(f"sample_style must be 'range' or 'choice', got {sample_style!r}")
        if isinstance(short_edge_length, int):
            short_edge_length = (short_edge_length, short_edge_length)
        short_edge_length = tuple(int(s) for s in short_edge_length)
        if sample_style == "range" and len(short_edge_length) != 2:
            raise ValueError(
                f"short_edge_length must be two values with 'range' sampling, got "
                f"{short_edge_length}"
            )
        self.short_edge_length = short_edge_length
        self.max_size = int(max_size)
        self.is_range = sample_style == "range"

    def get_transform(self, inp, rng):
        h, w = inp.shape
        if self.is_range:
            size = rng.randint(self.short_edge_length[0], self.short_edge_length[1] + 1)
        else:
            size = rng.choice(self.short_edge_length)
        if size == 0:
            return NoOpTransform()
        new_h, new_w = resize_shortest_edge_shape(h, w, int(size), self.max_size)
        return ResizeTransform(h=h, w=w, new_h=new_h, new_w=new_w)


_CROP_TYPES = ("relative_range", "relative", "absolute", "absolute_range")


class RandomCrop(Augmentation):
    """detectron2's RandomCrop, plus padding of too-small images for absolute crop types.

    Args:
        crop_type: "relative" (fractions of H, W), "relative_range" (fractions sampled in
            [crop_size, 1]), "absolute" (pixels), "absolute_range" (pixels sampled in
            [crop_size[0], crop_size[1]] per side).
        crop_size: two numbers, see `crop_type`.
        image_pad: value of padded image pixels.
        label_pad: value of padded label pixels (the ignore label).
    """

    def __init__(
        self,
        *,
        crop_type: str,
        crop_size: Sequence[float],
        image_pad: int = 0,
        label_pad: int = 255,
    ) -> None:
        if crop_type not in _CROP_TYPES:
            raise ValueError(f"crop_type must be one of {_CROP_TYPES}, got {crop_type!r}")
        if len(crop_size) != 2:
            raise ValueError(f"crop_size must have two values, got {list(crop_size)}")
        if crop_type.startswith("relative") and not all(0 < c <= 1 for c in crop_size):
            raise ValueError(f"relative crop sizes must be in (0, 1], got {list(crop_size)}")
        if crop_type.startswith("absolute") and not all(c >= 1 for c in crop_size):
            raise ValueError(f"absolute crop sizes must be >= 1 pixel, got {list(crop_size)}")
        if crop_type == "absolute_range" and crop_size[0] > crop_size[1]:
            raise ValueError(f"absolute_range needs crop_size[0] <= crop_size[1], got {crop_size}")
        self.crop_type = crop_type
        self.crop_size = (
            tuple(int(c) for c in crop_size)
            if crop_type.startswith("absolute")
            else tuple(float(c) for c in crop_size)
        )
        self.image_pad, self.label_pad = image_pad, label_pad

    def get_crop_size(self, image_size: tuple[int, int], rng) -> tuple[int, int]:
        """Crop (h, w) inside an image of `image_size`, as detectron2 computes it."""
        h, w = image_size
        if self.crop_type == "relative":
            ch, cw = self.crop_size
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if self.crop_type == "relative_range":
            crop_size = np.asarray(self.crop_size, dtype=np.float32)
            ch, cw = crop_size + rng.rand(2) * (1 - crop_size)
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if self.crop_type == "absolute":
            return min(self.crop_size[0], h), min(self.crop_size[1], w)
        ch = rng.randint(min(h, self.crop_size[0]), min(h, self.crop_size[1]) + 1)
        cw = rng.randint(min(w, self.crop_size[0]), min(w, self.crop_size[1]) + 1)
        return int(ch), int(cw)

    def padded_size(self, crop: tuple[int, int]) -> tuple[int, int]:
        """Output size: the crop, grown to the minimum absolute crop size if it was clipped."""
        if self.crop_type == "absolute":
            return max(crop[0], self.crop_size[0]), max(crop[1], self.crop_size[1])
        if self.crop_type == "absolute_range":
            return max(crop[0], self.crop_size[0]), max(crop[1], self.crop_size[0])
        return crop

    def make_transform(self, y0: int, x0: int, crop: tuple[int, int]) -> CropTransform:
        out_h, out_w = self.padded_size(crop)
        return CropTransform(
            x0=x0,
            y0=y0,
            w=crop[1],
            h=crop[0],
            out_h=out_h,
            out_w=out_w,
            image_pad=self.image_pad,
            label_pad=self.label_pad,
        )

    def get_transform(self, inp, rng):
        h, w = inp.shape
        croph, cropw = self.get_crop_size((h, w), rng)
        h0 = rng.randint(h - croph + 1)
        w0 = rng.randint(w - cropw + 1)
        return self.make_transform(int(h0), int(w0), (croph, cropw))


class RandomCropCategoryAreaConstraint(Augmentation):
    """RandomCrop that retries (up to 10 times, like detectron2) while one class dominates.

    A crop is accepted when, ignoring `ignored_category`, it holds more than one class and the
    largest class covers less than `single_category_max_area` of the counted pixels; after 10
    failures the last crop is used. With `single_category_max_area >= 1` it is a plain
    `RandomCrop` (same random draws).
    """

    def __init__(
        self,
        *,
        crop_type: str,
        crop_size: Sequence[float],
        single_category_max_area: float = 1.0,
        ignored_category: int | None = None,
        image_pad: int = 0,
    ) -> None:
        self.crop_aug = RandomCrop(
            crop_type=crop_type,
            crop_size=crop_size,
            image_pad=image_pad,
            label_pad=255 if ignored_category is None else ignored_category,
        )
        self.single_category_max_area = float(single_category_max_area)
        self.ignored_category = ignored_category

    def get_transform(self, inp, rng):
        if self.single_category_max_area >= 1.0:
            return self.crop_aug.get_transform(inp, rng)
        h, w = inp.shape
        for _ in range(10):
            crop_size = self.crop_aug.get_crop_size((h, w), rng)
            y0 = rng.randint(h - crop_size[0] + 1)
            x0 = rng.randint(w - crop_size[1] + 1)
            window = inp.sem_seg_crop(int(y0), int(x0), crop_size[0], crop_size[1])
            labels, cnt = np.unique(window, return_counts=True)
            if self.ignored_category is not None:
                cnt = cnt[labels != self.ignored_category]
            if len(cnt) > 1 and np.max(cnt) < np.sum(cnt) * self.single_category_max_area:
                break
        return self.crop_aug.make_transform(int(y0), int(x0), crop_size)


class RandomFlip(Augmentation):
    """Horizontal flip with probability `prob` (detectron2 draws uniform(0, 1) < prob)."""

    def __init__(self, *, prob: float = 0.5) -> None:
        self.prob = prob

    def get_transform(self, inp, rng):
        if rng.uniform(0.0, 1.0) < self.prob:
            return HFlipTransform()
        return NoOpTransform()


class ColorJitter(Augmentation):
    """Random brightness, contrast and saturation factors in [1 - x, 1 + x]."""

    def __init__(
        self, *, brightness: float, contrast: float, saturation: float, channel_order: str
    ) -> None:
        self.ranges = (brightness, contrast, saturation)
        self.channel_order = channel_order

    def get_transform(self, inp, rng):
        b, c, s = (rng.uniform(1 - r, 1 + r) for r in self.ranges)
        return ColorTransform(
            brightness=float(b),
            contrast=float(c),
            saturation=float(s),
            channel_order=self.channel_order,
        )


# ------------------------------------------------------------------------------------------
# Running augmentations
# ------------------------------------------------------------------------------------------


class AugInput:
    """Image and label transformed eagerly, one transform after the other.

    Args:
        image: (H, W, 3) uint8.
        sem_seg: (H, W) integer labels or None.
    """

    def __init__(self, image: np.ndarray, sem_seg: np.ndarray | None = None) -> None:
        self.image = image
        self.sem_seg = sem_seg

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.image.shape[:2])

    def sem_seg_crop(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        if self.sem_seg is None:
            raise ValueError("this augmentation needs a label map")
        return self.sem_seg[y0 : y0 + h, x0 : x0 + w]

    def transform(self, t: Transform) -> None:
        self.image = t.apply_image(self.image)
        if self.sem_seg is not None:
            self.sem_seg = t.apply_segmentation(self.sem_seg)

    def result(self) -> tuple[np.ndarray, np.ndarray | None]:
        return self.image, self.sem_seg


class FusedAugInput:
    """Records transforms and computes only the final crop window (same result as AugInput).

    Fuses the pattern [resize] [crop] [flip] [photometric...] (each optional, no-ops
    ignored), which is what the training and test pipelines produce; any other sequence is
    replayed eagerly.

    Args:
        image: (H, W, 3) uint8, or a `LazyImage` (decoded only down to the rows the result
            needs).
        sem_seg: (H, W) integer labels or None.
    """

    # Resample the crop window ourselves only when it is a small part of the resized image;
    # otherwise Pillow's full resize is faster (both are exact).
    WINDOW_FRACTION = 0.45

    def __init__(self, image, sem_seg: np.ndarray | None = None) -> None:
        self.image = image
        self.sem_seg = sem_seg
        self._input_shape = tuple(image.shape[:2])
        self._shape = self._input_shape
        self.transforms: list[Transform] = []

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    def _resize(self) -> ResizeTransform | None:
        geo = [t for t in self.transforms if not isinstance(t, ColorTransform)]
        if not geo:
            return None
        if len(geo) == 1 and isinstance(geo[0], ResizeTransform):
            return geo[0]
        raise _NotFusable

    def sem_seg_crop(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        if self.sem_seg is None:
            raise ValueError("this augmentation needs a label map")
        try:
            resize = self._resize()
        except _NotFusable:
            return _replay(self.image, self.sem_seg, self.transforms).sem_seg_crop(y0, x0, h, w)
        if resize is None:
            return self.sem_seg[y0 : y0 + h, x0 : x0 + w]
        return label_window(self.sem_seg, resize.new_h, resize.new_w, y0, x0, h, w)

    def transform(self, t: Transform) -> None:
        if isinstance(t, NoOpTransform):
            return
        self.transforms.append(t)
        self._shape = t.output_shape(self._shape)

    def result(self) -> tuple[np.ndarray, np.ndarray | None]:
        ts = list(self.transforms)
        resize = ts.pop(0) if ts and isinstance(ts[0], ResizeTransform) else None
        crop = ts.pop(0) if ts and isinstance(ts[0], CropTransform) else None
        flip = ts.pop(0) if ts and isinstance(ts[0], HFlipTransform) else None
        if not all(isinstance(t, ColorTransform) for t in ts):
            return _replay(self.image, self.sem_seg, self.transforms).result()
        h, w = self._input_shape
        if crop is None:
            window = (0, 0, resize.new_h, resize.new_w) if resize else (0, 0, h, w)
        else:
            window = (crop.y0, crop.x0, crop.h, crop.w)
        image, sem_seg = crop_window(
            self.image,
            self.sem_seg,
            new_shape=(resize.new_h, resize.new_w) if resize else None,
            window=window,
            window_fraction=self.WINDOW_FRACTION,
        )
        ch, cw = window[2:]
        if crop is not None and (crop.out_h, crop.out_w) != (ch, cw):
            image = _pad(image, crop, True)
            if sem_seg is not None:
                sem_seg = _pad(sem_seg, crop, False)
        if flip is not None:
            image = image[:, ::-1]
            if sem_seg is not None:
                sem_seg = sem_seg[:, ::-1]
        for t in ts:
            image = t.apply_image(image)
        return image, sem_seg


def _pad(array: np.ndarray, crop: CropTransform, is_image: bool) -> np.ndarray:
    value = crop.image_pad if is_image else crop.label_pad
    out = np.full((crop.out_h, crop.out_w, *array.shape[2:]), value, dtype=array.dtype)
    out[: array.shape[0], : array.shape[1]] = array
    return out


class _NotFusable(Exception):
    pass


def _replay(image, sem_seg, transforms) -> AugInput:
    if not isinstance(image, np.ndarray):
        image = image.array()
    inp = AugInput(image, sem_seg)
    for t in transforms:
        inp.transform(t)
    return inp


def apply_augmentations(
    augmentations: Sequence[Augmentation],
    image: np.ndarray,
    sem_seg: np.ndarray | None,
    rng: np.random.RandomState,
    *,
    fused: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, list[Transform]]:
    """Run augmentations in order on an image and its label.

    Args:
        augmentations: the pipeline.
        image: (H, W, 3) uint8, or an `atrous.data.image_io.LazyImage` (decoded only as far
            as the result needs when `fused`).
        sem_seg: (H, W) integer labels, or None.
        rng: source of all random draws.
        fused: compute only the final window (`FusedAugInput`); False applies every transform
            to the whole image (`AugInput`). Both give identical arrays.

    Returns:
        (image, sem_seg, transforms); the arrays may be views of the inputs.
    """
    if not fused and not isinstance(image, np.ndarray):
        image = image.array()
    inp = FusedAugInput(image, sem_seg) if fused else AugInput(image, sem_seg)
    transforms = []
    for aug in augmentations:
        t = aug.get_transform(inp, rng)
        inp.transform(t)
        transforms.append(t)
    image, sem_seg = inp.result()
    return image, sem_seg, transforms
