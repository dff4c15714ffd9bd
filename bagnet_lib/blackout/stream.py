"""The sweep engine as a stream: every mask configuration reduced one batch of patch logits at a time.

Introduced for the ImageNet study (docs/distributed.md, and the ImageNet issue): 50,000 validation images ×
1,000 classes × a 24×24 grid do not fit in memory, so nothing of size N × K × H' × W' may be kept.
`StreamingSweep.add(patch_logits, labels)` evaluates each configuration (mask kind × drop fraction × seed ×
aggregation, masks from `make_mask` exactly as `sweep` draws them) on one batch and adds to per-configuration
sums: images, top-1 and top-5 correct, cross-entropy and its square, kept fraction. Memory is set by the batch
and the number of configurations, not by N. `sweep` itself is this engine run on a cache in one batch. The
aggregation runs in float64: float32 reductions round differently with the size of the batch (measured: 1e-8
relative on the loss), and in float64 the result no longer depends on how the stream is cut.

The bookkeeping is `SweepSums`, shared with the channel masks' engine (`channels.ChannelSweep`) and the
ImageNet pass's pixel settings. The sums are plain float64 tensors: `state_dict` checkpoints them (a resumed pass continues where it stopped),
and `all_reduce` adds the ranks' sums under torchrun, each image counted once (ranks take disjoint blocks).
Counts are exact; the cross-entropy sums differ from one process only by the order of float64 additions.
"""
from __future__ import annotations

import itertools
import math
from typing import Iterable, Sequence

import pandas as pd
import torch
from torch import Tensor

from bagnet_lib.blackout.aggregate import aggregate
from bagnet_lib.blackout.masks import make_mask
from bagnet_lib.nets.distributed import all_sum, world
from bagnet_lib.nets.metrics import correct, nll

ALTERNATING = ("checkerboard", "raster")  # always half: evaluated at drop_frac 0.5 only
SEEDED = ("random", "block")  # the kinds a seed changes; the others are evaluated with seed 0
SUMS = ("n_images", "top1", "top5", "nll", "nll_sq", "kept")


def sweep_configs(kinds: Iterable[str], drop_fracs: Iterable[float], seeds: Iterable[int]) -> list[tuple[str, float, int]]:
    """(kind, drop fraction, seed) for every mask a sweep evaluates, each once, in order."""
    drop_fracs, seeds = list(drop_fracs), list(seeds)
    configs: list[tuple[str, float, int]] = []
    for kind in kinds:
        fracs = [0.5] if kind in ALTERNATING else drop_fracs
        kind_seeds = seeds if kind in SEEDED else [0]
        configs += [(kind, float(f), int(s)) for f, s in itertools.product(fracs, kind_seeds)]
    return list(dict.fromkeys(configs))


