"""Turning kept patch logits into image logits: the ways a bag of local evidence can be pooled.

Introduced in notebook 04. `aggregate(patch_logits [N, K, H', W'], keep, method)` → `[N, K]`.

- `mean`: mean over kept patches: the paper's text ("not considered in the final aggregation");
- `zero`: dropped patches count as zeros and the sum is divided by *all* patches: the literal
  "set their weights to 0". It equals `mean` times kept/total > 0, so the argmax (the prediction) is
  the same, but the logits shrink towards 0 and the cross-entropy changes;
- `median`, `trimmed_mean` (10 % cut at each end), `max`, `logsumexp` (minus log of the count, so
  a constant map aggregates to that constant), `clipped` (mean of tanh(a·x + b), Clipped BagNet,
  Zhang et al. 2020), `center_weighted` (Gaussian weights by distance to the grid centre; the paper's
  future work).

A mask that keeps no patch of some image raises `ValueError`: there is no evidence to aggregate.
`DEFINITIONS` says what each one computes, in words and as a formula; `definitions()` is that table
with the defaults filled in, as notebook 04 shows it.
"""
from __future__ import annotations

import inspect
import math

import pandas as pd
import torch
from torch import Tensor

AGGREGATIONS = ("mean", "zero", "median", "trimmed_mean", "max", "logsumexp", "clipped", "center_weighted")

# The one definition of every aggregation, in words and as a formula: image logit of class k from the patch logits
# x_p of the kept patches p ∈ S (|S| of them, P patches in all). `{trim}`, `{clip_a}`, `{clip_b}` and `{sigma}`
# are filled in from `aggregate`'s defaults by `definitions()`, so the table never disagrees with the code.
DEFINITIONS = {
    "mean": ("the mean of the kept patches (the paper's text: dropped patches \"not considered\")",
             "(1/|S|) Σ_{p∈S} x_p"),
    "zero": ("dropped patches count as zeros: the sum over the kept ones divided by all P (the paper's \"set to 0\"); "
             "= mean × |S|/P, so the same prediction with smaller logits",
             "(1/P) Σ_{p∈S} x_p"),
    "median": ("the median of the kept patches (the mean of the two middle values for an even count)",
               "median_{p∈S} x_p"),
    "trimmed_mean": ("the mean after cutting floor({trim}·|S|) of the kept values at each end",
                     "mean of the sorted x_p with ranks floor({trim}|S|) … |S| − floor({trim}|S|) − 1"),
    "max": ("the largest kept patch logit", "max_{p∈S} x_p"),
    "logsumexp": ("a soft maximum, minus the log of the count (a constant map aggregates to that constant)",
                  "log Σ_{p∈S} exp(x_p) − log |S|"),
    "clipped": ("the mean of squashed patch logits (Clipped BagNet, Zhang et al. 2020): one patch cannot dominate",
                "(1/|S|) Σ_{p∈S} tanh({clip_a}·x_p + {clip_b})"),
    "center_weighted": ("a weighted mean, Gaussian weights w_p by the distance d_p of the patch to the grid centre "
                        "(d as a fraction of the grid size; the paper's future work)",
                        "Σ_{p∈S} w_p x_p / Σ_{p∈S} w_p,  w_p = exp(−d_p² / (2·{sigma}²))"),
}


def _full_keep(patch_logits: Tensor, keep: Tensor | None) -> Tensor:
    """Broadcast `keep` ([H', W'], [N, H', W'] or None) to a bool [N, 1, H'W']."""
    n, _, h, w = patch_logits.shape
    if keep is None:
        keep = torch.ones(h, w, dtype=torch.bool)
    keep = keep.to(device=patch_logits.device, dtype=torch.bool)
    if keep.shape[-2:] != (h, w) or keep.dim() not in (2, 3):
        raise ValueError(f"mask of shape {tuple(keep.shape)} does not fit a patch grid of {h}×{w}")
    keep = keep.expand(n, h, w).reshape(n, 1, h * w)
    if not bool(keep.any(dim=2).all()):
        raise ValueError("the mask keeps no patch for at least one image: nothing left to aggregate")
    return keep


