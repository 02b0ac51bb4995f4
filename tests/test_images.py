"""Image discovery, loading and Darknet preprocessing on real files written to disk."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from darknet2tflite.errors import InputError
from darknet2tflite.images import (
    IMAGE_EXTENSIONS,
    ImageError,
    find_images,
    letterbox_params,
    load_batch,
    load_network_image,
    load_rgb,
    preprocess,
    resize_darknet,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SAMPLES = SHARED / "images" / "samples"


def _assert_rgb(img: np.ndarray, h: int, w: int) -> None:
    assert img.dtype == np.uint8
    assert img.shape == (h, w, 3)


# ---------------------------------------------------------------- load_rgb


def test_gray_png_and_jpeg_become_three_equal_channels(tmp_path: Path) -> None:
    gray = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (7, 1))  # 7x25
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    cv2.imwrite(str(tmp_path / "g.jpg"), gray)
    for name in ("g.png", "g.jpg"):
        img = load_rgb(tmp_path / name)
        _assert_rgb(img, 7, 25)
        assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
    assert np.array_equal(load_rgb(tmp_path / "g.png")[..., 0], gray)


def test_color_is_rgb_not_bgr(tmp_path: Path) -> None:
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    cv2.imwrite(str(tmp_path / "red.bmp"), bgr)
    for name in ("red.png", "red.bmp"):
        img = load_rgb(tmp_path / name)
        assert img[0, 0].tolist() == [200, 0, 0]


def test_rgba_png_drops_alpha_keeps_color(tmp_path: Path) -> None:
    bgra = np.zeros((6, 8, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2] = 10, 20, 30
    bgra[..., 3] = np.arange(8, dtype=np.uint8) * 30  # varying alpha, incl. fully transparent
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    img = load_rgb(tmp_path / "a.png")
    _assert_rgb(img, 6, 8)
    assert (img.reshape(-1, 3) == [30, 20, 10]).all()


def test_16bit_png_scaled_by_value(tmp_path: Path) -> None:
    vals = np.array([0, 128, 257, 300, 32768, 65278, 65535], dtype=np.uint16)
    gray16 = np.tile(vals, (3, 1))
    cv2.imwrite(str(tmp_path / "g16.png"), gray16)
    img = load_rgb(tmp_path / "g16.png")
    _assert_rgb(img, 3, len(vals))
    expected = np.rint(vals / 257.0).astype(np.uint8)  # 65535 -> 255, linear, rounded
    assert img[0, :, 0].tolist() == expected.tolist()

    color16 = np.zeros((2, 3, 3), np.uint16)
    color16[..., 2] = 65535  # red, BGR order on disk
    color16[..., 1] = 257 * 100
    cv2.imwrite(str(tmp_path / "c16.png"), color16)
    assert load_rgb(tmp_path / "c16.png")[0, 0].tolist() == [255, 100, 0]

    rgba16 = np.dstack([color16, np.full((2, 3), 1000, np.uint16)])
    cv2.imwrite(str(tmp_path / "c16a.png"), rgba16)
    assert load_rgb(tmp_path / "c16a.png")[1, 2].tolist() == [255, 100, 0]


def test_palette_la_and_bilevel_images(tmp_path: Path) -> None:
    Image = pytest.importorskip("PIL.Image")
    pal = Image.new("P", (9, 5))
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    pal.putpixel((2, 1), 1)
    pal.putpixel((3, 1), 2)
    pal.save(tmp_path / "pal.png")
    pal.save(tmp_path / "palt.png", transparency=0)  # palette with a tRNS chunk
    pal.convert("RGB").save(tmp_path / "pal.bmp")
    for name in ("pal.png", "palt.png", "pal.bmp"):
        img = load_rgb(tmp_path / name)
        _assert_rgb(img, 5, 9)
        assert img[1, 2].tolist() == [255, 0, 0], name
        assert img[1, 3].tolist() == [0, 0, 255], name

    Image.fromarray(np.full((4, 3), 77, np.uint8)).convert("LA").save(tmp_path / "la.png")
    img = load_rgb(tmp_path / "la.png")
    _assert_rgb(img, 4, 3)
    assert (img == 77).all()

    bits = np.zeros((4, 6), np.uint8)
    bits[:, 3:] = 255
    Image.fromarray(bits).convert("1").save(tmp_path / "bw.png")
    img = load_rgb(tmp_path / "bw.png")
    _assert_rgb(img, 4, 6)
    assert (img[:, :3] == 0).all() and (img[:, 3:] == 255).all()


def test_exif_orientation_applied_like_darknet(tmp_path: Path) -> None:
    Image = pytest.importorskip("PIL.Image")
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(arr).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    img = load_rgb(tmp_path / "rot.jpg")
    # cv2.imread(IMREAD_COLOR), which Darknet uses, displays it rotated: 40 high, 20 wide.
    assert img.shape == (40, 20, 3)
    assert img.shape == cv2.imread(str(tmp_path / "rot.jpg")).shape


def test_corrupt_and_missing_files_raise_image_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 3)
    with pytest.raises(ImageError, match="broken.jpg"):
        load_rgb(bad)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png"):
        load_rgb(empty)
    with pytest.raises(ImageError, match="nope.png"):
        load_rgb(tmp_path / "nope.png")
    assert issubclass(ImageError, ValueError)


def test_real_sample_loads() -> None:
    if not SAMPLES.is_dir():
        pytest.skip(f"shared sample images not found at {SAMPLES}")
    img = load_rgb(SAMPLES / "dog.jpg")
    _assert_rgb(img, 576, 768)
    ref = cv2.cvtColor(cv2.imread(str(SAMPLES / "dog.jpg")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(img, ref)


# ---------------------------------------------------------------- find_images


def _touch_images(root: Path, rel_paths: list[str]) -> None:
    for rel in rel_paths:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def test_find_images_recursive_case_insensitive(tmp_path: Path) -> None:
    _touch_images(tmp_path, ["a.jpg", "B.JPG", "sub/c.Png", "sub/deeper/d.jpeg", "sub/e.bmp",
                             "notes.txt", "anim.gif", "sub/f.jpg.txt", "noext"])
    found = find_images(tmp_path, limit=None)
    rel = sorted(p.relative_to(tmp_path).as_posix() for p in found)
    assert rel == ["B.JPG", "a.jpg", "sub/c.Png", "sub/deeper/d.jpeg", "sub/e.bmp"]
    assert all(p.suffix.lower() in IMAGE_EXTENSIONS for p in found)


def test_find_images_deterministic_and_limited(tmp_path: Path) -> None:
    names = [f"d{i % 3}/img_{i:03d}.jpg" for i in range(40)]
    a, b = tmp_path / "a", tmp_path / "b"
    _touch_images(a, names)
    _touch_images(b, list(reversed(names)))  # different creation order, same content
    ra = [p.relative_to(a) for p in find_images(a, limit=None, seed=3)]
    rb = [p.relative_to(b) for p in find_images(b, limit=None, seed=3)]
    assert ra == rb
    assert sorted(ra) != ra  # shuffled, not just sorted
    assert [p.relative_to(a) for p in find_images(a, limit=None, seed=4)] != ra
    assert [p.relative_to(a) for p in find_images(a, limit=7, seed=3)] == ra[:7]
    assert len(find_images(a)) == 40  # default limit 500 > 40
    assert find_images(a, limit=0) == []
    with pytest.raises(ValueError):
        find_images(a, limit=-1)
    with pytest.raises(FileNotFoundError):
        find_images(tmp_path / "missing")


# ---------------------------------------------------------------- preprocess


def test_letterbox_params_match_darknet_integer_math() -> None:
    assert letterbox_params(640, 480, 416, 416) == (416, 312, 0, 52)
    assert letterbox_params(480, 640, 416, 416) == (312, 416, 52, 0)
    assert letterbox_params(768, 576, 608, 608) == (608, 456, 0, 76)
    assert letterbox_params(100, 100, 416, 416) == (416, 416, 0, 0)
    # Odd leftovers: C truncation (415 - 207) / 2 = 104.
    assert letterbox_params(1000, 499, 415, 415) == (415, 207, 0, 104)


def test_letterbox_gray_bars_where_expected() -> None:
    wide = np.full((100, 200, 3), 255, np.uint8)  # -> content 416x208 at y=104
    out = preprocess(wide, 416, 416, letter_box=True)
    assert out.dtype == np.float32 and out.shape == (416, 416, 3)
    assert np.all(out[:104] == 0.5) and np.all(out[312:] == 0.5)
    assert np.all(out[104:312] == 1.0)

    tall = np.zeros((300, 100, 3), np.uint8)  # -> content 138x416 at x=139
    out = preprocess(tall, 416, 416, letter_box=True)
    lb = letterbox_params(100, 300, 416, 416)
    assert lb == (138, 416, 139, 0)
    assert np.all(out[:, :139] == 0.5) and np.all(out[:, 139 + 138:] == 0.5)
    assert np.all(out[:, 139:139 + 138] == 0.0)


def test_stretch_shape_range_and_non_square() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (123, 77, 3), dtype=np.uint8)
    out = preprocess(img, 320, 192, letter_box=False)
    assert out.shape == (192, 320, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    const = np.full((50, 60, 3), 51, np.uint8)
    assert np.allclose(preprocess(const, 64, 32, False, method="opencv"), 0.2, atol=1e-6)
    # Same size: no resampling, exactly byte / 255.
    same = preprocess(img, 77, 123, letter_box=False)
    assert np.array_equal(same, (img / 255.0).astype(np.float32))


def _darknet_resize_loop(im: np.ndarray, w: int, h: int) -> np.ndarray:
    """Line-by-line transcription of image.c resize_image, float32 like the C code."""
    f = np.float32
    src_h, src_w, ch = im.shape
    part = np.zeros((src_h, w, ch), np.float32)
    out = np.zeros((h, w, ch), np.float32)
    w_scale = f(src_w - 1) / f(w - 1)
    h_scale = f(src_h - 1) / f(h - 1)
    for r in range(src_h):
        for c in range(w):
            if c == w - 1 or src_w == 1:
                part[r, c] = im[r, src_w - 1]
            else:
                sx = f(c) * w_scale
                ix = int(sx)
                dx = f(sx - f(ix))
                part[r, c] = (f(1) - dx) * im[r, ix] + dx * im[r, ix + 1]
    for r in range(h):
        sy = f(r) * h_scale
        iy = int(sy)
        dy = f(sy - f(iy))
        out[r] = (f(1) - dy) * part[iy]
        if r == h - 1 or src_h == 1:
            continue
        out[r] += dy * part[iy + 1]
    return out


@pytest.mark.parametrize("src,dst", [((37, 53), (29, 31)), ((12, 9), (31, 26)), ((5, 40), (16, 16))])
def test_resize_darknet_matches_c_loop(src: tuple[int, int], dst: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    im = rng.random((*src, 3), dtype=np.float32)
    assert np.array_equal(resize_darknet(im, dst[1], dst[0]), _darknet_resize_loop(im, dst[1], dst[0]))


def test_resize_darknet_keeps_float_truncation_quirk() -> None:
    # 16 -> 416 rows: float32 415 * (15/415) = 14.999999, so Darknet's last row only gets
    # the (1 - dy) ~ 1e-6 term and is almost black. Reproduced on purpose.
    out = resize_darknet(np.ones((16, 16, 3), np.float32), 416, 416)
    assert out[-1].max() < 1e-4 and np.allclose(out[:-1], 1.0, atol=1e-6)


def test_opencv_method_equals_cv2_resize() -> None:
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    ref = cv2.resize(img.astype(np.float32) / 255.0, (64, 48), interpolation=cv2.INTER_LINEAR)
    assert np.allclose(preprocess(img, 64, 48, False, method="opencv"), ref, atol=1e-6)
    with pytest.raises(ValueError):
        preprocess(img, 64, 48, False, method="bicubic")  # type: ignore[arg-type]


# ---------------------------------------------------------------- load_batch


def test_load_batch_skips_bad_files(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "ok1.png"), np.full((10, 20, 3), 255, np.uint8))
    cv2.imwrite(str(tmp_path / "ok2.jpg"), np.zeros((30, 15), np.uint8))
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    paths = [tmp_path / "ok1.png", tmp_path / "bad.jpg", tmp_path / "ok2.jpg", tmp_path / "gone.png"]
    batch, skipped = load_batch(paths, 32, 24, letter_box=False)
    assert batch.shape == (2, 24, 32, 3) and batch.dtype == np.float32
    assert np.allclose(batch[0], 1.0) and np.allclose(batch[1], 0.0, atol=2 / 255)
    assert [p.name for p, _ in skipped] == ["bad.jpg", "gone.png"]
    assert all(isinstance(reason, str) and reason for _, reason in skipped)
    empty, skipped = load_batch([tmp_path / "bad.jpg"], 32, 24, letter_box=True)
    assert empty.shape == (0, 24, 32, 3) and len(skipped) == 1


def test_load_batch_real_samples() -> None:
    if not SAMPLES.is_dir():
        pytest.skip(f"shared sample images not found at {SAMPLES}")
    paths = find_images(SAMPLES, limit=None)
    assert len(paths) == 8
    batch, skipped = load_batch(paths, 416, 416, letter_box=True)
    assert batch.shape == (8, 416, 416, 3) and not skipped
    assert os.path.basename(str(paths[0])).endswith(".jpg")


# ---------------------------------------------------------------- channels=1 networks


def test_grey_network_reads_like_darknet_imread_grayscale(tmp_path: Path) -> None:
    """Darknet loads a channels=1 network's images with IMREAD_GRAYSCALE (for JPEG the
    decoder's own luma), so the grey pixels must equal OpenCV's, not a mean of RGB."""
    if not SAMPLES.is_dir():
        pytest.skip(f"shared sample images not found at {SAMPLES}")
    for name in ("dog.jpg", "person.jpg"):
        grey = load_network_image(SAMPLES / name, channels=1)
        want = cv2.imread(str(SAMPLES / name), cv2.IMREAD_GRAYSCALE)
        assert grey.shape == want.shape + (1,) and grey.dtype == np.uint8
        assert np.array_equal(grey[..., 0], want)
        assert not np.array_equal(grey[..., 0], load_rgb(SAMPLES / name).mean(axis=2).astype(np.uint8))
    assert np.array_equal(load_network_image(SAMPLES / "dog.jpg", 3), load_rgb(SAMPLES / "dog.jpg"))
    # 16-bit grey is rescaled by value, colour PNG with alpha becomes grey
    vals = np.array([0, 257, 65535], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), np.tile(vals, (2, 1)))
    assert load_network_image(tmp_path / "g16.png", 1)[0, :, 0].tolist() == [0, 1, 255]
    bgra = np.zeros((3, 4, 4), np.uint8)
    bgra[..., 1], bgra[..., 3] = 200, 7
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    assert load_network_image(tmp_path / "a.png", 1).shape == (3, 4, 1)


def test_grey_preprocess_and_batches_keep_one_channel(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "wide.png"), np.full((10, 40, 3), 255, np.uint8))
    grey = load_network_image(tmp_path / "wide.png", 1)
    x = preprocess(grey, 32, 32, letter_box=True)
    assert x.shape == (32, 32, 1)
    assert np.allclose(x[0], 0.5) and np.allclose(x[16], 1.0)  # letterbox bars stay 0.5
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    batch, skipped = load_batch([tmp_path / "wide.png", tmp_path / "bad.jpg"], 16, 8, False,
                                channels=1)
    assert batch.shape == (1, 8, 16, 1) and len(skipped) == 1
    with pytest.raises(InputError, match="channels=4"):  # a cfg problem, not a skipped file
        load_batch([tmp_path / "wide.png"], 16, 8, False, channels=4)
    with pytest.raises(InputError, match="channels=2"):
        load_network_image(tmp_path / "wide.png", 2)
