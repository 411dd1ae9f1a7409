import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from atrous.data.errors import ImageReadError, ImageTooLargeError
from atrous.data.image_io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    LazyImage,
    check_image_size,
    image_size,
    read_image,
    read_label,
)
from tests.data.bombs import bomb_png


@pytest.fixture
def rgb():
    return np.random.RandomState(0).randint(0, 256, (24, 40, 3)).astype(np.uint8)


def test_png_fast_path_equals_pillow(tmp_path, rgb):
    path = tmp_path / "a.png"
    Image.fromarray(rgb).save(path)
    np.testing.assert_array_equal(read_image(path, "RGB"), rgb)
    np.testing.assert_array_equal(read_image(path, "BGR"), rgb[:, :, ::-1])
    rgba = np.concatenate([rgb, np.full((24, 40, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_image(tmp_path / "b.png"), rgb)


def test_grayscale_palette_and_16bit_become_three_channels(tmp_path, rgb):
    gray = rgb[:, :, 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(gray[..., None], 3, 2))
    pal = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))
    deep = (gray.astype(np.uint16) * 257 + 100).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    out = read_image(tmp_path / "d.png")
    assert out.dtype == np.uint8 and out.shape == (24, 40, 3)
    np.testing.assert_array_equal(out[:, :, 1], (deep >> 8).astype(np.uint8))


def test_exif_orientation_is_applied(tmp_path, rgb):
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    img.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=100)
    img.save(tmp_path / "r.png", exif=exif.tobytes())
    for name in ("r.jpg", "r.png"):
        out = read_image(tmp_path / name)
        assert out.shape == (40, 24, 3), name
        assert image_size(tmp_path / name)[::-1] == (24, 40) or name.endswith(".png")
    expected = np.asarray(img.transpose(Image.Transpose.ROTATE_270))
    np.testing.assert_array_equal(read_image(tmp_path / "r.png"), expected)


def test_truncated_and_missing_files_give_clear_errors(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.png.*corrupt or truncated"):
        read_image(tmp_path / "cut.png")
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match=r"junk\.jpg"):
        read_image(tmp_path / "junk.jpg")
    with pytest.raises(ImageReadError, match=r"nope\.png: file not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match=r"cut\.png"):
        read_label(tmp_path / "cut.png")


def test_labels_keep_raw_values(tmp_path):
    label = np.random.RandomState(0).randint(0, 21, (10, 12)).astype(np.uint8)
    label[0] = 255
    pal = Image.fromarray(label, mode="L").convert("P")
    pal.putpalette([v for i in range(256) for v in (i * 3 % 256, i * 7 % 256, i * 11 % 256)])
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_label(tmp_path / "p.png"), label)
    Image.fromarray(label).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_label(tmp_path / "l.png"), label)
    wide = (label.astype(np.uint16) * 300).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    np.testing.assert_array_equal(read_label(tmp_path / "w.png"), wide)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ImageReadError, match="single-channel"):
        read_label(tmp_path / "rgb.png")


def test_image_size_reads_headers(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb).save(tmp_path / "a.jpg")
    assert image_size(tmp_path / "a.png") == (24, 40)
    assert image_size(tmp_path / "a.jpg") == (24, 40)


def test_lazy_image_partial_decode_is_exact(tmp_path, rgb):
    from atrous.data.image_io import LazyImage

    big = np.random.RandomState(3).randint(0, 256, (57, 33, 3)).astype(np.uint8)
    Image.fromarray(big).save(tmp_path / "a.png", compress_level=6)
    Image.fromarray(big).save(tmp_path / "a.jpg", quality=95)
    for name in ("a.png", "a.jpg"):
        full = read_image(tmp_path / name, "BGR")
        lazy = LazyImage(tmp_path / name, "BGR")
        assert lazy.shape == (57, 33)
        np.testing.assert_array_equal(lazy.array(), full)
        for rows in (1, 20, 57):
            np.testing.assert_array_equal(lazy.array(rows), full[:rows])
        pil = np.asarray(lazy.pil_image(20))
        assert pil.shape == (57, 33, 3)
        np.testing.assert_array_equal(pil[:20], full[:20, :, ::-1])
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    lazy = LazyImage(tmp_path / "cut.png")
    lazy.array(5)  # the rows that are there decode
    with pytest.raises(ImageReadError, match=r"cut\.png.*corrupt or truncated"):
        lazy.array()


