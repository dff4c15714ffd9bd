"""`bench sweep`: blackout experiments by recomputation (the paper's way) vs the logit cache + sweep engine.

The paper's code ran a full forward pass over the test set for every mask it tried. Because a
BagNet's patch logits do not depend on each other, this project computes them once (`cache_logits`)
and evaluates any number of masks × aggregations on the cache (`experiments.sweep`). This benchmark
times both on the same BagNet-33 (random init with BatchNorm statistics calibrated on the images; the `cpu` profile's
width and image size) over the same
fixed images and mask configurations, and checks that both give the same accuracy and cross-entropy.

- recompute: per configuration, `model.patch_logits` over all images (batches of the profile's eval
  batch size), then `make_mask` + `aggregate` + scores: what a per-mask pipeline does. The first
  configuration is a warm-up; at least 3 are timed.
- sweep: one `sweep(cache, ["random"], fracs, seeds, ("mean", "zero"))` call over ≥ 1,000
  configurations (20 fractions × 25 seeds × 2 aggregations); the cache's own forward pass is
  reported separately (`cache_s`).

`speedup` = recompute seconds per configuration / sweep seconds per configuration (medians: of the
timed recompute configurations, and of 3 timed sweep calls). `break_even_configs` is how many
configurations the cache's forward pass takes to pay for itself (about 1).
"""
from __future__ import annotations

import statistics
import time

import torch

from bagnet_lib.bench.common import calibrate_batchnorm
from bagnet_lib.blackout.aggregate import aggregate
from bagnet_lib.blackout.masks import make_mask
from bagnet_lib.blackout.sweep import cache_logits, sweep
from bagnet_lib.data.tensors import eval_batches, normalize
from bagnet_lib.nets.metrics import accuracy, cross_entropy
from bagnet_lib.nets.models import build_model
from bagnet_lib.nets.profiles import get_profile

MODEL = "bagnet33"
NUM_CLASSES = 5
AGGREGATIONS = ("mean", "zero")
SWEEP_REPEATS = 3  # the sweep is timed 3 times (median): it is short, so scheduler noise matters more


def _settings(quick: bool) -> dict:
    if quick:  # 5 fractions × 10 seeds × 2 aggregations = 100 configurations, 32 images
        return {"images": 32, "n_fracs": 5, "n_seeds": 10, "recompute_configs": 3}
    return {"images": 128, "n_fracs": 20, "n_seeds": 25, "recompute_configs": 4}


def _drop_fracs(n: int) -> list[float]:
    """`n` drop fractions evenly from 0 to 0.95 (never 1: a mask must keep a patch)."""
    return [round(0.95 * i / (n - 1), 4) for i in range(n)] if n > 1 else [0.5]


