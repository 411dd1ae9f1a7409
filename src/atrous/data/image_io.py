"""Reading images and label maps.

Images come back as (H, W, 3) uint8 in the requested channel order whatever is on disk:
EXIF orientation is applied, grayscale is replicated to three channels, an alpha channel is
dropped, 16-bit samples keep their high byte. PNG files without EXIF data are decoded with
OpenCV, which is faster than Pillow and gives the same pixels (lossless format); every other
case goes through Pillow, so the result never depends on which decoder ran. JPEG is always
decoded by Pillow because JPEG decoders may differ in the last bit.

Label maps come back as (H, W) integer arrays of the raw values stored in the file (palette
PNGs give their indices, not their colours), or, for colour-coded masks (a `ColorCoding`), as
class ids decoded from the pixels' RGB colours.

Every reader takes a pixel budget (`max_pixels`, the config's INPUT.MAX_IMAGE_PIXELS; default
Pillow's own limit) and checks it against the size in the file's header before any decoder
runs, so a small file that claims a huge size (a decompression bomb) is refused with an
`ImageTooLargeError` naming the file instead of exhausting memory. Pillow's process-wide limit
(a warning above it, an anonymous error above twice it) is lifted while these readers run: the
budget replaces it, exactly and with the file's name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import stat
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DatasetError, ImageReadError, ImageTooLargeError, UnknownColorError

try:  # OpenCV is optional: Pillow alone gives identical results, only slower.
    import cv2
except ImportError:  # pragma: no cover - exercised only without opencv installed
    cv2 = None

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "ColorCoding",
    "check_image_size",
    "check_pixel_budget",
    "image_size",
    "read_image",
    "read_label",
]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Pillow's default `PIL.Image.MAX_IMAGE_PIXELS` (1 GiB of 4-byte pixels / 3); the default of
# INPUT.MAX_IMAGE_PIXELS and of every reader's `max_pixels`.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485


def _pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) uint32 keys ``r << 16 | g << 8 | b``."""
    rgb = rgb.astype(np.uint32, copy=False)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


@dataclasses.dataclass(frozen=True)
class ColorCoding:
    """How a colour-coded mask (one RGB colour per class) maps to class ids.

    Args:
        colors: one (r, g, b) per class; index = class id. Colours must be distinct.
        ignore_colors: colours of unlabelled pixels (they become the ignore label).
        unknown_colors: "error" (a colour in neither list is a `UnknownColorError` naming the
            file, the colour and its pixel count) or "ignore" (such pixels become the ignore
            label).
    """

    colors: tuple[tuple[int, int, int], ...]
    ignore_colors: tuple[tuple[int, int, int], ...] = ()
    unknown_colors: str = "error"

    def __post_init__(self) -> None:
        colors = tuple(tuple(int(v) for v in c) for c in self.colors)
        ignore = tuple(tuple(int(v) for v in c) for c in self.ignore_colors)
        object.__setattr__(self, "colors", colors)
        object.__setattr__(self, "ignore_colors", ignore)
        if self.unknown_colors not in ("error", "ignore"):
            raise DatasetError(
                f"unknown_colors must be 'error' or 'ignore', got {self.unknown_colors!r}"
            )
        if not colors or len(colors) > 255:
            raise DatasetError(f"a colour coding needs 1..255 class colours, got {len(colors)}")
        for c in colors + ignore:
            if len(c) != 3 or not all(0 <= v <= 255 for v in c):
                raise DatasetError(f"colour {list(c)} is not an RGB triple of 0..255")
        seen: dict[tuple[int, int, int], str] = {}
        for what, c in [*((f"class {i}", c) for i, c in enumerate(colors)),
                        *(("an ignore colour", c) for c in ignore)]:  # fmt: skip
            if c in seen:
                raise DatasetError(
                    f"colour {list(c)} is given for {seen[c]} and for {what}: with colour-coded "
                    "masks every class needs its own colour"
                )
            seen[c] = what

    def decode(
        self, rgb: np.ndarray, *, ignore_label: int = 255, file_name: str = ""
    ) -> np.ndarray:
        """Class ids of an ``(H, W, 3)`` uint8 RGB mask.

        Every pixel is looked up at once: colours are packed into 24-bit keys and found in the
        sorted keys of the listed colours with `np.searchsorted`.

        Returns:
            ``(H, W)`` uint8: class ids, `ignore_label` for ignored (and, with
            ``unknown_colors: ignore``, unlisted) colours.

        Raises:
            UnknownColorError: with ``unknown_colors: error``, naming the file, the unlisted
                colours and how many pixels have each.
        """
        listed = list(self.colors) + list(self.ignore_colors)
        keys = _pack_rgb(np.asarray(listed, dtype=np.uint8))
        values = np.array(
            list(range(len(self.colors))) + [ignore_label] * len(self.ignore_colors),
            dtype=np.uint8,
        )
        order = np.argsort(keys)
        keys, values = keys[order], values[order]
        pixels = _pack_rgb(rgb)
        index = np.searchsorted(keys, pixels)
        np.minimum(index, len(keys) - 1, out=index)
        found = keys[index] == pixels
        label = values[index]
        if not found.all():
            if self.unknown_colors == "error":
                raise _unknown_colors_error(pixels[~found], file_name, len(self.colors))
            label[~found] = ignore_label
        return label