def test_lazy_image_resized_is_pillows_bilinear_resize(tmp_path):
    rgb = np.random.RandomState(4).randint(0, 256, (30, 22, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    ref = np.asarray(Image.fromarray(rgb).resize((45, 61), Image.BILINEAR))
    for fmt, order in (("RGB", slice(None)), ("BGR", slice(None, None, -1))):
        lazy = LazyImage(tmp_path / "a.png", fmt)
        np.testing.assert_array_equal(lazy.resized(61, 45), ref[:, :, order])
        # With the top 12 source rows decoded, output rows within their reach are exact.
        top = lazy.resized(61, 45, rows=12)
        assert top.shape == (61, 45, 3)
        np.testing.assert_array_equal(top[:20], ref[:20, :, order])


# -- pixel budget -----------------------------------------------------------------------------


def _jpeg_claiming(path, width: int, height: int):
    """A small JPEG whose frame header (SOF0) is patched to claim `width` x `height`."""
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path, quality=90)
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    path.write_bytes(bytes(data))
    return path


def test_bomb_generator_writes_valid_images(tmp_path):
    # The bombs of the tests below are real PNGs: small ones decode to zeros everywhere.
    import cv2

    for w, h, depth, kind in [(7, 5, 8, 2), (300, 2000, 8, 2), (333, 777, 1, 0), (64, 48, 8, 3)]:
        path = bomb_png(tmp_path / f"{w}x{h}_{kind}.png", w, h, bit_depth=depth, colour_type=kind)
        with Image.open(path) as img:
            assert img.size == (w, h) and not np.asarray(img).any()
        decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert decoded.shape[:2] == (h, w) and not decoded.any()
    big = bomb_png(tmp_path / "big.png", 20000, 20000)
    assert big.stat().st_size < 1_500_000  # 1.2 GB of pixels in about 1 MB


_READERS_SCRIPT = r"""
import resource, sys, warnings
warnings.simplefilter("error")  # no Pillow DecompressionBombWarning may leak either
import numpy as np
from atrous.data import DatasetMapper, load_sem_seg
from atrous.data.errors import ImageTooLargeError
from atrous.data.image_io import (
    LazyImage, check_image_size, image_size, read_image, read_label,
)
from atrous.data.transforms import RandomCrop, ResizeShortestEdge

image, label, palette, huge, jpeg, small = sys.argv[1:7]
small_record = {"file_name": small, "sem_seg_file_name": small}
mapper_kw = dict(augmentations=[ResizeShortestEdge(short_edge_length=(64,), sample_style="choice"),
                                RandomCrop(crop_type="absolute", crop_size=(32, 32))],
                 image_format="BGR", num_classes=19)
calls = {
    "read_image": lambda: read_image(image),
    "read_image BGR": lambda: read_image(image, "BGR"),
    "read_image 40000x40000": lambda: read_image(huge),
    "read_image jpeg": lambda: read_image(jpeg),
    "LazyImage": lambda: LazyImage(image),
    "LazyImage jpeg": lambda: LazyImage(jpeg),
    "read_label gray": lambda: read_label(label),
    "read_label palette": lambda: read_label(palette),
    "check_image_size": lambda: check_image_size(image),
    "check_image_size jpeg": lambda: check_image_size(jpeg),
    "load_sem_seg label": lambda: load_sem_seg({"sem_seg_file_name": label}),
    "mapper image fused": lambda: DatasetMapper(**mapper_kw)({"file_name": image}),
    "mapper image": lambda: DatasetMapper(**mapper_kw, fused=False)({"file_name": image}),
    "mapper label": lambda: DatasetMapper(**mapper_kw)({**small_record,
                                                        "sem_seg_file_name": label}),
}
DatasetMapper(**mapper_kw)(small_record)  # warm up: imports and first allocations
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for name, call in calls.items():
    try:
        call()
    except ImageTooLargeError as e:
        print(name, "|", e)
    else:
        print(name, "| NOT REFUSED")
# Listing a dataset reads headers only and must not trip over Pillow's own limit.
print("image_size |", image_size(jpeg), image_size(huge))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("RSS_GROWTH_KIB", after - before)
"""


def test_every_reader_refuses_a_bomb_from_its_header(tmp_path):
    """Every decode path refuses 20000x20000 files before decoding, naming file, size and key.

    Run in a fresh process so the peak memory (ru_maxrss) shows nothing was decoded: decoding
    any of these files would take 0.4 to 4.8 GB.
    """
    image = bomb_png(tmp_path / "bomb_rgb.png", 20000, 20000)
    label = bomb_png(tmp_path / "bomb_gray.png", 20000, 20000, colour_type=0)
    palette = bomb_png(tmp_path / "bomb_palette.png", 20000, 20000, colour_type=3)
    huge = bomb_png(tmp_path / "bomb_huge.png", 40000, 40000)
    jpeg = _jpeg_claiming(tmp_path / "bomb.jpg", 40000, 30000)
    small = bomb_png(tmp_path / "small.png", 64, 48, colour_type=0)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    paths = [str(p) for p in (image, label, palette, huge, jpeg, small)]
    proc = subprocess.run(
        [sys.executable, "-c", _READERS_SCRIPT, *paths],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" | ", 1) for line in proc.stdout.splitlines() if " | " in line)
    assert len(lines) == 15, proc.stdout
    expected_file = {"palette": palette, "40000x40000": huge, "jpeg": jpeg, "label": label}
    for name, message in lines.items():
        if name == "image_size":
            assert message == "(30000, 40000) (40000, 40000)"
            continue
        assert message != "NOT REFUSED", name
        path = next((p for k, p in expected_file.items() if k in name), image)
        assert message.startswith(f"{path}: "), (name, message)
        size = {huge: "40000 x 40000 = 1,600,000,000", jpeg: "40000 x 30000 = 1,200,000,000"}
        assert size.get(path, "20000 x 20000 = 400,000,000") + " pixels" in message, message
        assert "limit of 89,478,485 pixels (INPUT.MAX_IMAGE_PIXELS)" in message, message
    growth_kib = int(proc.stdout.split("RSS_GROWTH_KIB")[1])
    assert growth_kib < 64 * 1024, f"peak memory grew by {growth_kib} KiB"


