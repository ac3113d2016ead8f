"""One decoding function for every image pefs reads: files, encoded bytes, PIL images and arrays -> 8-bit RGB.

What it does, so no image is silently changed:

* **bit depth**: 16-bit images (``I;16`` PNG/TIFF, uint16 arrays) are scaled to 8 bits by ``/ 257`` over
  their full 0..65535 range (never clipped to white); 32-bit integer images holding values in 0..65535 are
  read the same way, 0..255 as 8-bit; float images in [0, 1] are multiplied by 255; any other integer or
  float range is stretched min..max per image (there is no nominal range to keep).
* **alpha**: LA / RGBA / palette-with-transparency images are composited on a white background
  (:data:`ALPHA_BACKGROUND`), so transparent pixels never show whatever colour they happen to store.
* **palette, CMYK, YCbCr, 1-bit, grey**: converted to RGB by Pillow.
* **EXIF orientation** is applied (a phone photo stored rotated is seen upright).
* **size**: an image with more than :func:`max_image_pixels` pixels (default Pillow's 89,478,485) is a
  PefsError naming the file and the limit, raised before its pixels are decoded; raise the limit with
  ``--max-image-pixels`` or :func:`set_max_image_pixels`. Pillow's DecompressionBombError never escapes.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pefs.config.checks import check_max_pixels
from pefs.errors import PefsError

#: colour transparent pixels are composited on
ALPHA_BACKGROUND = (255, 255, 255)
DEFAULT_MAX_PIXELS = 89_478_485
#: the limit travels in the environment so DataLoader worker processes (spawned or forked) see it too
ENV_MAX_PIXELS = "PEFS_MAX_IMAGE_PIXELS"
_PIL_LIMIT_LOCK = threading.Lock()
_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, TypeError, EOFError,
                  Image.DecompressionBombError)


def max_image_pixels() -> int:
    """The largest image (width x height) pefs will decode."""
    raw = os.environ.get(ENV_MAX_PIXELS)
    if raw is None:
        return DEFAULT_MAX_PIXELS
    try:
        return check_max_pixels(int(raw))
    except (ValueError, PefsError):
        raise PefsError(f"{ENV_MAX_PIXELS}={raw!r} must be a whole number of pixels >= 1") from None


def set_max_image_pixels(n: int) -> None:
    """Raise (or lower) the size limit for this process and the processes it starts."""
    os.environ[ENV_MAX_PIXELS] = str(check_max_pixels(n))


@contextlib.contextmanager
def image_limit(n: int | None) -> Iterator[None]:
    """The size limit ``n`` (None: leave it as it is) for the duration of a run, the run's DataLoader workers
    included; the previous limit afterwards."""
    if n is None:
        yield
        return
    saved = os.environ.get(ENV_MAX_PIXELS)
    set_max_image_pixels(n)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(ENV_MAX_PIXELS, None)
        else:
            os.environ[ENV_MAX_PIXELS] = saved


def _open(source: str | Path | bytes, name: str) -> Image.Image:
    """Open without decoding pixels, with Pillow's own bomb check replaced by pefs' (which names the file)."""
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(fp)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _check_size(size: tuple[int, int], name: str) -> None:
    limit = max_image_pixels()
    if size[0] * size[1] > limit:
        raise PefsError(f"image {name!r} is {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, over the limit of "
                        f"{limit:,} (a guard against decompression bombs); if it is genuine, raise the limit with "
                        f"--max-image-pixels {size[0] * size[1]}")


def _scale_to_uint8(a: np.ndarray) -> np.ndarray:
    """Integer or float pixel values -> uint8, by the value range rules in the module docstring."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            raise ValueError("the image holds NaN or infinite values")
        lo, hi = float(a.min(initial=0.0)), float(a.max(initial=0.0))
        if lo >= 0.0 and hi <= 1.0:
            return np.rint(a * 255).astype(np.uint8)
        return _stretch(a, lo, hi)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"pixel type {a.dtype} is not an image type")
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    if a.dtype in (np.uint16, np.int16) and lo >= 0 or lo >= 0 and 255 < hi <= 65535:
        return np.rint(a.astype(np.float64) / 257).astype(np.uint8)
    if lo >= 0 and hi <= 255:
        return a.astype(np.uint8)
    return _stretch(a.astype(np.float64), lo, hi)


def _stretch(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi == lo:
        return np.zeros(a.shape, np.uint8)
    return np.rint((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _from_array(a: np.ndarray) -> Image.Image:
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 2, 3, 4):
        a = np.moveaxis(a, 0, -1)  # channels-first (C, H, W)
        a = a[..., 0] if a.shape[-1] == 1 else a
    if not (a.ndim == 2 or a.ndim == 3 and a.shape[-1] in (2, 3, 4)):
        raise ValueError(f"an image array must be (H, W), (H, W, 1|2|3|4) or (C, H, W); got shape {a.shape}")
    mode = "L" if a.ndim == 2 else {2: "LA", 3: "RGB", 4: "RGBA"}[a.shape[-1]]
    return Image.fromarray(np.ascontiguousarray(_scale_to_uint8(a)), mode=mode)


def _to_rgb(img: Image.Image) -> Image.Image:
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        img = Image.fromarray(_scale_to_uint8(np.asarray(img)), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("PA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode in ("LA", "RGBA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_image(source: Any, name: str) -> Image.Image:
    """Decode one image to 8-bit RGB: ``source`` is a file path, encoded bytes, a ``datasets`` image dict
    ({"bytes", "path"}), a PIL image or an array. Any failure is a PefsError naming ``name``."""
    try:
        if isinstance(source, dict):  # datasets.Image(decode=False)
            source = source.get("bytes") or source.get("path")
            if source is None:
                raise ValueError("the image entry is empty (no bytes, no path)")
        if isinstance(source, (str, Path, bytes, bytearray)):
            img = _open(source, name)
            try:
                _check_size(img.size, name)
                img.load()
            except BaseException:
                img.close()  # no open file handle left behind by a refused or broken image
                raise
        elif isinstance(source, Image.Image):
            img = source
            _check_size(img.size, name)
        else:
            a = np.asarray(source)
            if a.ndim >= 2:
                _check_size((a.shape[-2], a.shape[-3]) if a.ndim == 3 and a.shape[-1] <= 4 else a.shape[-2:], name)
            img = _from_array(a)
        return _to_rgb(img)
    except PefsError:
        raise
    except _DECODE_ERRORS as e:
        raise PefsError(f"cannot decode image {name!r}: {type(e).__name__}: {e}") from e
