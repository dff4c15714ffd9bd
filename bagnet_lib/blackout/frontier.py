"""What patch blackout can save: the pieces of the accuracy–compute frontier.

The paper's premise is efficiency: a BagNet that decides from fewer patches should cost less. This
module prices each way of spending less compute, in forward FLOPs per image counted by
`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products), and finds the
configurations no other one beats:

- `cost_model`: a BagNet's dense pass at a resolution, and one kept patch computed on its own (an
  rf×rf crop, `sparse.patch_logits_at`); keeping k of P patches costs min(dense, k · per_patch), the
  cheaper of the two computations, as a real implementation would choose;
- `anytime`: patches evaluated in a given order, `chunk` at a time, an image stops as soon as the
  running mean's top-1 margin reaches `threshold`; simulated on the logit cache (the running mean over
  the first n patches of the order is exactly what computing those n patches would give);
- `pareto_front`: the non-dominated points (fewer GFLOPs and higher accuracy).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from bagnet_lib.blackout.masks import make_mask
from bagnet_lib.blackout.sparse import patch_logits_at
from bagnet_lib.blackout.sweep import per_image_scores
from bagnet_lib.data.tensors import normalize
from bagnet_lib.nets.metrics import bootstrap_ci, correct
from bagnet_lib.nets.train import predict


def count_flops(fn) -> int:
    """FLOPs of `fn()` as counted by `FlopCounterMode` (forward only when called under no_grad)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class CostModel:
    """Forward FLOPs per image of a BagNet at one resolution: dense, and per patch computed alone."""

    dense: int
    per_patch: int
    n_patches: int

    def cost(self, kept) -> np.ndarray:
        """FLOPs per image when `kept` patches (a number or an array) are needed: the cheaper computation."""
        return np.minimum(self.dense, np.asarray(kept, dtype=np.float64) * self.per_patch)

    @property
    def break_even(self) -> float:
        """The keep fraction below which computing only the kept patches is cheaper (≥ 1: at any fraction)."""
        return self.dense / (self.per_patch * self.n_patches)


def cost_model(model: nn.Module, image_size: int) -> CostModel:
    """Count a BagNet's dense and per-patch FLOPs on a `meta` copy (shapes only: exact and free)."""
    geometry = model.geometry
    if geometry is None:
        raise ValueError("cost_model needs a BagNet (model.geometry); ResNet-50 has no local patches")
    meta = copy.deepcopy(model).to("meta").eval()
    x = torch.empty(1, 3, image_size, image_size, device="meta")
    h, w = geometry.grid_size(image_size, image_size)
    one = torch.zeros(h, w, dtype=torch.bool)
    one[0, 0] = True
    with torch.no_grad():
        dense = count_flops(lambda: meta.patch_logits(x))
        per_patch = count_flops(lambda: patch_logits_at(meta, x, one))
    return CostModel(dense=dense, per_patch=per_patch, n_patches=h * w)


def dense_flops(model: nn.Module, image_size: int) -> int:
    """Forward FLOPs of one image at `image_size` (any model: ResNet-50 too), on a `meta` copy."""
    meta = copy.deepcopy(model).to("meta").eval()
    x = torch.empty(1, 3, image_size, image_size, device="meta")
    with torch.no_grad():
        return count_flops(lambda: meta(x))


def anytime(patch_logits: Tensor, order: Tensor, chunk: int, threshold: float) -> tuple[Tensor, Tensor]:
    """Predictions [N] and patches used [N] when each image stops at the first chunk whose running mean's
    top-1 margin (largest minus second-largest mean logit) reaches `threshold`.

    `patch_logits` is [N, K, H', W']; `order` [P] (shared) or [N, P] (per image) is a permutation of the
    flattened grid positions. After all P patches an image stops anyway (threshold = inf: the dense
    prediction, P patches each). Vectorised over images and chunks.
    """
    n, k, h, w = patch_logits.shape
    p = h * w
    if chunk < 1:
        raise ValueError(f"chunk must be ≥ 1, got {chunk}")
    order = order.expand(n, p) if order.dim() == 1 else order
    x = patch_logits.reshape(n, k, p).double().gather(2, order[:, None, :].expand(n, k, p))
    ends = torch.arange(chunk, p + chunk, chunk).clamp(max=p)  # patches computed after each chunk
    means = x.cumsum(dim=2)[:, :, ends - 1] / ends.double()  # [N, K, S]
    top2 = means.topk(2, dim=1).values if k > 1 else torch.cat([means, means - float("inf")], dim=1)
    done = (top2[:, 0] - top2[:, 1]) >= threshold  # [N, S]
    done[:, -1] = True
    stop = done.float().argmax(dim=1)  # the first chunk at which the image stops
    pred = means[torch.arange(n), :, stop].argmax(dim=1)
    return pred, ends[stop]


