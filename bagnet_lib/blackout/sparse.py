"""Compute only the patches that are kept: a BagNet's logit at (i, j) sees only its own window.

The logit at grid position (i, j) of a BagNet depends only on the input window
`model.geometry.window(i, j)` (rows/cols `8i … 8i + rf - 1`, rf = 9, 17 or 33). A blacked-out patch
therefore need not be computed at all: crop the kept windows, stack them into a batch and run
`model.patch_logits` on each crop (an rf×rf crop gives a 1×1 output). Whether this *saves* anything
is the question of `bench sparse`: the dense pass shares the computation of overlapping windows, the
crops recompute it (see `bagnet_lib/bench/sparse.py`).

Two return formats:

- `patch_logits_at(model, x, keep)` -> dense `[N, K, H', W']`, NaN (or `fill`) at dropped positions,
  directly comparable with `model.patch_logits(x)`; `logits.nanmean(dim=(2, 3))` is the blacked-out
  image logit (the mean over the kept patches).
- `kept_patch_logits(model, x, keep)` -> `(values [M, K], index [M, 3])`, one row per kept patch, the
  index rows `(n, i, j)` in the order of `keep.nonzero()` (image-major, then raster order).

Equality with the dense pass holds in eval mode only (BatchNorm with running statistics): in train
mode BatchNorm would normalise with the statistics of the crop batch. Both functions therefore switch
the model to eval for the call and restore its previous mode afterwards. They do not touch autograd:
wrap the call in `torch.no_grad()` when you only need the values.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["kept_patch_logits", "patch_logits_at", "kept_index", "crop_windows"]


def _geometry(model: nn.Module):
    geometry = getattr(model, "geometry", None)
    if geometry is None:
        raise ValueError(f"{type(model).__name__} has no patch geometry (model.geometry is None): only a BagNet "
                         "(bagnet9/17/33), whose logits see a bounded window, can be computed patch by patch; "
                         "ResNet-50's receptive field covers the whole image.")
    return geometry


def kept_index(keep_mask: Tensor, n: int, grid: tuple[int, int]) -> Tensor:
    """The `(n, i, j)` rows [M, 3] (int64) of the kept patches of a [H', W'] or [N, H', W'] keep-map.

    A shared [H', W'] map is repeated for each of the `n` images. Raises ValueError on a wrong shape.
    """
    keep = torch.as_tensor(keep_mask)
    if keep.dtype != torch.bool:
        raise ValueError(f"keep_mask must be boolean (True = kept), got dtype {keep.dtype}")
    h, w = grid
    if keep.dim() == 2:
        if tuple(keep.shape) != (h, w):
            raise ValueError(f"keep_mask has shape {tuple(keep.shape)}, the model's grid for this image is {h}×{w}")
        keep = keep.unsqueeze(0).expand(n, h, w)
    elif keep.dim() == 3:
        if tuple(keep.shape) != (n, h, w):
            raise ValueError(f"keep_mask has shape {tuple(keep.shape)}, expected ({n}, {h}, {w}) "
                             f"(or a shared ({h}, {w}))")
    else:
        raise ValueError(f"keep_mask must be [H', W'] or [N, H', W'], got {keep.dim()} dimensions")
    return keep.nonzero()


def crop_windows(x: Tensor, index: Tensor, size: int, stride: int) -> Tensor:
    """The input windows [M, C, size, size] at `index` rows `(n, i, j)`: `x[n, :, s*i:s*i+size, s*j:s*j+size]`."""
    windows = x.unfold(2, size, stride).unfold(3, size, stride)  # view [N, C, H', W', size, size]
    index = index.to(x.device)
    return windows[index[:, 0], :, index[:, 1], index[:, 2]]  # advanced dims first: [M, C, size, size]


def kept_patch_logits(model: nn.Module, x: Tensor, keep_mask: Tensor,
                      batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Logits of the kept patches only: `(values [M, K], index [M, 3])`, index rows `(n, i, j)`.

    `x` is [N, 3, H, W] (any H, W ≥ the receptive field, square or not); `keep_mask` is a boolean
    [H', W'] (shared) or [N, H', W'] (per image) keep-map over `model.geometry.grid_size(H, W)`.
    The crops are run through `model.patch_logits` `batch_size` at a time. The model is put in eval
    mode for the call (BatchNorm running statistics; needed for equality with the dense pass) and
    its previous mode restored. Raises ValueError for a model without `geometry` (ResNet-50).
    """
    geometry = _geometry(model)
    if x.dim() != 4:
        raise ValueError(f"x must be [N, C, H, W], got shape {tuple(x.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    n, _, height, width = x.shape
    if height < geometry.size or width < geometry.size:
        raise ValueError(f"image {height}×{width} is smaller than the receptive field {geometry.size}")
    index = kept_index(keep_mask, n, geometry.grid_size(height, width))
    num_classes = model.fc.out_features
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for start in range(0, len(index), batch_size):
            crops = crop_windows(x, index[start:start + batch_size], geometry.size, geometry.stride)
            out = model.patch_logits(crops)  # [m, K, 1, 1]
            if out.shape[-2:] != (1, 1):  # cannot happen for a BagNet; guards a mis-set geometry
                raise ValueError(f"a {geometry.size}×{geometry.size} crop gave a {tuple(out.shape[-2:])} output, "
                                 "not 1×1: model.geometry does not match the network")
            chunks.append(out.flatten(1))
    finally:
        model.train(was_training)
    if chunks:
        values = torch.cat(chunks)
    else:
        values = x.new_empty((0, num_classes))
    return values, index.to(values.device)


def patch_logits_at(model: nn.Module, x: Tensor, keep_mask: Tensor, batch_size: int = 256,
                    fill: float = float("nan")) -> Tensor:
    """`model.patch_logits(x)` computed at the kept positions only: dense [N, K, H', W'], `fill` elsewhere.

    At every kept (n, i, j) the result equals `model.patch_logits(x)[n, :, i, j]` (to float rounding,
    in eval mode); dropped positions hold `fill` (NaN by default, so `out.nanmean(dim=(2, 3))` is the
    mean over the kept patches). Only the kept windows are computed (see `kept_patch_logits`, which
    also documents eval mode, the mask shapes and the ValueError for ResNet-50).
    """
    geometry = _geometry(model)
    values, index = kept_patch_logits(model, x, keep_mask, batch_size)
    h, w = geometry.grid_size(x.shape[2], x.shape[3])
    out = values.new_full((x.shape[0], h, w, values.shape[1]), fill)
    out[index[:, 0], index[:, 1], index[:, 2]] = values
    return out.permute(0, 3, 1, 2).contiguous()
