"""Pixel blackout: paint the image area of dropped tiles with the mean colour, then run the network.

Introduced in notebook 04. Information is really removed from the input, and it works for ResNet-50 too,
so it is the only blackout that compares the two networks. Each setting costs a forward pass.
"""
from __future__ import annotations

from typing import Iterable

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from bagnet_lib.blackout.masks import make_mask
from bagnet_lib.blackout.sweep import mean_scores
from bagnet_lib.data.tensors import IMAGENET_MEAN
from bagnet_lib.nets.train import predict


def tile_bounds(size: int, cells: int) -> list[tuple[int, int]]:
    """Pixel [start, stop) of each of `cells` tiles laid evenly over `size` pixels."""
    edges = [round(i * size / cells) for i in range(cells + 1)]
    return list(zip(edges[:-1], edges[1:]))


def pixel_keep_map(keep: Tensor, height: int, width: int) -> Tensor:
    """Upsample a grid keep-mask [h, w] or [N, h, w] to a pixel mask [.., height, width]."""
    h, w = keep.shape[-2:]
    rows = torch.tensor([i for i, (a, b) in enumerate(tile_bounds(height, h)) for _ in range(b - a)])
    cols = torch.tensor([j for j, (a, b) in enumerate(tile_bounds(width, w)) for _ in range(b - a)])
    return keep[..., rows[:, None], cols[None, :]]


def pixel_blackout(images: Tensor, keep: Tensor, fill: Tensor | float | None = None) -> Tensor:
    """Paint the tiles of dropped grid cells with the ImageNet mean colour (uint8 in, uint8 out)."""
    pix = pixel_keep_map(keep.to(torch.bool), images.shape[-2], images.shape[-1])
    if pix.dim() == 2:
        pix = pix.expand(images.shape[0], *pix.shape)
    if fill is None:
        fill = torch.tensor([round(255 * m) for m in IMAGENET_MEAN], dtype=images.dtype)
    fill = torch.as_tensor(fill, dtype=images.dtype).view(1, -1, 1, 1)
    return torch.where(pix[:, None], images, fill.expand_as(images))


@torch.no_grad()
def pixel_blackout_eval(model: nn.Module, images: Tensor, labels: Tensor, grid: tuple[int, int],
                        drop_fracs: Iterable[float], seeds: Iterable[int], batch_size: int = 64,
                        model_name: str = "", progress: bool = True, precision: str = "fp32") -> pd.DataFrame:
    """Accuracy and loss with random tiles of a `grid` painted out, per drop fraction and seed.

    Each image gets its own random mask (seeded by `seed`), so the result is an average over placements.
    """
    h, w = grid
    rows = []
    configs = [(f, s) for f in drop_fracs for s in seeds]
    for frac, seed in tqdm(configs, desc=f"pixel blackout {model_name}", disable=not progress, leave=False):
        keep = make_mask("random", h, w, frac, seed, per_image=len(images))
        logits = predict(model, pixel_blackout(images, keep), batch_size, precision=precision)
        acc, loss = mean_scores(logits, labels)
        rows.append({"model": model_name, "kind": "pixel", "drop_frac": float(frac), "seed": int(seed),
                     "aggregation": "model", "acc": float(acc), "loss": float(loss), "n_images": len(labels),
                     "kept_frac": float(keep.float().mean())})
    return pd.DataFrame(rows)
