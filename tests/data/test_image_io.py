import numpy as np
import pytest
from PIL import Image

from atrous.data.image_io import ImageReadError, image_size, read_image, read_label


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
