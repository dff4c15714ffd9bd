"""Blackout experiments: logit cache, sweep engine, channel masking (the paper's code), pixel blackout.

Introduced in notebook 04. Three different things have been called "blackout":

1. *Patch blackout* (what the paper's text describes): drop patch logits before aggregating. Since
   a BagNet's patch logits do not depend on each other, the test set's patch logits are computed once
   (`cache_logits`) and any number of masks × aggregations are evaluated on the cache (`sweep`).
2. *Channel masking* (what the paper's code did): multiply columns of `fc.weight` (the 2,048 feature
   channels) by a 0/1 vector. After global average pooling this removes feature channels at every
   position; no spatial patch is removed (`channel_mask`, `channel_masked_logits`).
3. *Pixel blackout*: paint the image area of dropped tiles with the mean colour before the network
   (`pixel_blackout`). Information is really removed from the input, and it works for ResNet-50 too,
   so it is the only blackout that can compare the two networks.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .aggregate import aggregate
from .data.tensors import eval_batches, normalize
from .errors import UserError
from .io import atomic_write
from .masks import make_mask
from .metrics import correct, nll

PAPER_SETTINGS = (("alternating", 0.5), ("random", 0.75), ("random", 0.5), ("random", 0.25))


# --------------------------------------------------------------------------- logit cache
@dataclass
class LogitCache:
    """A model's outputs over one split: patch logits [N, K, H', W'], pooled features [N, C], head."""

    patch_logits: Tensor
    labels: Tensor
    features: Tensor
    fc_weight: Tensor
    fc_bias: Tensor
    paths: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.patch_logits.shape[-2:])

    def save(self, path: str | Path) -> Path:
        """Write the cache atomically (plain tensors and strings: loads with weights_only=True)."""
        obj = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return atomic_write(path, lambda p: torch.save(obj, p))

    @classmethod
    def load(cls, path: str | Path) -> "LogitCache":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            return cls(**obj)
        except Exception as exc:
            raise UserError(f"Cannot read logit cache {path} ({type(exc).__name__}: {exc}). Delete it and run "
                            "`python -m bagnet_lib cache-logits` again.") from exc


@torch.no_grad()
def cache_logits(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 64,
                 paths: Sequence[str] = (), classes: Sequence[str] = (), progress: bool = True,
                 precision: str = "fp32") -> LogitCache:
    """One forward pass over a uint8 stack [N, 3, H, W]: patch logits and pooled features for every image.

    The backbone runs in `precision`, exactly as in `train.predict` (`features_fp32`), the head in fp32.
    """
    from .train import features_fp32, resolve_precision

    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    model.eval()
    pl, feats = [], []
    for x, _ in tqdm(eval_batches(images, labels, batch_size), total=math.ceil(len(images) / batch_size),
                     desc="cache logits", disable=not progress, leave=False):
        f = features_fp32(model, normalize(x.to(device)), precision)
        pl.append(model.head(f).cpu())
        feats.append(f.mean(dim=(2, 3)).cpu())
    return LogitCache(torch.cat(pl), labels.clone(), torch.cat(feats), model.fc.weight.detach().float().cpu(),
                      model.fc.bias.detach().float().cpu(), list(paths), list(classes))


