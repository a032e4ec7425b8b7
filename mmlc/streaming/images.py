"""Image conversion helpers: everything becomes an (H, W, 3) uint8 RGB array.

Frames travel through ``mmlc`` as C-contiguous ``numpy.ndarray`` of shape (H, W, 3), dtype uint8,
channel order RGB. :func:`to_rgb_uint8` is the single place where other layouts are normalised:

* PIL images of any mode (``L``, ``LA``, ``P``, ``PA``, ``RGB``, ``RGBA``, ``RGBX``, ``RGBa``,
  ``La``, ``1``, ``I;16*``, ``I``, ``F``, ``CMYK``, ``YCbCr``, ...);
* numpy arrays shaped (H, W), (H, W, 1), (H, W, 2) (gray + alpha), (H, W, 3) or (H, W, 4)
  (RGB + alpha) with dtype uint8, uint16, bool or float.

Value ranges: uint8 is taken as is; 16-bit data (uint16 arrays, PIL ``I;16*`` and ``I``) keeps its
high byte (``v >> 8``, ``I`` is clipped to 0..65535 first); floats (arrays and PIL ``F``) are taken
as 0..1, clipped, NaN -> 0; bool is 0 / 255. Alpha is removed by compositing on black
(``rgb * alpha / 255``). Sizes are never changed here (odd sizes such as 33x17 are fine); resizing
is :func:`resize_rgb`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mmlc.errors import ConfigError, SourceError

PathOrImage = Union[str, os.PathLike, np.ndarray, Image.Image]

_ACCEPTED = (
    "accepted: a PIL image, or a numpy array shaped (H, W), (H, W, 1), (H, W, 2), (H, W, 3) or "
    "(H, W, 4) with dtype uint8, uint16, bool or float (0..1)"
)


def to_rgb_uint8(image: Any) -> np.ndarray:
    """Convert ``image`` to a new C-contiguous (H, W, 3) uint8 RGB array.

    The result never shares memory with ``image``. Raises :class:`SourceError` naming the
    shape / dtype / type when the input is not one of the accepted layouts (see module docstring).
    """
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    raise SourceError(
        f"cannot use a {_type_name(image)} as an image: {_ACCEPTED}; convert it first "
        "(e.g. a torch tensor: t.permute(1, 2, 0).cpu().numpy())"
    )


def load_image(path_or_image: PathOrImage) -> np.ndarray:
    """Load a path (str / Path, opened with PIL, EXIF rotation applied) or convert an image.

    Returns an (H, W, 3) uint8 RGB array. A missing file, a folder, or a file PIL cannot decode
    raises :class:`SourceError` naming the path.
    """
    if isinstance(path_or_image, (str, os.PathLike)):
        return _load_image_file(Path(path_or_image))
    return to_rgb_uint8(path_or_image)


def resize_rgb(frame: Any, size: int) -> np.ndarray:
    """Resize ``frame`` (anything :func:`to_rgb_uint8` takes) to (size, size, 3) uint8 RGB.

    Uses PIL bilinear filtering; the aspect ratio is not kept (a square stretch).
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise ConfigError(f"image size must be a positive integer, got {size!r}: pass e.g. 224")
    rgb = to_rgb_uint8(frame)
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    resized = Image.fromarray(rgb, mode="RGB").resize((int(size), int(size)), Image.BILINEAR)
    return np.array(resized, dtype=np.uint8, order="C")


# --- PIL ---------------------------------------------------------------------------------------