def _test_images(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed stack of random uint8 images [n, 3, size, size] and labels (what the network sees does
    not matter for timing or for the equality check)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    return images, labels


@torch.no_grad()
def _recompute(model, images, labels, frac: float, seed: int, agg: str, batch_size: int) -> tuple[float, float]:
    """One configuration the paper's way: a full forward pass, then mask + aggregation + scores."""
    pl = torch.cat([model.patch_logits(normalize(x)) for x, _ in eval_batches(images, labels, batch_size)])
    h, w = pl.shape[-2:]
    logits = aggregate(pl, make_mask("random", h, w, frac, seed), agg)
    return accuracy(logits, labels), cross_entropy(logits, labels)


def run(quick: bool = False) -> dict:
    """Time recompute vs cache + sweep; JSON-ready numbers."""
    s = _settings(quick)
    profile = get_profile("cpu")
    torch.manual_seed(0)
    model = build_model(MODEL, NUM_CLASSES, width=profile.width).eval()
    images, labels = _test_images(s["images"], profile.image_size)
    bs = profile.eval_batch_size
    calibrate_batchnorm(model, (normalize(x) for x, _ in eval_batches(images, labels, bs)))

    t0 = time.perf_counter()
    cache = cache_logits(model, images, labels, batch_size=bs, progress=False)
    cache_s = time.perf_counter() - t0

    fracs, seeds = _drop_fracs(s["n_fracs"]), list(range(s["n_seeds"]))
    sweep(cache, ["random"], fracs[:2], seeds[:2], AGGREGATIONS)  # warm-up (allocator, pandas)
    sweep_runs = []
    for _ in range(SWEEP_REPEATS):
        t0 = time.perf_counter()
        df = sweep(cache, ["random"], fracs, seeds, AGGREGATIONS)
        sweep_runs.append(time.perf_counter() - t0)
    sweep_s = statistics.median(sweep_runs)
    configs = len(df)

    # Shared configurations: spread over fractions, seeds and both aggregations; the first is the warm-up.
    n_rc = s["recompute_configs"]
    shared = [(fracs[(3 * i + 1) % len(fracs)], seeds[(7 * i + 2) % len(seeds)], AGGREGATIONS[i % 2])
              for i in range(n_rc + 1)]
    rec_times, diffs, checked = [], [], []
    index = df.set_index(["drop_frac", "seed", "aggregation"])
    for i, (frac, seed, agg) in enumerate(shared):
        t0 = time.perf_counter()
        acc, loss = _recompute(model, images, labels, frac, seed, agg, bs)
        dt = time.perf_counter() - t0
        if i > 0:
            rec_times.append(dt)
        row = index.loc[(frac, seed, agg)]
        d_acc, d_loss = abs(acc - float(row["acc"])), abs(loss - float(row["loss"]))
        diffs.append(max(d_acc, d_loss))
        checked.append({"drop_frac": frac, "seed": seed, "aggregation": agg, "acc_recompute": acc,
                        "acc_sweep": float(row["acc"]), "loss_recompute": loss, "loss_sweep": float(row["loss"])})

    rec_per = statistics.median(rec_times)
    sweep_per = sweep_s / configs
    return {
        "benchmark": "sweep",
        "quick": quick,
        "model": MODEL,
        "images": s["images"],
        "image_size": profile.image_size,
        "width": profile.width,
        "grid": list(cache.grid),
        "batch_size": bs,
        "torch_threads": torch.get_num_threads(),
        "configs": configs,
        "drop_fracs": fracs,
        "seeds": len(seeds),
        "aggregations": list(AGGREGATIONS),
        "cache_s": cache_s,
        "sweep_s": sweep_s,
        "sweep_runs_s": sweep_runs,
        "sweep_s_per_config": sweep_per,
        "recompute_configs_timed": len(rec_times),
        "recompute_s": rec_times,
        "recompute_s_per_config": rec_per,
        "speedup": rec_per / sweep_per,
        "break_even_configs": cache_s / max(rec_per - sweep_per, 1e-12),
        "max_abs_diff": max(diffs),
        "checked": checked,
    }


def format_table(result: dict) -> str:
    r = result
    rows = [
        ("images × size", f"{r['images']} × {r['image_size']} px (width {r['width']}, "
                          f"grid {r['grid'][0]}×{r['grid'][1]})"),
        ("torch threads", str(r["torch_threads"])),
        ("cache (1 forward pass)", f"{r['cache_s']:.3f} s"),
        ("recompute / config", f"{r['recompute_s_per_config']:.4f} s  (median of {r['recompute_configs_timed']})"),
        ("sweep / config", f"{r['sweep_s_per_config'] * 1e6:.1f} µs  ({r['configs']} configs in "
                           f"{r['sweep_s']:.3f} s, median of {len(r['sweep_runs_s'])})"),
        ("speedup", f"{r['speedup']:,.0f}×"),
        ("max |Δ| acc/loss", f"{r['max_abs_diff']:.2e}"),
    ]
    width = max(len(k) for k, _ in rows)
    title = f"bench sweep{' (quick)' if r.get('quick') else ''}: recompute per mask vs logit cache + sweep"
    return "\n".join([title] + [f"  {k:<{width}}  {v}" for k, v in rows])



def markdown(result: dict) -> str:
    """docs/performance.md's `bench-sweep` block: the setting and the two costs per configuration, from the result."""
    grid = "×".join(map(str, result["grid"]))
    return "\n".join([
        f"{result['model']} at {result['image_size']} px (width {result['width']}), {result['images']} images, grid "
        f"{grid}, {result['torch_threads']} threads.", "",
        "| approach | seconds per mask configuration |", "| --- | --- |",
        f"| recompute (a forward pass per configuration, as the paper's code; {result['recompute_configs_timed']} timed) "
        f"| {result['recompute_s_per_config']:.3f} |",
        f"| sweep engine on the cached patch logits ({result['configs']} configurations) | "
        f"{result['sweep_s_per_config']:.2e} |", "",
        f"Speed-up **{result['speedup']:,.0f}×** (one cache pass: {result['cache_s']:.2f} s); both give the same accuracy "
        f"and cross-entropy (max abs difference {result['max_abs_diff']:.1e})."])
