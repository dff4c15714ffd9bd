"""Blackout masks: boolean keep-maps over the H'×W' patch grid (True = the patch is kept).

Introduced in notebook 04. A mask is `[H', W']` (shared by a batch) or `[N, H', W']` (one per image).
Every generator that takes `drop_frac` drops exactly `n_dropped(h, w, drop_frac)` patches, except
`block`, which drops one square of side round(sqrt(drop_frac·H'·W')).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

MASK_KINDS = ("checkerboard", "raster", "random", "center", "border", "block", "topk", "bottomk")


def n_dropped(h: int, w: int, drop_frac: float) -> int:
    """round(drop_frac·h·w), halves rounded up, validated to lie in [0, 1]."""
    if not 0.0 <= drop_frac <= 1.0:
        raise ValueError(f"drop_frac must lie in [0, 1], got {drop_frac}")
    return int(math.floor(drop_frac * h * w + 0.5 + 1e-9))


def alternating(h: int, w: int, pattern: str = "checkerboard", phase: int = 0) -> Tensor:
    """Keep every other patch: `checkerboard` by (i + j) parity, `raster` by flattened-index parity.

    `raster` is a spatial analogue of the paper's code's index parity: its code kept every other of the
    2,048 *channels* of `fc.weight` and has no spatial grid at all; parity of the flattened grid index
    is the closest spatial reading. On a grid of even width it keeps whole columns (vertical stripes).
    """
    i = torch.arange(h)[:, None]
    j = torch.arange(w)[None, :]
    if pattern == "checkerboard":
        parity = (i + j) % 2
    elif pattern == "raster":
        parity = (i * w + j) % 2
    else:
        raise ValueError(f"unknown alternating pattern {pattern!r}; use 'checkerboard' or 'raster'")
    return parity == phase % 2


def random(h: int, w: int, drop_frac: float, generator: torch.Generator | None = None,
           n: int | None = None) -> Tensor:
    """Drop exactly round(drop_frac·h·w) patches chosen uniformly; `n` masks if `n` is given."""
    k = n_dropped(h, w, drop_frac)
    scores = torch.rand((n or 1, h * w), generator=generator)
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep.scatter_(1, scores.argsort(dim=1)[:, :k], False)
    keep = keep.view(n or 1, h, w)
    return keep if n is not None else keep[0]


def _distance_to_center(h: int, w: int) -> Tensor:
    i = torch.arange(h, dtype=torch.float64)[:, None] - (h - 1) / 2
    j = torch.arange(w, dtype=torch.float64)[None, :] - (w - 1) / 2
    return (i**2 + j**2).sqrt()


def _keep_ranked(score: Tensor, n_keep: int) -> Tensor:
    """Keep the `n_keep` highest-scoring cells; ties broken by raster order (stable)."""
    flat = score.flatten()
    order = torch.sort(-flat, stable=True).indices
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[order[:n_keep]] = True
    return keep.view(score.shape)


def center(h: int, w: int, drop_frac: float) -> Tensor:
    """Keep the patches nearest the image centre, drop the outer ring(s)."""
    return _keep_ranked(-_distance_to_center(h, w), h * w - n_dropped(h, w, drop_frac))


def border(h: int, w: int, drop_frac: float) -> Tensor:
    """Keep the patches farthest from the centre, drop the middle."""
    return _keep_ranked(_distance_to_center(h, w), h * w - n_dropped(h, w, drop_frac))


def block(h: int, w: int, drop_frac: float, generator: torch.Generator | None = None) -> Tensor:
    """Drop one contiguous square block at a random position."""
    side = min(h, w, int(math.floor(math.sqrt(drop_frac * h * w) + 0.5)))
    keep = torch.ones(h, w, dtype=torch.bool)
    if side > 0:
        top = int(torch.randint(0, h - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - side + 1, (1,), generator=generator))
        keep[top:top + side, left:left + side] = False
    return keep


def topk(patch_logits: Tensor, drop_frac: float, keep: str = "most") -> Tensor:
    """Per image, keep the patches with the most (or least) evidence for the predicted class.

    The predicted class is the argmax of the unmasked mean; `patch_logits` is [N, K, H', W'].
    """
    if keep not in ("most", "least"):
        raise ValueError(f"keep must be 'most' or 'least', got {keep!r}")
    n, _, h, w = patch_logits.shape
    pred = patch_logits.mean(dim=(2, 3)).argmax(dim=1)
    evidence = patch_logits[torch.arange(n), pred].flatten(1)  # [N, H'W']
    n_keep = h * w - n_dropped(h, w, drop_frac)
    order = torch.sort(evidence, dim=1, descending=(keep == "most"), stable=True).indices
    out = torch.zeros_like(evidence, dtype=torch.bool)
    out.scatter_(1, order[:, :n_keep], True)
    return out.view(n, h, w)


def make_mask(kind: str, h: int, w: int, drop_frac: float = 0.5, seed: int = 0,
              patch_logits: Tensor | None = None, per_image: int | None = None) -> Tensor:
    """One entry point for every mask kind (used by the sweep engine and the explorer widget).

    `seed` feeds the random kinds; `per_image=N` gives N independent random masks; `topk`/`bottomk`
    need `patch_logits`. Alternating kinds ignore `drop_frac` (they always drop half).
    """
    gen = torch.Generator().manual_seed(int(seed))
    if kind in ("checkerboard", "raster"):
        return alternating(h, w, kind)
    if kind == "random":
        return random(h, w, drop_frac, gen, per_image)
    if kind == "center":
        return center(h, w, drop_frac)
    if kind == "border":
        return border(h, w, drop_frac)
    if kind == "block":
        return block(h, w, drop_frac, gen)
    if kind in ("topk", "bottomk"):
        if patch_logits is None:
            raise ValueError(f"mask kind {kind!r} needs patch_logits")
        return topk(patch_logits, drop_frac, "most" if kind == "topk" else "least")
    raise ValueError(f"unknown mask kind {kind!r}; choose one of {', '.join(MASK_KINDS)}")