def pareto_front(cost: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Boolean mask of the points no other point beats: none has lower-or-equal cost and higher-or-equal
    accuracy with at least one of them strictly better."""
    cost, acc = np.asarray(cost, float), np.asarray(acc, float)
    better_or_equal = (cost[None, :] <= cost[:, None]) & (acc[None, :] >= acc[:, None])
    strictly = (cost[None, :] < cost[:, None]) | (acc[None, :] > acc[:, None])
    return ~(better_or_equal & strictly).any(axis=1)


# --------------------------------------------------------------------------- the experiment over a run
KEEP_FRACS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)
SCALES = (0.5, 0.625, 0.75, 0.875, 1.0)  # fewer pixels: test images downscaled to this share of the trained size
ANYTIME_THRESHOLDS = (0.25, 0.5, 1.0, 2.0, 4.0)  # anytime: stop once the running mean's top-1 margin reaches this
ANYTIME_CHUNK = 1 / 16  # anytime: the share of an image's patches computed per step
COLUMNS = ["model", "method", "parameter", "gflops_per_image", "acc", "acc_ci_low", "acc_ci_high", "n_images"]


def _point(model: str, method: str, parameter, flops: float, correct: np.ndarray) -> dict:
    """One frontier point: accuracy with a bootstrap interval over test images (`correct` [N], or [M, N] masks)."""
    per_image = np.asarray(correct, float)
    per_image = per_image.mean(axis=0) if per_image.ndim == 2 else per_image
    lo, hi = bootstrap_ci(per_image)
    return {"model": model, "method": method, "parameter": parameter, "gflops_per_image": float(flops) / 1e9,
            "acc": float(per_image.mean()), "acc_ci_low": lo, "acc_ci_high": hi, "n_images": int(per_image.size),
            "_correct": per_image}


def strided_keep(h: int, w: int, step: int) -> Tensor:
    """Keep every `step`-th patch in both directions (a regular sub-grid), drop the rest."""
    keep = torch.zeros(h, w, dtype=torch.bool)
    keep[::step, ::step] = True
    return keep


def frontier_points(cache, cost: CostModel, bagnet_name: str, seeds, keep_fracs=KEEP_FRACS,
                    thresholds=ANYTIME_THRESHOLDS, chunk_frac: float = ANYTIME_CHUNK, order_seed: int = 0) -> list[dict]:
    """Points that need only the logit cache: the dense BagNet, kept patches (random, centre, strided), anytime."""
    x, y = cache.patch_logits.float(), cache.labels
    n, k, h, w = x.shape
    p = h * w
    full = correct(x.mean(dim=(2, 3)), y).numpy()
    points = [_point(bagnet_name, "dense", 1.0, cost.dense, full)]
    for keep in keep_fracs:
        kept = p - int(np.floor((1 - keep) * p + 0.5 + 1e-9))
        right, _ = per_image_scores(cache, "random", [1 - keep], seeds)
        points.append(_point(bagnet_name, "kept patches, random", keep, cost.cost(kept), right[0].numpy()))
        c, _ = per_image_scores(cache, "center", [1 - keep], [0])
        points.append(_point(bagnet_name, "kept patches, centre", keep, cost.cost(kept), c[0, 0].numpy()))
    for step in (2, 3, 4):
        keep = strided_keep(h, w, step)
        logits = (x * keep).sum(dim=(2, 3)) / keep.sum()
        points.append(_point(bagnet_name, "kept patches, strided sub-grid", f"every {step}",
                             cost.cost(int(keep.sum())), correct(logits, y).numpy()))
    gen = torch.Generator().manual_seed(order_seed)
    order = torch.stack([torch.randperm(p, generator=gen) for _ in range(n)])
    chunk = max(1, round(chunk_frac * p))
    for t in thresholds:
        pred, used = anytime(x, order, chunk, t)
        # patches are computed chunk by chunk, each on its own: the cost is what each image really used
        flops = float(np.mean(used.numpy() * cost.per_patch))
        points.append(_point(bagnet_name, "anytime (stop when confident)", t, flops, (pred == y).numpy()))
    return points


@torch.no_grad()
def downscaled_points(model: nn.Module, name: str, images: Tensor, labels: Tensor, scales=SCALES,
                      batch_size: int = 64, precision: str = "fp32") -> list[dict]:
    """Fewer pixels instead of fewer patches: the dense network on test images resized to a share of their size."""
    from torchvision.transforms.v2 import functional as TF

    size = images.shape[-1]
    points = []
    for s in scales:
        small = max(33, int(round(size * s)))  # a BagNet-33 needs at least one 33 px window
        batch = images if small == size else TF.resize(images, [small, small], antialias=True)
        logits = predict(model, batch, batch_size, precision=precision)
        points.append(_point(name, "dense" if small == size else "fewer pixels (dense)", small,
                             dense_flops(model, small), correct(logits, labels).numpy()))
    return points


def per_image_correct(points: list[dict]) -> dict:
    """Drop the per-image arrays from `points` (kept for paired intervals) into a {index: array} dict."""
    return {i: pt.pop("_correct") for i, pt in enumerate(points) if "_correct" in pt}


@torch.no_grad()
def verify_sparse(model: nn.Module, images: Tensor, cache, keep_frac: float = 0.25, n_images: int = 4,
                  seed: int = 0) -> float:
    """Largest |difference| between the dense patch logits and really computing only the kept windows
    (`sparse.patch_logits_at`), fp32, for a few test images under one random mask: the check behind every
    simulation on the logit cache (a patch logit does not depend on the other patches)."""
    h, w = cache.grid
    keep = make_mask("random", h, w, 1 - keep_frac, seed)
    x = normalize(images[:n_images].to(next(model.parameters()).device)).float()
    model = model.float().eval()
    real = patch_logits_at(model, x, keep).cpu()
    dense = model.patch_logits(x).float().cpu()
    return float((real - dense)[:, :, keep].abs().max())
