"""What averaging fewer members of a bag does to accuracy and loss, image by image: the nulls of claim (d).

A BagNet's image logits are the mean of P patch logits z_1 … z_P (vectors over K classes). A random mask keeps
k = P − round(f·P) of them, chosen uniformly, and `mean` aggregation averages what is kept. For one image this
is sampling without replacement from a finite population, so the kept mean m_f has, exactly,

    E[m_f] = z̄ (the all-kept logits),   Cov[m_f] = (P − k) / (k (P − 1)) · S = x · S / (P − 1),  x = f / (1 − f),

with S the population covariance of the image's patch logits (K×K). By the central limit theorem m_f is close to
Gaussian. Everything else follows from that noise, whose variance grows like x:

- **Loss.** Cross-entropy is smooth in the logits: E[CE(z̄ + ε)] ≈ CE(z̄) + ½ tr(H S) · x / (P − 1), H its Hessian
  at z̄. To leading order the mean loss rises like c·x, with one constant c for the whole split.
- **Accuracy.** The prediction flips when the noise beats the image's margin, so image i stays right with
  probability P_i(x) = Pr[argmax(z̄_i + √x · L_i u) = y_i], u standard normal and L_i Lᵢᵀ = S_i / (P − 1): a
  function of the margin over the noise's *standard deviation* √x·σ_i, not of x. For a single image near the
  boundary the drop goes like √x; over a split, the first-order terms of images just right and just wrong
  cancel where the margins' density is smooth at 0, leaving x at leading order, and images with small margins
  against their own noise (heterogeneous patches) bend the curve towards √x. No single power law of x holds
  in general, so the accuracy null is computed, image by image, from each image's own S_i: no parameter is fitted.

`subsampling_null` computes both, by Monte Carlo over u (a fixed seed, so the null is repeatable). On simulated
bags, where the patch logits are exchangeable draws, the observed drop must match it (tests/test_verdicts.py);
on a trained network a difference means the mask's random subset is not what moves the prediction. The same
holds for channel masking with the kept channels rescaled to their mean (members a_c = C · w_c · feature_c): there
the members are heavy-tailed, so the Gaussian step is the thing being tested.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from bagnet_lib.blackout.masks import n_dropped
from bagnet_lib.nets.metrics import correct, nll


def bag_members(patch_logits: Tensor) -> Tensor:
    """A BagNet's bag: patch logits [N, K, H', W'] as members [N, K, P] (their mean is the image's logits)."""
    n, k = patch_logits.shape[:2]
    return patch_logits.double().reshape(n, k, -1)


def channel_members(features: Tensor, fc_weight: Tensor) -> Tensor:
    """The channel reading's bag: members a_c = C · fc.weight[:, c] · feature_c, [N, K, C]; their mean plus the
    bias is the image's logits, and a rescaled channel mask (kept channels × C / kept) averages a subset."""
    c = features.shape[1]
    return c * features.double()[:, None, :] * fc_weight.double()[None]


def subsampling_null(members: Tensor, labels: Tensor, drop_fracs: Sequence[float], bias: Tensor | None = None,
                     aggregation: str = "mean", draws: int = 2000, seed: int = 0,
                     chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the probability of a right prediction and the expected cross-entropy when a random fraction f of
    the bag's members is dropped and the rest averaged, under the Gaussian null above: two arrays [F, N].

    `members` [N, K, P]; `bias` [K] is added to every mean (the `fc` bias of the channel reading). `aggregation`
    `"mean"` averages the kept members; `"zero"` counts the dropped ones as zeros, i.e. multiplies the kept mean by
    kept/P (a temperature): patch logits set to 0, or the paper's code's zeroed `fc.weight` columns. Exact mean and
    covariance of sampling without replacement; Gaussian noise by Monte Carlo with `draws` draws per image.
    """
    if aggregation not in ("mean", "zero"):
        raise ValueError(f"aggregation must be 'mean' or 'zero', not {aggregation!r}")
    x_all = members.double()
    n, k, p = x_all.shape
    b = torch.zeros(k, dtype=torch.float64) if bias is None else bias.double()
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(draws, k, generator=gen, dtype=torch.float64)  # the same draws for every image and fraction
    right = np.zeros((len(drop_fracs), n))
    loss = np.zeros((len(drop_fracs), n))
    for lo in range(0, n, chunk):
        x = x_all[lo:lo + chunk]
        mean = x.mean(dim=2)  # [B, K]
        centred = x - x.mean(dim=2, keepdim=True)
        cov = centred @ centred.transpose(1, 2) / p  # population covariance S [B, K, K]
        evals, evecs = torch.linalg.eigh(cov)
        root = evecs * evals.clamp(min=0).sqrt()[:, None, :]  # root @ rootᵀ = S (S may be singular)
        y = labels[lo:lo + chunk]
        for i, f in enumerate(drop_fracs):
            kept = p - n_dropped(1, p, float(f))
            scale = ((p - kept) / (kept * (p - 1))) ** 0.5 if p > 1 else 0.0
            shrink = kept / p if aggregation == "zero" else 1.0
            logits = b + shrink * (mean[:, None, :] + scale * torch.einsum("bkj,dj->bdk", root, u))  # [B, draws, K]
            right[i, lo:lo + chunk] = correct(logits.transpose(0, 1), y).double().mean(0).numpy()
            loss[i, lo:lo + chunk] = nll(logits.transpose(0, 1), y).mean(0).numpy()
    return right, loss