# --------------------------------------------------------------------------- sweep engine
def _scores(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Accuracy and mean cross-entropy along the last-but-one axis: logits [..., N, K] → [...]."""
    return correct(logits, labels).float().mean(-1), nll(logits, labels).mean(-1).float()


def sweep(cache: LogitCache, kinds: Iterable[str], drop_fracs: Iterable[float], seeds: Iterable[int],
          aggregations: Iterable[str] = ("mean",), per_image: bool = False, chunk: int = 64) -> pd.DataFrame:
    """Evaluate every mask kind × drop fraction × seed × aggregation on the cached patch logits.

    Vectorised over images (and, for `mean`/`zero`, over all masks at once with one einsum); no
    Python loop over images. Deterministic kinds (alternating, center, border, top-k) are evaluated
    once per fraction (seed recorded as 0). `per_image=True` draws an independent random mask per
    image; otherwise one mask is shared by all images, as in the paper. Returns one row per
    configuration: kind, drop_frac, seed, aggregation, acc, loss, n_images, kept_frac. Masks are
    processed `chunk` at a time to bound memory.
    """
    x, y = cache.patch_logits.float(), cache.labels
    n, k, h, w = x.shape
    drop_fracs, seeds, aggregations = list(drop_fracs), list(seeds), list(aggregations)
    configs: list[tuple[str, float, int]] = []
    for kind in kinds:
        fracs = [0.5] if kind in ("checkerboard", "raster") else drop_fracs
        kind_seeds = seeds if kind in ("random", "block") else [0]
        configs += [(kind, float(f), int(s)) for f, s in itertools.product(fracs, kind_seeds)]
    configs = list(dict.fromkeys(configs))  # alternating kinds ignore drop_frac: evaluate once
    flat = x.reshape(n, k, h * w)
    rows = []
    for start in range(0, len(configs), chunk):
        part = configs[start:start + chunk]
        keep = torch.stack([make_mask(kind, h, w, frac, seed, patch_logits=x, per_image=n if per_image else None)
                            .expand(n, h, w).reshape(n, h * w) for kind, frac, seed in part])  # [M, N, P]
        if not bool(keep.any(dim=2).all()):
            raise ValueError("a mask keeps no patch for some image: nothing left to aggregate")
        kept_frac = keep.float().mean(dim=(1, 2))
        for agg in aggregations:
            if agg in ("mean", "zero"):
                keep_f = keep.float()
                sums = torch.einsum("nkp,mnp->mnk", flat, keep_f)
                denom = keep_f.sum(dim=2, keepdim=True) if agg == "mean" else torch.tensor(float(h * w))
                acc, loss = _scores(sums / denom, y)
            else:
                acc, loss = _scores(torch.stack([aggregate(x, m.view(n, h, w), agg) for m in keep]), y)
            rows += [{"kind": kind, "drop_frac": frac, "seed": seed, "aggregation": agg, "acc": float(acc[i]),
                      "loss": float(loss[i]), "n_images": n, "kept_frac": float(kept_frac[i])}
                     for i, (kind, frac, seed) in enumerate(part)]
    order = {a: i for i, a in enumerate(aggregations)}
    df = pd.DataFrame(rows, columns=["kind", "drop_frac", "seed", "aggregation", "acc", "loss", "n_images",
                                     "kept_frac"])
    return df.sort_values("aggregation", key=lambda c: c.map(order), kind="stable", ignore_index=True)


def summarize_sweep(df: pd.DataFrame) -> pd.DataFrame:
    """Per kind/fraction/aggregation: mean accuracy and loss over masks (or seeds), where 95 % of the masks lie
    (`acc_spread`, `loss_spread`: percentiles, not intervals), the Student-t interval of the mean over the
    seeds (`acc_t_ci`: for a few repeated runs such as pixel-blackout seeds), and the count."""
    from .stats import spread, t_interval

    out = []
    for (kind, frac, agg), g in df.groupby(["kind", "drop_frac", "aggregation"], sort=True):
        out.append({"kind": kind, "drop_frac": frac, "aggregation": agg, "n_seeds": len(g),
                    "acc_mean": g["acc"].mean(), "acc_spread": list(spread(g["acc"])),
                    "acc_t_ci": list(t_interval(g["acc"])),
                    "loss_mean": g["loss"].mean(), "loss_spread": list(spread(g["loss"])),
                    "acc_std": g["acc"].std(ddof=1) if len(g) > 1 else 0.0})
    return pd.DataFrame(out)


def per_image_scores(cache: LogitCache, kind: str, drop_fracs: Sequence[float], seeds: Sequence[int],
                     aggregation: str = "mean") -> tuple[Tensor, Tensor]:
    """Per-image correctness and cross-entropy under each mask: bool [F, M, N] and float [F, M, N].

    The same masks as `sweep` (same kind, fractions and seeds, one mask shared by all images), so
    `correct.float().mean(-1)` and `nll.mean(-1)` are `sweep`'s acc and loss; what this adds is the
    image axis, for intervals over test images and paired differences (masked − full, image by image).
    """
    x, y = cache.patch_logits.float(), cache.labels
    n, k, h, w = x.shape
    flat = x.reshape(n, k, h * w)
    rights, losses = [], []
    for frac in drop_fracs:
        keep = torch.stack([make_mask(kind, h, w, float(frac), int(s), patch_logits=x).expand(n, h, w)
                            .reshape(n, h * w) for s in seeds]).float()  # [M, N, P]
        if aggregation == "mean":
            logits = torch.einsum("nkp,mnp->mnk", flat, keep) / keep.sum(dim=2, keepdim=True)
        elif aggregation == "zero":
            logits = torch.einsum("nkp,mnp->mnk", flat, keep) / (h * w)
        else:
            logits = torch.stack([aggregate(x, m.bool().view(n, h, w), aggregation) for m in keep])
        rights.append(correct(logits, y))
        losses.append(nll(logits, y))
    return torch.stack(rights), torch.stack(losses).float()


def channel_per_image(cache: LogitCache, kind: str, drop_frac: float, seeds: Sequence[int]) -> Tensor:
    """Per-image correctness [M, N] under the paper's channel masks (`channel_sweep`'s masks, image by image)."""
    c = cache.features.shape[1]
    rows = []
    for seed in (seeds if kind == "random" else [0]):
        m = channel_mask(c, kind, drop_frac, torch.Generator().manual_seed(int(seed)))
        rows.append(correct(channel_masked_logits(cache, m), cache.labels))
    return torch.stack(rows)


# --------------------------------------------------------------------------- channel masking
def channel_mask(num_channels: int, kind: str = "random", drop_frac: float = 0.5,
                 generator: torch.Generator | None = None) -> Tensor:
    """The paper's code's 0/1 vector over the `fc` input channels: `alternating` (by index) or `random`."""
    if kind == "alternating":
        return (torch.arange(num_channels) % 2 == 0).float()
    if kind == "random":
        from .masks import n_dropped

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
            acc, loss = _scores(channel_masked_logits(cache, m), cache.labels)
            rows.append({"kind": f"channel_{kind}", "drop_frac": float(frac), "seed": int(seed),
                         "aggregation": "mean", "acc": float(acc), "loss": float(loss),
                         "n_images": len(cache.labels), "kept_frac": float(m.mean())})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- pixel blackout
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
    from .data.tensors import IMAGENET_MEAN

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
    from .train import predict

    h, w = grid
    rows = []
    configs = [(f, s) for f in drop_fracs for s in seeds]
    for frac, seed in tqdm(configs, desc=f"pixel blackout {model_name}", disable=not progress, leave=False):
        keep = make_mask("random", h, w, frac, seed, per_image=len(images))
        logits = predict(model, pixel_blackout(images, keep), batch_size, precision=precision)
        acc, loss = _scores(logits, labels)
        rows.append({"model": model_name, "kind": "pixel", "drop_frac": float(frac), "seed": int(seed),
                     "aggregation": "model", "acc": float(acc), "loss": float(loss), "n_images": len(labels),
                     "kept_frac": float(keep.float().mean())})
    return pd.DataFrame(rows)
