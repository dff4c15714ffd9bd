"""Channel masking, what the paper's code did: zero columns of `fc.weight` (the feature channels:
2,048 in the published BagNet-33, 2,048 × width in this project's narrower networks).

Introduced in notebook 04. A 0/1 vector multiplies the head's input channels; after global average pooling
this removes feature channels at every position, and no spatial patch is removed. It runs on pooled
features, so a setting costs one matrix product: `ChannelSweep` adds a batch's settings to float64 sums
(the streaming engine's bookkeeping, `stream.SweepSums`), on a `LogitCache` in one batch (`channel_sweep`)
or batch by batch in the ImageNet pass.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import pandas as pd
import torch
from torch import Tensor

from bagnet_lib.blackout.masks import n_dropped
from bagnet_lib.blackout.stream import SweepSums
from bagnet_lib.blackout.sweep import PAPER_SETTINGS, LogitCache
from bagnet_lib.nets.metrics import correct, nll


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


def masked_logits(features: Tensor, masks: Tensor, fc_weight: Tensor, fc_bias: Tensor) -> Tensor:
    """Image logits [M, B, K] in float64 with `fc.weight[:, c]` multiplied by `masks[m, c]` (the same vector for
    every class): pooled features [B, C], masks [M, C]."""
    dev = features.device
    f, w = features.double(), fc_weight.to(dev, torch.float64)
    masked_w = masks.to(dev, torch.float64)[:, :, None] * w.T[None]  # [M, C, K]: cheaper than masking [M, B, C]
    return f[None] @ masked_w + fc_bias.to(dev, torch.float64)


def channel_masked_logits(cache: LogitCache, mask: Tensor) -> Tensor:
    """Image logits [N, K] of the cached features under one channel mask [C]."""
    return masked_logits(cache.features, mask[None], cache.fc_weight, cache.fc_bias)[0]


def channel_configs(settings: Sequence[tuple[str, float]], seeds: Iterable[int]) -> list[tuple[str, float, int]]:
    """(kind, drop fraction, seed) of every channel mask: each seed for `random`, seed 0 for `alternating`."""
    seeds = list(seeds)
    return [(kind, float(frac), int(seed)) for kind, frac in settings for seed in (seeds if kind == "random" else [0])]


class ChannelSweep(SweepSums):
    """The paper's channel masks over a stream of pooled features [B, C]: sums per (setting, seed).

    Rows are `("channel_<kind>", drop_frac, seed, "mean")`, the masks `channel_mask(C, kind, frac,
    Generator().manual_seed(seed))`, the logits `features @ (fc.weight * mask).T + fc.bias` in float64.
    """

    def __init__(self, fc_weight: Tensor, fc_bias: Tensor, configs: Sequence[tuple[str, float, int]]) -> None:
        super().__init__([(f"channel_{kind}", frac, seed, "mean") for kind, frac, seed in configs])
        c = fc_weight.shape[1]
        self.masks = torch.stack([channel_mask(c, kind, frac, torch.Generator().manual_seed(seed))
                                  for kind, frac, seed in configs]).double() if configs else torch.zeros(0, c)
        self.weight, self.bias = fc_weight.detach().double().cpu(), fc_bias.detach().double().cpu()

    def identity(self) -> dict:
        return {"channels": int(self.weight.shape[1]), "classes": int(self.weight.shape[0])}

    def add(self, features: Tensor, labels: Tensor) -> None:
        """Evaluate every channel mask on one batch of pooled features [B, C] and add to the sums."""
        if not self.rows:
            return
        logits = masked_logits(features, self.masks, self.weight, self.bias)  # [M, B, K]
        self.add_logits(slice(0, len(self.rows)), logits, labels, self.masks.mean(dim=1) * len(features))


def channel_sweep(cache: LogitCache, settings: Sequence[tuple[str, float]] = PAPER_SETTINGS,
                  seeds: Iterable[int] = range(30)) -> pd.DataFrame:
    """Accuracy and loss of the paper's channel masking, one row per setting and seed."""
    engine = ChannelSweep(cache.fc_weight, cache.fc_bias, channel_configs(settings, seeds))
    engine.add(cache.features, cache.labels)
    return engine.frame()[["kind", "drop_frac", "seed", "aggregation", "acc", "loss", "n_images", "kept_frac"]]


def channel_scores(cache: LogitCache, kind: str, drop_fracs: Sequence[float], seeds: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Per-image correctness bool [F, M, N] and cross-entropy [F, M, N] under the paper's channel masks (`channel_sweep`'s
    masks, image by image; seed 0 alone for `alternating`), for every fraction in `drop_fracs`."""
    c = cache.features.shape[1]
    rights, losses = [], []
    for frac in drop_fracs:
        masks = torch.stack([channel_mask(c, kind, float(frac), torch.Generator().manual_seed(int(seed)))
                             for seed in (seeds if kind == "random" else [0])])
        logits = masked_logits(cache.features, masks, cache.fc_weight, cache.fc_bias)  # [M, N, K]
        rights.append(correct(logits, cache.labels))
        losses.append(nll(logits, cache.labels))
    return torch.stack(rights), torch.stack(losses)


def channel_per_image(cache: LogitCache, kind: str, drop_frac: float, seeds: Sequence[int]) -> Tensor:
    """Per-image correctness [M, N] under the paper's channel masks (`channel_sweep`'s masks, image by image)."""
    return channel_scores(cache, kind, [drop_frac], seeds)[0][0]