def gaussian_center_weights(h: int, w: int, sigma: float = 0.25) -> Tensor:
    """Weights exp(-d²/2σ²) by distance d to the grid centre, σ as a fraction of the grid size."""
    i = (torch.arange(h, dtype=torch.float32) - (h - 1) / 2) / max(h, 1)
    j = (torch.arange(w, dtype=torch.float32) - (w - 1) / 2) / max(w, 1)
    return torch.exp(-(i[:, None] ** 2 + j[None, :] ** 2) / (2 * sigma**2))


def aggregate(patch_logits: Tensor, keep: Tensor | None = None, method: str = "mean", *,
              trim: float = 0.1, clip_a: float = 0.05, clip_b: float = -1.0, sigma: float = 0.25) -> Tensor:
    """Image logits [N, K] from patch logits [N, K, H', W'] and a keep-mask (None = keep all)."""
    n, k, h, w = patch_logits.shape
    x = patch_logits.reshape(n, k, h * w)
    m = _full_keep(patch_logits, keep)  # [N, 1, P]
    count = m.sum(dim=2).to(x.dtype)  # [N, 1]
    if method == "mean":
        return (x * m).sum(dim=2) / count
    if method == "zero":
        return (x * m).sum(dim=2) / (h * w)
    if method == "max":
        return x.masked_fill(~m, -math.inf).amax(dim=2)
    if method == "logsumexp":
        return torch.logsumexp(x.masked_fill(~m, -math.inf), dim=2) - count.log()
    if method == "clipped":
        return (torch.tanh(clip_a * x + clip_b) * m).sum(dim=2) / count
    if method == "center_weighted":
        wts = gaussian_center_weights(h, w, sigma).to(x).reshape(1, 1, h * w) * m
        return (x * wts).sum(dim=2) / wts.sum(dim=2)
    if method in ("median", "trimmed_mean"):
        # Dropped entries become +inf, so they sort to the end; kept values occupy ranks 0 … count-1.
        s = x.masked_fill(~m, math.inf).sort(dim=2).values
        rank = torch.arange(h * w, device=x.device).view(1, 1, -1)
        c = m.sum(dim=2, keepdim=True)  # [N, 1, 1] integer counts
        if method == "median":  # mean of the two middle values (the usual median for even counts)
            lo = torch.gather(s, 2, ((c - 1) // 2).expand(n, k, 1))
            hi = torch.gather(s, 2, (c // 2).expand(n, k, 1))
            return ((lo + hi) / 2).squeeze(2)
        cut = torch.floor(c.to(x.dtype) * trim).long()
        sel = (rank >= cut) & (rank < c - cut)
        return (s.masked_fill(~sel, 0.0)).sum(dim=2) / sel.sum(dim=2).to(x.dtype)
    raise ValueError(f"unknown aggregation {method!r}; choose one of {', '.join(AGGREGATIONS)}")


def definitions() -> pd.DataFrame:
    """One row per aggregation of `AGGREGATIONS`: what it does in words and as a formula, with `aggregate`'s default
    parameters filled in (notebook 04 shows this table where aggregations are introduced)."""
    defaults = {k: v.default for k, v in inspect.signature(aggregate).parameters.items()
                if v.kind is inspect.Parameter.KEYWORD_ONLY}

    def fill(text: str) -> str:
        for key, value in defaults.items():
            text = text.replace("{" + key + "}", f"{value:g}")
        return text.replace("+ -", "− ")

    rows = {name: {"in words": fill(DEFINITIONS[name][0]),
                   "image logit of class k (S = kept patches, P = all patches)": fill(DEFINITIONS[name][1])}
            for name in AGGREGATIONS}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("aggregation")