def test_budget_is_exact_on_every_decoder(tmp_path, rgb):
    # 40 x 24 = 960 pixels: PNG through OpenCV, JPEG and palette PNG through Pillow.
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb).save(tmp_path / "a.jpg")
    Image.fromarray(rgb[:, :, 0]).convert("P").save(tmp_path / "p.png")
    for path in ("a.png", "a.jpg", "p.png"):
        path = tmp_path / path
        assert read_image(path, max_pixels=960).shape == (24, 40, 3)
        assert LazyImage(path, max_pixels=960).shape == (24, 40)
        with pytest.raises(ImageTooLargeError, match=r"40 x 24 = 960 pixels.* 959 pixels"):
            read_image(path, max_pixels=959)
        with pytest.raises(ImageTooLargeError, match=r"INPUT\.MAX_IMAGE_PIXELS"):
            LazyImage(path, max_pixels=959)
        assert check_image_size(path, 960) == (24, 40)
        with pytest.raises(ImageTooLargeError):
            check_image_size(path, 959)
    assert read_label(tmp_path / "p.png", max_pixels=960).shape == (24, 40)
    with pytest.raises(ImageTooLargeError, match=r"p\.png: "):
        read_label(tmp_path / "p.png", max_pixels=959)
    # an ImageReadError like any unreadable file, so existing handlers report it
    assert issubclass(ImageTooLargeError, ImageReadError)


def test_zero_budget_means_no_limit_and_replaces_pillows(tmp_path, rgb, monkeypatch):
    Image.fromarray(rgb).save(tmp_path / "a.jpg")
    Image.fromarray(rgb[:, :, 0]).convert("P").save(tmp_path / "p.png")
    # Pillow alone would now refuse these 960-pixel files (above twice its limit) without
    # naming them; our readers apply the budget instead, and leave Pillow's limit as it was.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "a.jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for budget in (0, -1, None, 960, DEFAULT_MAX_IMAGE_PIXELS):
            assert read_image(tmp_path / "a.jpg", max_pixels=budget).shape == (24, 40, 3)
            assert read_label(tmp_path / "p.png", max_pixels=budget).shape == (24, 40)
        assert image_size(tmp_path / "a.jpg") == (24, 40)
    assert Image.MAX_IMAGE_PIXELS == 100
    with pytest.raises(ImageTooLargeError):
        read_image(tmp_path / "a.jpg", max_pixels=959)


def test_default_budget_is_pillows_limit():
    from atrous.config import get_cfg

    assert DEFAULT_MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS == 89_478_485
    assert get_cfg().INPUT.MAX_IMAGE_PIXELS == DEFAULT_MAX_IMAGE_PIXELS
