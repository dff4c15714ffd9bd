"""Channel masking, what the paper's code did: zero columns of `fc.weight` (the 2,048 feature channels).

Introduced in notebook 04. A 0/1 vector multiplies the head's input channels; after global average pooling
this removes feature channels at every position, and no spatial patch is removed. It runs on a
`LogitCache`'s pooled features, so a setting costs one matrix product.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import pandas as pd
import torch
from torch import Tensor

from bagnet_lib.blackout.masks import n_dropped
from bagnet_lib.blackout.sweep import PAPER_SETTINGS, LogitCache, mean_scores
from bagnet_lib.nets.metrics import correct


def channel_mask(num_channels: int, kind: str = "random", drop_frac: float = 0.5,
                 generator: torch.Generator | None = None) -> Tensor:
    """The paper's code's 0/1 vector over the `fc` input channels: `alternating` (by index) or `random`."""
    if kind == "alternating":
        return (torch.arange(num_channels) % 2 == 0).float()
    if kind == "random":
        drop = torch.randperm(num_channels, generator=generator)[:n_dropped(1, num_channels, drop_frac)]
        m = torch.ones(num_channels)
        m[drop] = 0.0
        return m
    raise ValueError(f"unknown channel mask kind {kind!r}; use 'alternating' or 'random'")


def channel_masked_logits(cache: LogitCache, mask: Tensor) -> Tensor:
    """Image logits with `fc.weight[:, c]` multiplied by `mask[c]`, the same vector for every class."""
    return cache.features @ (cache.fc_weight * mask[None, :]).T + cache.fc_bias


def channel_sweep(cache: LogitCache, settings: Sequence[tuple[str, float]] = PAPER_SETTINGS,
                  seeds: Iterable[int] = range(30)) -> pd.DataFrame:
    """Accuracy and loss of the paper's channel masking, one row per setting and seed."""
    rows = []
    c = cache.features.shape[1]
    for kind, frac in settings:
        for seed in (seeds if kind == "random" else [0]):
            m = channel_mask(c, kind, frac, torch.Generator().manual_seed(int(seed)))
            acc, loss = mean_scores(channel_masked_logits(cache, m), cache.labels)
            rows.append({"kind": f"channel_{kind}", "drop_frac": float(frac), "seed": int(seed),
                         "aggregation": "mean", "acc": float(acc), "loss": float(loss),
                         "n_images": len(cache.labels), "kept_frac": float(m.mean())})
    return pd.DataFrame(rows)


def channel_per_image(cache: LogitCache, kind: str, drop_frac: float, seeds: Sequence[int]) -> Tensor:
    """Per-image correctness [M, N] under the paper's channel masks (`channel_sweep`'s masks, image by image)."""
    c = cache.features.shape[1]
    rows = []
    for seed in (seeds if kind == "random" else [0]):
        m = channel_mask(c, kind, drop_frac, torch.Generator().manual_seed(int(seed)))
        rows.append(correct(channel_masked_logits(cache, m), cache.labels))
    return torch.stack(rows)
