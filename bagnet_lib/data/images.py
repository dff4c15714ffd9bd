"""Decoding one image file into RGB, the same way everywhere (audit, cache, notebooks).

Introduced in notebook 01. Always 8-bit RGB, whatever the file stores (grayscale, CMYK, palette,
16-bit, float, alpha): EXIF orientation applied (a file whose EXIF is damaged is decoded as stored),
16-bit and 32-bit integer images scaled to 8 bits (by 65535 when a value exceeds 255, else by 255),
float images likewise (by 1 when every value is at most 1), transparency composited on black (so a
transparent pixel is black, whatever colour the file keeps under it). The file's name does not
matter: a PNG named `.jpg` is decoded as a PNG. Unreadable files raise `UnreadableImage`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # more than 8 bits per sample
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


class UnreadableImage(Exception):
    """The file has an image extension but cannot be decoded (empty, truncated, corrupt)."""


def is_image_name(path: str | Path) -> bool:
    """True for a visible file whose extension is an image extension."""
    p = Path(path)
    return not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def _exif_transpose(im: Image.Image) -> Image.Image:
    """`ImageOps.exif_transpose`, except that damaged EXIF leaves the (fully decoded) pixels as stored."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # malformed EXIF blocks raise all sorts (struct.error, KeyError, TypeError, ...)
        return im


def _to_8bit(im: Image.Image) -> Image.Image:
    arr = np.asarray(im, dtype=np.float64)
    peak = float(np.nanmax(arr)) if arr.size else 0.0
    scale = 65535.0 if peak > 255 else (1.0 if im.mode == "F" and peak <= 1.0 else 255.0)
    arr = np.nan_to_num(arr / scale * 255.0, nan=0.0)
    return Image.fromarray(arr.clip(0, 255).round().astype(np.uint8), mode="L")


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in _ALPHA_MODES or (im.mode in ("P", "L", "RGB") and "transparency" in im.info)


def load_rgb(path: str | Path) -> Image.Image:
    """Decode `path` fully into an 8-bit RGB PIL image with EXIF orientation applied."""
    try:
        with Image.open(path) as im:
            im.load()  # force a full decode: truncated files fail here, not later mid-epoch
            im = _exif_transpose(im)
            if im.mode in _WIDE_MODES:
                im = _to_8bit(im)
            if _has_alpha(im):
                rgba = im.convert("RGBA") if im.mode != "La" else im.convert("LA").convert("RGBA")
                im = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(f"{path}: {exc}") from exc