class SweepSums:
    """Float64 sums per row (kind, drop fraction, seed, aggregation) of a stream of evaluated batches.

    The bookkeeping every streaming engine shares (`StreamingSweep` for patch masks, `channels.ChannelSweep`
    for the paper's channel masks, the ImageNet pass's pixel settings): add one batch's logits per row,
    checkpoint and resume, add up over ranks, and report one row per configuration with intervals.
    """

    def __init__(self, rows: Sequence[tuple[str, float, int, str]]) -> None:
        self.rows = [tuple(r) for r in rows]
        self.sums = torch.zeros(len(self.rows), len(SUMS), dtype=torch.float64)

    def identity(self) -> dict:
        """What the sums are sums of, beyond the rows (a subclass adds its grid, its masks' source, …)."""
        return {}

    def add_logits(self, rows: slice, logits: Tensor, labels: Tensor, kept: Tensor) -> None:
        """Add one batch to `rows`: logits [M, B, K] (M rows), labels [B], kept [M] (kept fraction summed over B).
        Computed where the logits are (a GPU's batch is reduced on the GPU); the sums stay on the CPU."""
        m, n, k = logits.shape
        logits = logits.double()
        top5 = (logits.topk(min(5, k), dim=-1).indices == labels[None, :, None]).any(dim=-1)
        losses = nll(logits, labels)  # float64 [M, B]
        dev = logits.device
        self.sums[rows] += torch.stack([torch.full((m,), float(n), dtype=torch.float64, device=dev),
                                        correct(logits, labels).sum(dim=1, dtype=torch.float64),
                                        top5.sum(dim=1, dtype=torch.float64), losses.sum(dim=1),
                                        (losses * losses).sum(dim=1), kept.to(dev, torch.float64)], dim=1).cpu()

    def all_reduce(self) -> None:
        """Add the other ranks' sums (under torchrun; a no-op in one process). Every rank holds the total."""
        if world().size > 1:
            self.sums = torch.tensor(all_sum(self.sums.flatten().tolist()), dtype=torch.float64).view_as(self.sums)

    def state_dict(self) -> dict:
        """The sums and what they are sums of: enough to resume the stream (plain tensors and lists)."""
        return {"rows": [list(r) for r in self.rows], **self.identity(), "sums": self.sums.clone()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()`; refuses sums of another configuration set."""
        mine = {k: v for k, v in self.state_dict().items() if k != "sums"}
        if {k: v for k, v in state.items() if k != "sums"} != mine:
            raise ValueError("these partial sums belong to another sweep (other masks, aggregations or grid)")
        self.sums = state["sums"].to(torch.float64).clone()

    def frame(self) -> pd.DataFrame:
        """One row per configuration: kind, drop_frac, seed, aggregation, acc, loss, n_images, kept_frac, and
        top5, the normal-approximation 95 % intervals over images of acc, top5 and loss (…_ci_low, …_ci_high)."""
        rows = []
        for (kind, frac, seed, agg), s in zip(self.rows, self.sums.tolist()):
            n, top1, top5, loss_sum, loss_sq, kept = s
            n_ = max(n, 1.0)
            acc, top5, loss = top1 / n_, top5 / n_, loss_sum / n_
            loss_sd = math.sqrt(max(loss_sq / n_ - loss * loss, 0.0) * n_ / max(n_ - 1, 1))
            row = {"kind": kind, "drop_frac": frac, "seed": seed, "aggregation": agg, "acc": acc, "loss": loss,
                   "n_images": int(n), "kept_frac": kept / n_, "top5": top5}
            for name, p in (("acc", acc), ("top5", top5)):
                half = 1.96 * math.sqrt(max(p * (1 - p), 0.0) / n_)
                row[f"{name}_ci_low"], row[f"{name}_ci_high"] = p - half, p + half
            row["loss_ci_low"], row["loss_ci_high"] = loss - 1.96 * loss_sd / math.sqrt(n_), loss + 1.96 * loss_sd / math.sqrt(n_)
            rows.append(row)
        return pd.DataFrame(rows)


class StreamingSweep(SweepSums):
    """Per-configuration sums of a patch-blackout sweep over a stream of patch-logit batches.

    `grid` is the patch grid (H', W'); `per_image=N` draws an independent random mask for each of N images
    (the image's index in the stream picks its mask, so batches can come in any size); otherwise one mask is
    shared by all images, as in the paper. Masks are built `chunk` configurations at a time to bound memory.
    `mean` and `zero` share one masked sum per configuration (they differ only in the divisor).
    """

    def __init__(self, grid: tuple[int, int], configs: Sequence[tuple[str, float, int]],
                 aggregations: Sequence[str] = ("mean",), per_image: int | None = None, chunk: int = 64) -> None:
        self.grid, self.configs, self.aggregations = tuple(grid), list(configs), list(aggregations)
        self.per_image, self.chunk = per_image, chunk
        super().__init__([(kind, frac, seed, agg) for agg in self.aggregations for kind, frac, seed in self.configs])
        self._shared: dict[tuple[str, float, int], Tensor] = {}

    def identity(self) -> dict:
        return {"grid": list(self.grid), "per_image": self.per_image}

    def _keep(self, kind: str, frac: float, seed: int, x: Tensor, start: int) -> Tensor:
        """The keep-masks of this batch's images for one configuration: bool [B, H'W']."""
        n, _, h, w = x.shape
        if kind in ("topk", "bottomk"):  # per image, from its own patch logits
            return make_mask(kind, h, w, frac, seed, patch_logits=x).reshape(n, h * w)
        if self.per_image is not None:  # drawn for all images, then sliced: O(N) a batch, but no N-sized state
            m = make_mask(kind, h, w, frac, seed, per_image=self.per_image)
            if m.dim() == 3:
                return m[start:start + n].reshape(n, h * w)
        else:
            if (kind, frac, seed) not in self._shared:
                self._shared[(kind, frac, seed)] = make_mask(kind, h, w, frac, seed)
            m = self._shared[(kind, frac, seed)]
        return m.expand(n, h, w).reshape(n, h * w)

    def add(self, patch_logits: Tensor, labels: Tensor, start: int = 0) -> None:
        """Evaluate every configuration on one batch [B, K, H', W'] (images `start` … `start + B − 1` of the
        stream) and add to the sums."""
        x = patch_logits.double()  # float32 reductions round differently with the batch's size; float64 hides it
        n, k, h, w = x.shape
        if (h, w) != self.grid:
            raise ValueError(f"patch logits on a {h}×{w} grid, but this sweep is for {self.grid[0]}×{self.grid[1]}")
        flat = x.reshape(n, k, h * w)
        n_cfg = len(self.configs)
        for first in range(0, n_cfg, self.chunk):
            part = self.configs[first:first + self.chunk]
            keep = torch.stack([self._keep(kind, frac, seed, x, start).to(x.device) for kind, frac, seed in part])  # [M, B, P]
            if not bool(keep.any(dim=2).all()):
                raise ValueError("a mask keeps no patch for some image: nothing left to aggregate")
            kept = keep.float().mean(dim=2).sum(dim=1, dtype=torch.float64)  # [M]
            masked_sum = None
            for a, agg in enumerate(self.aggregations):
                if agg in ("mean", "zero"):
                    if masked_sum is None:
                        keep_f = keep.double()
                        masked_sum = torch.einsum("nkp,mnp->mnk", flat, keep_f)
                    logits = masked_sum / (keep_f.sum(dim=2, keepdim=True) if agg == "mean" else float(h * w))
                else:
                    logits = torch.stack([aggregate(x, m.view(n, h, w), agg) for m in keep])
                self.add_logits(slice(a * n_cfg + first, a * n_cfg + first + len(part)), logits, labels, kept)