def _load_image_file(path: Path) -> np.ndarray:
    """Open ``path`` with PIL and return (H, W, 3) uint8 RGB; errors name the path."""
    if not path.exists():
        raise SourceError(f"image file '{path}' does not exist: check the path")
    if path.is_dir():
        raise SourceError(f"image file '{path}' is a folder, not an image: pass an image file")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return _pil_to_rgb(im)
    except UnidentifiedImageError:
        raise SourceError(
            f"image file '{path}' is not an image PIL can read: pass a png/jpg/bmp/webp/tiff "
            "file or remove it"
        ) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise SourceError(
            f"image file '{path}' could not be decoded ({err}): the file is corrupt or "
            "truncated; re-export it or remove it"
        ) from None


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    """PIL image of any mode -> (H, W, 3) uint8 RGB."""
    mode = im.mode
    if mode in ("RGB", "L", "LA", "RGBA", "1", "F") or mode.startswith("I;16"):
        return _array_to_rgb(np.asarray(im), what=f"a PIL image of mode {mode}")
    if mode == "I":  # 32-bit integers, in practice 16-bit PNG / TIFF data: keep 0..65535
        return _array_to_rgb(np.clip(np.asarray(im), 0, 65535).astype(np.uint16))
    if mode in ("RGBX", "RGBa"):  # padding byte / premultiplied alpha: colour is already on black
        return np.ascontiguousarray(np.asarray(im)[..., :3])
    if mode == "La":
        return _gray_to_rgb(np.asarray(im)[..., 0])
    if mode in ("P", "PA"):
        return _array_to_rgb(np.asarray(im.convert("RGBA")), what=f"a PIL image of mode {mode}")
    try:
        return _array_to_rgb(np.asarray(im.convert("RGB")), what=f"a PIL image of mode {mode}")
    except (ValueError, OSError) as err:
        raise SourceError(
            f"cannot convert a PIL image of mode {mode!r} to RGB ({err}): convert it to RGB "
            "yourself (image.convert('RGB')) or save it as PNG"
        ) from None


# --- numpy -------------------------------------------------------------------------------------


def _array_to_rgb(arr: np.ndarray, what: str | None = None) -> np.ndarray:
    """numpy (H, W[, C]) array -> (H, W, 3) uint8 RGB (see module docstring for the rules)."""
    what = what or "a numpy array"
    _check_shape(arr, what)
    data = _to_uint8(arr, what)
    if data.ndim == 2:
        return _gray_to_rgb(data)
    channels = data.shape[2]
    if channels == 1:
        return _gray_to_rgb(data[..., 0])
    if channels == 2:
        return _gray_to_rgb(_on_black(data[..., :1], data[..., 1:])[..., 0])
    if channels == 3:
        return np.array(data, dtype=np.uint8, order="C", copy=True)
    return _on_black(data[..., :3], data[..., 3:])


def _check_shape(arr: np.ndarray, what: str) -> None:
    """Raise SourceError unless ``arr`` is (H, W) or (H, W, C) with C in 1..4 and H, W > 0."""
    ok = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 2, 3, 4))
    if ok and arr.shape[0] > 0 and arr.shape[1] > 0:
        return
    hint = ""
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 2, 3, 4):
        hint = " (it looks channel-first: use arr.transpose(1, 2, 0))"
    elif arr.ndim == 4 and arr.shape[0] == 1:
        hint = " (drop the batch axis: arr[0])"
    raise SourceError(
        f"cannot use {what} of shape {arr.shape} (dtype {arr.dtype}) as an image{hint}: {_ACCEPTED}"
    )


def _to_uint8(arr: np.ndarray, what: str) -> np.ndarray:
    """Map the accepted dtypes to uint8 with the same shape (may return ``arr`` itself)."""
    kind, size = arr.dtype.kind, arr.dtype.itemsize
    if kind == "u" and size == 1:
        return arr
    if kind == "b":
        return arr.astype(np.uint8) * np.uint8(255)
    if kind == "u" and size == 2:
        return (arr.astype(np.uint16) >> 8).astype(np.uint8)
    if kind == "f":
        unit = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return (np.clip(unit, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise SourceError(
        f"cannot use {what} of dtype {arr.dtype} (shape {arr.shape}) as an image: {_ACCEPTED}; "
        "convert it first "
        "(e.g. arr.astype(np.uint8) for 0..255 values)"
    )


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> new (H, W, 3) uint8 with the gray value in every channel."""
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def _on_black(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite (H, W, C) uint8 ``color`` with (H, W, 1) uint8 ``alpha`` on black -> new array."""
    mixed = (color.astype(np.uint16) * alpha.astype(np.uint16) + 127) // 255
    return np.ascontiguousarray(mixed.astype(np.uint8))


def _type_name(value: object) -> str:
    """'module.Class' of ``value`` for messages."""
    cls = type(value)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