def _unknown_colors_error(unknown: np.ndarray, file_name: str, num_classes: int):
    packed, counts = np.unique(unknown, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    colors = {
        (int(k >> 16), int((k >> 8) & 255), int(k & 255)): int(n)
        for k, n in zip(packed[order], counts[order], strict=True)
    }
    shown = ", ".join(f"{list(c)} on {n:,} pixels" for c, n in list(colors.items())[:5])
    more = f" and {len(colors) - 5} more" if len(colors) > 5 else ""
    return UnknownColorError(
        f"{file_name}: {len(colors)} colour(s) are not in the dataset's 'colors' "
        f"({num_classes} classes): {shown}{more}. Add each to 'colors' (one per class) or "
        "'ignore_colors', or set 'unknown_colors: ignore' to treat unlisted colours as "
        "unlabelled. A JPEG mask blurs colours: store masks as PNG.",
        colors,
    )


def check_pixel_budget(
    path: str | os.PathLike, width: int, height: int, max_pixels: int | None
) -> None:
    """Refuse an image of `width` x `height` pixels if that is more than `max_pixels`.

    Args:
        path: the file, for the message.
        width, height: size from the file's header.
        max_pixels: the budget; None, 0 or negative means no limit.

    Raises:
        ImageTooLargeError: naming the file, its size, the limit and the config key.
    """
    if max_pixels is None or max_pixels <= 0:
        return
    pixels = int(width) * int(height)
    if pixels > max_pixels:
        raise ImageTooLargeError(
            f"{path}: the image is {width} x {height} = {pixels:,} pixels, more than the limit "
            f"of {int(max_pixels):,} pixels (INPUT.MAX_IMAGE_PIXELS); it was refused from its "
            f"header, before decoding (decoded it would take {3 * pixels / 2**30:.1f} GiB as "
            "RGB). A small file claiming such a size is a decompression bomb: remove it. If "
            "the image is genuine, downscale it or raise INPUT.MAX_IMAGE_PIXELS (0: no limit)."
        )


_PILLOW_LIMIT_LOCK = threading.RLock()


@contextlib.contextmanager
def _pillow_limit(max_pixels: int | None) -> Iterator[None]:
    """Pillow's process-wide pixel limit raised to `max_pixels` (None/<= 0: off) for the block.

    Pillow warns above `PIL.Image.MAX_IMAGE_PIXELS` and raises above twice it, without naming
    the file; our budget must neither be pre-empted by that nor refused what it allows. The
    limit is only ever raised, and restored afterwards. While it is raised the lock is held, so
    that no other reader restores it under this one: briefly for a header, during the decode
    only for budgets above Pillow's (data loader workers are processes and never wait).
    """
    wanted = None if max_pixels is None or max_pixels <= 0 else int(max_pixels)
    _PILLOW_LIMIT_LOCK.acquire()
    saved = Image.MAX_IMAGE_PIXELS
    if saved is None or (wanted is not None and wanted <= saved):
        _PILLOW_LIMIT_LOCK.release()
        yield
        return
    Image.MAX_IMAGE_PIXELS = wanted
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved
        _PILLOW_LIMIT_LOCK.release()


# Bytes a file may hold beyond 8 per pixel of its header's size (16-bit RGBA, uncompressed):
# metadata (EXIF, ICC profiles, text chunks) and container overhead. A larger file is not read.
_SLACK_BYTES = 64 << 20


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _header_pixels(f: io.BufferedReader, head: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of the open file `f` (its first bytes `head`).

    None when no reader recognises it; only the header is read.
    """
    png = _png_header(head)
    if png is not None:
        return png[0], png[1]
    f.seek(0)
    try:
        with _pillow_limit(None), Image.open(f) as img:  # lazy: parses the header only
            return img.width, img.height
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


def _read_bytes(path: str | os.PathLike, max_pixels: int | None = None) -> bytes:
    """The whole file, once it is known to be a regular file whose header fits the budget.

    A device, pipe or folder is refused before it is opened; the pixel budget is checked from
    the header, and a file much larger than its header's pixels can need is refused, before
    the file is read whole.
    """
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ImageReadError(f"{path} is {_file_kind(st.st_mode)}, not an image file.")
        with open(path, "rb") as f:
            head = f.read(64)
            size = _header_pixels(f, head)
            if size is None:
                raise _corrupt(path, ValueError("not an image format this reader knows"))
            width, height = size
            check_pixel_budget(path, width, height, max_pixels)
            if st.st_size > 8 * width * height + _SLACK_BYTES:
                raise ImageReadError(
                    f"{path} is {st.st_size:,} bytes, far more than a {width}x{height} image "
                    "needs; it was refused unread. Re-create it, or remove it from the inputs."
                )
            f.seek(0)
            return f.read()
    except FileNotFoundError:
        raise ImageReadError(
            f"{path}: file not found. Check the dataset root (ATROUS_DATASETS) and that the "
            "dataset was extracted completely."
        ) from None
    except OSError as e:
        raise ImageReadError(f"{path}: cannot read the file ({e.strerror or e}).") from e


def _corrupt(path, err: Exception) -> ImageReadError:
    return ImageReadError(
        f"{path}: cannot decode the image ({str(err)[:200]}). The file is corrupt or truncated: "
        "re-download or re-create it, or remove it (and its label) from the dataset."
    )


def _read_png_checked(
    path: str | os.PathLike, max_pixels: int | None
) -> tuple[bytes, tuple[int, int, int, int] | None]:
    """The file's bytes and PNG header (None if not a PNG), its size checked against the budget.

    The PNG decoders below (OpenCV, or Pillow fed the IDAT directly) bypass Pillow's own limit,
    so the budget is checked from the header before the file is even read whole; other formats
    are checked from Pillow's parse of their header, again before decoding.
    """
    data = _read_bytes(path, max_pixels)
    return data, _png_header(data)


def _png_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) from a PNG's IHDR chunk, or None if not a PNG."""
    if len(data) < 26 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height, data[24], data[25]


def _open_pil(path, data: bytes, max_pixels: int | None) -> Image.Image:
    """Pillow image of `data`, its header checked against the budget before decoding."""
    try:
        with _pillow_limit(None):  # the header only: our check below replaces Pillow's
            img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise _corrupt(path, e) from e
    check_pixel_budget(path, img.width, img.height, max_pixels)
    try:
        with _pillow_limit(max_pixels):
            img.load()
    except Image.DecompressionBombError as e:  # a frame or tile larger than the header said
        raise ImageTooLargeError(
            f"{path}: {e} Raise INPUT.MAX_IMAGE_PIXELS (0: no limit) if the image is genuine."
        ) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise _corrupt(path, e) from e
    return img


def _cv2_decode(data: bytes) -> np.ndarray | None:
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:  # e.g. above OpenCV's own pixel limit: Pillow decodes it or says why
        return None


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    """A Pillow image of any common mode as (H, W, 3) uint8 RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        if arr.dtype != np.uint8:
            # 16-bit (or 32-bit integer) samples: keep the high byte of the 16-bit range.
            arr = (np.clip(arr.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode == "F":
        arr = np.clip(np.asarray(img), 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def _png_has_exif(data: bytes) -> bool:
    """Whether a PNG carries an eXIf chunk (walks the chunk headers, never the pixel data)."""
    pos = 8
    end = len(data)
    while pos + 8 <= end:
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if kind == b"eXIf":
            return True
        if kind == b"IEND":
            return False
        pos += 12 + length
    return False


def read_image(
    path: str | os.PathLike,
    format: str = "RGB",
    *,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """Read an image file as three 8-bit channels.

    Args:
        path: image file (PNG, JPEG, BMP, TIFF, ... anything Pillow reads).
        format: channel order of the result, "RGB" or "BGR".
        max_pixels: refuse images with more pixels than this, from the header before decoding
            (INPUT.MAX_IMAGE_PIXELS); None, 0 or negative: no limit.

    Returns:
        (H, W, 3) uint8 array in `format` order. It may be a read-only or non-contiguous
        view; copy it before writing to it.

    Raises:
        ImageTooLargeError: more pixels than `max_pixels`.
        ImageReadError: the file is missing, truncated or not an image.
    """
    if format not in ("RGB", "BGR"):
        raise ValueError(f"format must be 'RGB' or 'BGR', got {format!r}")
    data, header = _read_png_checked(path, max_pixels)
    if (
        cv2 is not None
        and header is not None
        and header[2] == 8
        and header[3] in (2, 6)  # truecolour 8-bit, with or without alpha
        and not _png_has_exif(data)  # Pillow applies the orientation tag
    ):
        arr = _cv2_decode(data)
        if arr is not None and arr.ndim == 3 and arr.shape[:2] == (header[1], header[0]):
            bgr = arr[:, :, :3]
            return bgr if format == "BGR" else bgr[:, :, ::-1]
        # A failed or partial decode: let Pillow produce a precise error (or succeed).
    img = _open_pil(path, data, max_pixels)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as e:  # malformed EXIF data must not hide the pixels
        raise _corrupt(path, e) from e
    rgb = _pil_to_rgb(img)
    return rgb if format == "RGB" else rgb[:, :, ::-1]


def read_label(
    path: str | os.PathLike,
    *,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    color_coding: ColorCoding | None = None,
    ignore_label: int = 255,
) -> np.ndarray:
    """Read a label map (class index per pixel).

    Args:
        path: single-channel PNG (8- or 16-bit grayscale, or palette: the indices are used);
            with `color_coding`, a colour-coded mask (RGB, RGBA: alpha dropped, or palette:
            the palette's colours are used, not the indices).
        max_pixels: refuse label maps with more pixels than this, from the header before
            decoding (INPUT.MAX_IMAGE_PIXELS); None, 0 or negative: no limit.
        color_coding: decode colours to class ids (see `ColorCoding`); None: stored values.
        ignore_label: the class id of ignored colours (with `color_coding` only).

    Returns:
        (H, W) uint8 or uint16 array of the stored values (uint8 class ids with
        `color_coding`).

    Raises:
        ImageTooLargeError: more pixels than `max_pixels`.
        ImageReadError: missing, truncated, or a colour image (labels must hold class indices).
        UnknownColorError: with `color_coding`, a colour it does not list.
    """
    data, header = _read_png_checked(path, max_pixels)
    if color_coding is not None:
        rgb = _read_label_rgb(path, data, header, max_pixels)
        return color_coding.decode(rgb, ignore_label=ignore_label, file_name=str(path))
    if cv2 is not None and header is not None and header[3] == 0 and header[2] in (8, 16):
        arr = _cv2_decode(data)
        if arr is not None and arr.ndim == 2 and arr.shape == (header[1], header[0]):
            return arr
    img = _open_pil(path, data, max_pixels)
    if img.mode in ("L", "P", "1"):
        return np.asarray(img.convert("L") if img.mode == "1" else img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img).astype(np.uint16, copy=False)
    if img.mode == "I":
        arr = np.asarray(img)
        if arr.min() < 0 or arr.max() > 65535:
            raise ImageReadError(f"{path}: label values must lie in 0..65535.")
        return arr.astype(np.uint16)
    if img.mode == "LA":
        return np.asarray(img.getchannel(0))
    raise ImageReadError(
        f"{path}: a label map must be a single-channel image of class indices, but this is a "
        f"{img.mode} image. For colour-coded masks set 'mask_format: rgb' and one RGB triple "
        "per class in 'colors' in the dataset YAML (register_dataset: mask_format='rgb'), or "
        "convert them to index PNGs (one value per class)."
    )


def _read_label_rgb(path, data: bytes, header, max_pixels: int | None) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a colour-coded mask; no EXIF rotation, like `read_label`."""
    if cv2 is not None and header is not None and header[2] == 8 and header[3] in (2, 6):
        arr = _cv2_decode(data)
        if arr is not None and arr.ndim == 3 and arr.shape[:2] == (header[1], header[0]):
            return arr[:, :, 2::-1]
    img = _open_pil(path, data, max_pixels)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        raise ImageReadError(
            f"{path}: a colour-coded mask must be an 8-bit RGB, RGBA or palette image, but this "
            f"is a {img.mode} image of values; leave 'mask_format' at 'ids' for such masks."
        )
    return np.asarray(img.convert("RGB"))


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image as `read_image` returns it, reading only the header.

    No pixel budget applies (nothing is decoded); `check_image_size` checks one.

    Raises:
        ImageReadError: missing file or unreadable header.
    """
    return _header_size(path)[:2]


def check_image_size(
    path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
) -> tuple[int, int]:
    """(height, width) of an image from its header, refused if over the pixel budget.

    The check every reader of this module applies before decoding, for files that are handed
    to other decoders (e.g. cityscapesscripts reading the ground truth).

    Args:
        path: image or label file.
        max_pixels: the budget (INPUT.MAX_IMAGE_PIXELS); None, 0 or negative: no limit.

    Raises:
        ImageTooLargeError: more pixels than `max_pixels`.
        ImageReadError: missing file or unreadable header.
    """
    h, w = _header_size(path)
    check_pixel_budget(path, w, h, max_pixels)
    return h, w


def _header_size(path: str | os.PathLike) -> tuple[int, int]:
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise ImageReadError(f"{path} is {_file_kind(mode)}, not an image file.")
        with open(path, "rb") as f:
            head = f.read(26)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found.") from None
    except OSError as e:
        raise ImageReadError(f"{path}: cannot read the file ({e}).") from e
    header = _png_header(head)
    if header is not None:
        # An eXIf orientation in a PNG is rare; read_image reports the true size anyway.
        return header[1], header[0]
    try:
        # Only the header is parsed; Pillow's limit must not turn a bomb into an anonymous error
        with _pillow_limit(None), Image.open(Path(path)) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise _corrupt(path, e) from e
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


class LazyImage:
    """An image whose pixels are decoded on demand, possibly only down to a given row.

    Training crops rarely need the bottom of the source image: PNGs are stored row by row, so
    decoding can stop at the last row the crop depends on. 8-bit RGB, non-interlaced PNGs
    without EXIF data (Cityscapes and the synthetic data) are decoded that way by Pillow's own
    PNG decoder fed with the image data, which gives the same pixels as a full decode; any
    other file is decoded fully by `read_image` at construction.

    Args:
        path: image file.
        format: channel order of `array`, "RGB" or "BGR".
        max_pixels: refuse images with more pixels than this, from the header before anything
            is decoded (INPUT.MAX_IMAGE_PIXELS); None, 0 or negative: no limit.

    Raises:
        ImageTooLargeError: more pixels than `max_pixels`.
        ImageReadError: the file is missing, truncated or not an image.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        format: str = "RGB",
        *,
        max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        if format not in ("RGB", "BGR"):
            raise ValueError(f"format must be 'RGB' or 'BGR', got {format!r}")
        self.path, self.format = path, format
        self.max_pixels = max_pixels
        self._idat: bytes | None = None
        self._rgb: np.ndarray | None = None
        data, header = _read_png_checked(path, max_pixels)
        if (
            header is not None
            and header[2] == 8
            and header[3] == 2
            and len(data) > 28
            and data[28] == 0  # not interlaced
            and not _png_has_exif(data)
        ):
            self.shape = (header[1], header[0])
            self._idat = _png_idat(data)
        if self._idat is None:
            self._rgb = read_image(path, "RGB", max_pixels=max_pixels)
            self.shape = tuple(self._rgb.shape[:2])

    def _decode(self, rows: int, height: int) -> Image.Image:
        """An RGB image of `height` rows of which the first `rows` are decoded (rest zero)."""
        width = self.shape[1]
        try:
            core = Image.core.new("RGB", (width, height))
            decoder = Image._getdecoder("RGB", "zip", ("RGB",), ())
            decoder.setimage(core, (0, 0, width, rows))
            consumed, err = decoder.decode(self._idat)
            decoder.cleanup()
        except Exception:  # a Pillow without this internal API: decode fully instead
            self._rgb = read_image(self.path, "RGB", max_pixels=self.max_pixels)
            self._idat = None
            return Image.fromarray(np.ascontiguousarray(self._rgb[:height]))
        if consumed >= 0 or err < 0:
            # The decoder wants more data than the file has, or failed: truncated/corrupt.
            raise _corrupt(self.path, OSError(f"PNG data ends before row {rows}"))
        return Image.new("RGB", (1, 1))._new(core)

    def pil_image(self, rows: int | None = None) -> Image.Image:
        """Full-size RGB Pillow image whose first `rows` rows (default: all) hold the pixels."""
        h = self.shape[0]
        rows = h if rows is None else max(1, min(int(rows), h))
        if self._idat is not None:
            return self._decode(rows, h)
        return Image.fromarray(np.ascontiguousarray(self._rgb))

    def resized(self, new_h: int, new_w: int, *, rows: int | None = None) -> np.ndarray:
        """(new_h, new_w, 3) uint8 in `format` order: Pillow's bilinear resize of the image.

        Only the first `rows` source rows (default: all) are decoded and the rest read as
        zero, so only the output rows whose filter stays within them are the true resize.
        """
        out = np.asarray(self.pil_image(rows).resize((int(new_w), int(new_h)), Image.BILINEAR))
        return out if self.format == "RGB" else out[:, :, ::-1]

    def array(self, rows: int | None = None) -> np.ndarray:
        """(rows, W, 3) uint8 in `format` order: the first `rows` rows (default: all)."""
        h = self.shape[0]
        rows = h if rows is None else max(1, min(int(rows), h))
        decoded = self._idat is not None
        rgb = np.asarray(self._decode(rows, rows)) if decoded else self._rgb[:rows]
        return rgb if self.format == "RGB" else rgb[:, :, ::-1]


def _png_idat(data: bytes) -> bytes | None:
    """The concatenated IDAT payloads of a PNG, or None if its chunks cannot be walked."""
    pos, parts = 8, []
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            parts.append(data[pos + 8 : pos + 8 + length])
        elif kind == b"IEND":
            break
        pos += 12 + length
    return b"".join(parts) if parts else None
