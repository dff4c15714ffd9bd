"""Patch blackout on cached patch logits: the logit cache and the sweep engine.

Introduced in notebook 04. Three different things have been called "blackout"; this module is the first,
`channels` the second, `pixels` the third:

1. *Patch blackout* (what the paper's text describes): drop patch logits before aggregating. Since
   a BagNet's patch logits do not depend on each other, the test set's patch logits are computed once
   (`cache_logits`) and any number of masks × aggregations are evaluated on the cache (`sweep`).
2. *Channel masking* (what the paper's code did): `bagnet_lib.blackout.channels`.
3. *Pixel blackout* (information really removed from the input): `bagnet_lib.blackout.pixels`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from bagnet_lib.blackout.aggregate import aggregate
from bagnet_lib.blackout.masks import make_mask
from bagnet_lib.blackout.stream import StreamingSweep, sweep_configs
from bagnet_lib.data.tensors import eval_batches, normalize
from bagnet_lib.errors import UserError
from bagnet_lib.io import atomic_write
from bagnet_lib.nets.distributed import eval_block, gather_parts
from bagnet_lib.nets.metrics import correct, nll, spread, t_interval
from bagnet_lib.nets.precision import features_fp32, resolve_precision

# The paper's four blackout settings (its Table 1 columns) and its random drop fractions.
PAPER_SETTINGS = (("alternating", 0.5), ("random", 0.75), ("random", 0.5), ("random", 0.25))
PAPER_FRACS = tuple(sorted(frac for kind, frac in PAPER_SETTINGS if kind == "random"))  # 0.25, 0.5, 0.75


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
    Under torchrun the images are sharded like `train.predict` (contiguous blocks of whole batches) and every
    rank gets the whole cache, bit for bit the one of one process.
    """
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    model.eval()
    start, stop = eval_block(len(images), batch_size)
    parts = []
    for x, _ in tqdm(eval_batches(images[start:stop], labels[start:stop], batch_size),
                     total=math.ceil((stop - start) / batch_size), desc="cache logits", disable=not progress,
                     leave=False):
        f = features_fp32(model, normalize(x.to(device)), precision)
        parts.append((model.head(f).cpu(), f.mean(dim=(2, 3)).cpu()))
    parts = gather_parts(parts)
    return LogitCache(torch.cat([p for p, _ in parts]), labels.clone(), torch.cat([f for _, f in parts]),
                      model.fc.weight.detach().float().cpu(), model.fc.bias.detach().float().cpu(), list(paths),
                      list(classes))


def first_correct(cache: LogitCache) -> int | None:
    """The first image the network classifies correctly with every patch kept (the mean of its patch logits), or
    None when it gets every image wrong: notebook 04's worked example."""
    right = (cache.patch_logits.float().mean(dim=(2, 3)).argmax(1) == cache.labels).nonzero()
    return int(right[0]) if len(right) else None


# --------------------------------------------------------------------------- sweep engine
def mean_scores(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
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
    processed `chunk` at a time to bound memory. The engine is `stream.StreamingSweep`, fed the whole
    cache as one batch (the ImageNet study feeds it batch by batch).
    """
    x, y = cache.patch_logits, cache.labels
    engine = StreamingSweep(tuple(x.shape[-2:]), sweep_configs(kinds, drop_fracs, seeds), list(aggregations),
                            per_image=len(y) if per_image else None, chunk=chunk)
    engine.add(x, y)
    return engine.frame()[["kind", "drop_frac", "seed", "aggregation", "acc", "loss", "n_images", "kept_frac"]]


def summarize_sweep(df: pd.DataFrame) -> pd.DataFrame:
    """Per kind/fraction/aggregation: mean accuracy and loss over masks (or seeds), where 95 % of the masks lie
    (`acc_spread`, `loss_spread`: percentiles, not intervals), the Student-t interval of the mean over the
    seeds (`acc_t_ci`: for a few repeated runs such as pixel-blackout seeds), and the count.

    When the frame has a `model` column (the study's rows: pixel blackout runs both networks) the rows are
    also grouped by model, which is then the first column: rows of different networks are never pooled."""
    keys = (["model"] if "model" in df.columns else []) + ["kind", "drop_frac", "aggregation"]
    out = []
    for values, g in df.groupby(keys, sort=True, dropna=False):
        out.append({**dict(zip(keys, values)), "n_seeds": len(g),
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
