"""to_rgb_uint8 / load_image / resize_rgb on every accepted layout and the rejected ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmlc.errors import ConfigError, SourceError
from mmlc.streaming.images import load_image, resize_rgb, to_rgb_uint8


def _is_rgb(out: np.ndarray, h: int, w: int) -> bool:
    return out.shape == (h, w, 3) and out.dtype == np.uint8 and out.flags.c_contiguous


# --- PIL modes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, value, expected",
    [
        ("L", 77, (77, 77, 77)),
        ("1", 1, (255, 255, 255)),
        ("RGB", (10, 20, 30), (10, 20, 30)),
        ("RGBA", (200, 100, 50, 255), (200, 100, 50)),
        ("RGBA", (200, 100, 50, 0), (0, 0, 0)),
        ("LA", (200, 128), (100, 100, 100)),
        ("I;16", 40000, (156, 156, 156)),
        ("I;16B", 40000, (156, 156, 156)),
        ("I", 40000, (156, 156, 156)),
        ("I", 100000, (255, 255, 255)),  # clipped to 16 bits
        ("F", 0.5, (128, 128, 128)),
        ("F", 7.0, (255, 255, 255)),  # floats are 0..1, clipped
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("YCbCr", (128, 128, 128), (128, 128, 128)),
        ("RGBX", (1, 2, 3, 0), (1, 2, 3)),
    ],
)
def test_pil_modes(mode: str, value: object, expected: tuple[int, int, int]) -> None:
    out = to_rgb_uint8(Image.new(mode, (33, 17), value))  # odd size kept
    assert _is_rgb(out, 17, 33)
    np.testing.assert_allclose(out[8, 16].astype(int), expected, atol=1)


def test_pil_palette_with_and_without_transparency() -> None:
    palette = Image.new("P", (4, 3))
    palette.putpalette([0, 0, 0, 250, 10, 20] + [0] * 762)
    palette.paste(1, (0, 0, 4, 3))
    assert tuple(to_rgb_uint8(palette)[0, 0]) == (250, 10, 20)
    palette.info["transparency"] = 1
    assert tuple(to_rgb_uint8(palette)[0, 0]) == (0, 0, 0)  # transparent -> black


def test_pil_16bit_png_roundtrip(tmp_path: Path) -> None:
    Image.fromarray(np.full((5, 7), 0xABCD, np.uint16)).save(tmp_path / "deep.png")
    out = load_image(tmp_path / "deep.png")
    assert _is_rgb(out, 5, 7) and int(out[0, 0, 0]) == 0xAB


# --- numpy layouts ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(17, 33), (17, 33, 1)])
def test_gray_arrays(shape: tuple[int, ...]) -> None:
    arr = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    out = to_rgb_uint8(arr)
    assert _is_rgb(out, 17, 33)
    assert np.array_equal(out[..., 0], arr.reshape(17, 33)) and np.array_equal(
        out[..., 2], out[..., 0]
    )


def test_rgb_array_is_copied_not_aliased() -> None:
    arr = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    out = to_rgb_uint8(arr)
    assert np.array_equal(out, arr) and not np.shares_memory(out, arr)
    strided = to_rgb_uint8(np.zeros((10, 10, 3), np.uint8)[::2, ::3])
    assert _is_rgb(strided, 5, 4)


def test_alpha_is_composited_on_black() -> None:
    arr = np.zeros((2, 2, 4), np.uint8)
    arr[..., :3] = (200, 100, 50)
    arr[0, 0, 3], arr[0, 1, 3], arr[1, 0, 3] = 255, 128, 0
    out = to_rgb_uint8(arr)
    assert tuple(out[0, 0]) == (200, 100, 50)
    assert tuple(out[0, 1]) == (100, 50, 25)
    assert tuple(out[1, 0]) == (0, 0, 0)
    gray_alpha = np.stack([np.full((2, 2), 200, np.uint8), np.full((2, 2), 128, np.uint8)], axis=2)
    assert tuple(to_rgb_uint8(gray_alpha)[0, 0]) == (100, 100, 100)


def test_dtypes() -> None:
    assert tuple(to_rgb_uint8(np.full((2, 2, 3), 0x1234, np.uint16))[0, 0]) == (0x12,) * 3
    floats = np.array([[-1.0, 0.0, 0.5, 1.0, 3.0, np.nan]], np.float32)
    assert to_rgb_uint8(floats)[0, :, 0].tolist() == [0, 0, 128, 255, 255, 0]
    assert to_rgb_uint8(np.full((2, 2), 0.25, np.float64))[0, 0, 0] == 64
    assert to_rgb_uint8(np.array([[True, False]]))[0, :, 1].tolist() == [255, 0]
    rgba16 = np.full((1, 1, 4), 65535, np.uint16)
    assert tuple(to_rgb_uint8(rgba16)[0, 0]) == (255, 255, 255)


@pytest.mark.parametrize(
    "arr, message",
    [
        (
            np.zeros((3, 32, 48), np.uint8),
            r"shape \(3, 32, 48\).*channel-first.*transpose\(1, 2, 0\)",
        ),
        (np.zeros((4, 4, 5), np.uint8), r"shape \(4, 4, 5\).*accepted: a PIL image"),
        (np.zeros((1, 4, 4, 3), np.uint8), r"shape \(1, 4, 4, 3\).*drop the batch axis"),
        (np.zeros((5,), np.uint8), r"shape \(5,\)"),
        (np.zeros((0, 4, 3), np.uint8), r"shape \(0, 4, 3\)"),
        (np.zeros((4, 4), np.int64), r"dtype int64.*astype\(np.uint8\)"),
        (np.zeros((4, 4), np.complex64), r"dtype complex64"),
    ],
)
def test_bad_arrays(arr: np.ndarray, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        to_rgb_uint8(arr)


def test_bad_types() -> None:
    with pytest.raises(SourceError, match="cannot use a list as an image"):
        to_rgb_uint8([[0, 1], [2, 3]])


# --- load_image / resize_rgb --------------------------------------------------------------------


def test_load_image_paths(tmp_path: Path) -> None:
    Image.new("RGB", (9, 4), (1, 2, 3)).save(tmp_path / "a.png")
    assert tuple(load_image(tmp_path / "a.png")[3, 8]) == (1, 2, 3)
    assert tuple(load_image(str(tmp_path / "a.png"))[0, 0]) == (1, 2, 3)
    assert load_image(np.zeros((2, 3), np.uint8)).shape == (2, 3, 3)


def test_load_image_errors(tmp_path: Path) -> None:
    with pytest.raises(
        SourceError, match=r"image file '.*missing\.png' does not exist: check the path"
    ):
        load_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(SourceError, match=r"'.*text\.png' is not an image PIL can read"):
        load_image(tmp_path / "text.png")
    with pytest.raises(SourceError, match="is a folder"):
        load_image(tmp_path)
    Image.new("RGB", (64, 64), (9, 9, 9)).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        SourceError, match=r"'.*cut\.jpg' could not be decoded .*corrupt or truncated"
    ):
        load_image(tmp_path / "cut.jpg")


def test_load_image_applies_exif_rotation(tmp_path: Path) -> None:
    image = Image.new("RGB", (6, 2), (5, 5, 5))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    image.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "rot.jpg").shape == (6, 2, 3)


def test_resize_rgb() -> None:
    frame = np.zeros((17, 33, 4), np.uint8)
    frame[..., 1], frame[..., 3] = 200, 255
    out = resize_rgb(frame, 24)
    assert _is_rgb(out, 24, 24) and tuple(out[5, 5]) == (0, 200, 0)
    same = np.ones((8, 8, 3), np.uint8)
    assert np.array_equal(resize_rgb(same, 8), same)
    with pytest.raises(ConfigError, match="image size must be a positive integer, got 0"):
        resize_rgb(same, 0)
