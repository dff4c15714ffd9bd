"""Decoding one image file into RGB, the same way everywhere (audit, cache, notebooks).

Introduced in notebook 01. Always RGB, EXIF orientation applied, 16-bit scaled to 8-bit, alpha
dropped (composited on black by PIL's convert). Unreadable files raise `UnreadableImage`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


class UnreadableImage(Exception):
    """The file has an image extension but cannot be decoded (empty, truncated, corrupt)."""


def is_image_name(path: str | Path) -> bool:
    """True for a visible file whose extension is an image extension."""
    p = Path(path)
    return not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def load_rgb(path: str | Path) -> Image.Image:
    """Decode `path` fully into an 8-bit RGB PIL image with EXIF orientation applied."""
    try:
        with Image.open(path) as im:
            im.load()  # force a full decode: truncated files fail here, not later mid-epoch
            original_mode = im.mode
            im = ImageOps.exif_transpose(im)
            if original_mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                scale = 65535.0 if arr.max() > 255 else 255.0
                im = Image.fromarray((arr / scale * 255.0).clip(0, 255).astype(np.uint8), mode="L")
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImage(f"{path}: {exc}") from exc
