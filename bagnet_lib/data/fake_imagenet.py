"""A small fake ImageNet validation folder: the layout, file names and decoding quirks of the real one.

For the tests, the benchmark and notebook 06 without ImageNet (docs/imagenet.md): `<wnid>/ILSVRC2012_val_*.JPEG`
with random-noise content at typical ImageNet sizes, every tenth image grayscale and every tenth CMYK (both
occur in the real validation set), and optionally some files cut in half, as an interrupted copy leaves them.
The synset ids are the first ones of ImageNet's sorted class list, so class index i is the i-th folder.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def fake_wnid(i: int) -> str:
    """A WordNet-style id for class `i` (n00000000, n00000001, …), sorted like the class index."""
    return f"n{i:08d}"


def write_fake_val(root: str | Path, classes: int = 3, per_class: int = 4, damaged: int = 1, seed: int = 0,
                   min_side: int = 230, max_side: int = 400) -> Path:
    """Write `classes` synset folders of `per_class` JPEGs each, plus `damaged` truncated JPEGs (in the first
    folders, one each). Returns `root`. The content is noise: no network can learn anything from it."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    index = 1
    for c in range(classes):
        folder = root / fake_wnid(c)
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(per_class):
            h, w = (int(v) for v in rng.integers(min_side, max_side, size=2))
            image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            if index % 10 == 3:
                image = image.convert("L")
            elif index % 10 == 7:
                image = image.convert("CMYK")
            image.save(folder / f"ILSVRC2012_val_{index:08d}.JPEG", quality=85)
            index += 1
    for c in range(damaged):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(buf, format="JPEG")
        (root / fake_wnid(c % classes) / f"ILSVRC2012_val_{index:08d}.JPEG").write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
        index += 1
    return root
