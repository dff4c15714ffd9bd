"""`bench sparse`: does computing only the kept patches save computation?

For bagnet9/17/33 on one image and a range of keep fractions, compare the sparse pass
(`bagnet_lib.sparse.patch_logits_at` with a random keep-map: crop the kept rf×rf windows, run each
through the network) with the dense pass (`model.patch_logits` on the whole image), in

- FLOPs, counted by `torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products;
  BatchNorm/ReLU/additions are not counted). The count runs on a `meta`-device copy of the model:
  the same operators and shapes, no arithmetic, so it is exact and free (a test checks it against a
  count on real tensors);
- wall time, one image, the median of `repeats` runs after a warm-up, the dense pass timed next to
  each sparse point (alternating) so that both see the same load on this shared machine.

The dense pass shares the computation of overlapping windows; the crops recompute it. For bagnet33 a
33×33 crop has 31×31 stem positions where the dense pass at 224 px spends (222/24)² ≈ 86 per patch,
so a kept patch costs several times its dense share; from the architecture alone the FLOPs break-even should lie near 14 % for bagnet33 and 55 % for
bagnet17, while bagnet9 (windows overlap by 1 px) should be cheaper at any keep fraction. The result
records the measured break-evens and a verdict (`expected_vs_measured`).

Weights are random (costs do not depend on them); BatchNorm gets running statistics from a few
random batches so that the equality check (`max_abs_diff`, sparse vs dense logits at the kept
positions) compares non-trivial numbers.
"""
from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from bagnet_lib.bench.common import calibrate_batchnorm
from bagnet_lib.blackout import masks
from bagnet_lib.blackout.frontier import count_flops
from bagnet_lib.blackout.sparse import patch_logits_at
from bagnet_lib.figures.plots import save
from bagnet_lib.nets.models import bagnet

MODELS = ("bagnet9", "bagnet17", "bagnet33")
KEEP_FRACS = (0.01, 0.05, 0.10, 0.15, 0.25, 0.50, 0.75, 1.00)
QUICK_KEEP_FRACS = (0.05, 0.25, 1.00)
# Break-even keep fraction (FLOPs) predicted from the architecture; None = sparse cheaper at any fraction.
EXPECTED_FLOPS_BREAK_EVEN = {"bagnet9": None, "bagnet17": 0.55, "bagnet33": 0.14}
TOLERANCE = 0.05  # |measured - expected| within which the expectation counts as confirmed
MODEL_COLORS = {"bagnet9": "#4C72B0", "bagnet17": "#DD8452", "bagnet33": "#55A868"}


# ------------------------------------------------------------------------------------ measuring
def dense_and_sparse_flops(model: nn.Module, x: Tensor, keep: Tensor, device: str = "meta",
                           batch_size: int = 256) -> tuple[int, int]:
    """(dense FLOPs, sparse FLOPs) of one batch `x` and keep-map `keep`, counted on `device`.

    `device="meta"` counts on a meta copy of the model (shapes only, no arithmetic); `None` counts
    on the model and `x` as they are.
    """
    if device is not None:
        model = copy.deepcopy(model).to(device)
        x = torch.empty(x.shape, dtype=x.dtype, device=device)
    model = model.eval()
    with torch.no_grad():
        dense = count_flops(lambda: model.patch_logits(x))
        sparse = count_flops(lambda: patch_logits_at(model, x, keep, batch_size=batch_size))
    return dense, sparse


def _time_once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def break_even(fracs: list[float], ratios: list[float]) -> tuple[float | None, str]:
    """Keep fraction where sparse/dense crosses 1 (linear interpolation between measured points), and a note.

    None when there is no crossing inside the measured range: sparse is cheaper at every measured
    fraction (up to 100 %) or dearer at every one (the note says which).
    """
    pts = sorted(zip(fracs, ratios))
    if pts[0][1] >= 1.0:
        return None, (f"sparse costs at least the dense pass already at the smallest measured keep fraction "
                      f"({pts[0][0]:.0%}, ratio {pts[0][1]:.2f}): break-even below it (None)")
    for (f0, r0), (f1, r1) in zip(pts, pts[1:]):
        if r0 < 1.0 <= r1:
            return f0 + (1.0 - r0) * (f1 - f0) / (r1 - r0), (
                f"interpolated between {f0:.0%} (ratio {r0:.2f}) and {f1:.0%} (ratio {r1:.2f})")
    return None, (f"sparse is cheaper than dense at every measured keep fraction up to {pts[-1][0]:.0%} "
                  f"(ratio {pts[-1][1]:.2f} there): no break-even (None)")


def linear_break_even(kept: list[int], sparse: list[float], dense: float, total: int) -> float | None:
    """Break-even keep fraction from a least-squares line cost = a + b·kept (may exceed 1: never within the image)."""
    if len(set(kept)) < 2:
        return None
    b, a = np.polyfit(np.asarray(kept, float), np.asarray(sparse, float), 1)
    return None if b <= 0 else float((dense - a) / b / total)


def _verdict(name: str, image_size: int, flops_be: float | None, flops_fit: float | None, time_be: float | None,
             time_fit: float | None, last_flops_ratio: float, last_time_ratio: float) -> str:
    expected = EXPECTED_FLOPS_BREAK_EVEN[name]

    def fmt(be, fit):
        if be is not None:
            return f"{be:.1%}"
        return "none up to 100 %" + (f" (line fit: {fit:.0%})" if fit is not None else "")

    if expected is None:
        ok = flops_be is None and last_flops_ratio < 1.0
        verdict = ("CONFIRMED" if ok else "REFUTED") if image_size == 224 else "NOT COMPARABLE"
        text = (f"expected: sparse cheaper than dense at any keep fraction (FLOPs). Measured FLOPs break-even: "
                f"{fmt(flops_be, flops_fit)}; at 100 % sparse/dense FLOPs = {last_flops_ratio:.2f} -> {verdict}.")
    else:
        ok = flops_be is not None and abs(flops_be - expected) <= TOLERANCE
        verdict = ("CONFIRMED" if ok else "REFUTED") if image_size == 224 else "NOT COMPARABLE"
        text = (f"expected FLOPs break-even near {expected:.0%}; measured {fmt(flops_be, flops_fit)} -> {verdict} "
                f"(tolerance ±{TOLERANCE:.0%}).")
    text += f" Wall time: break-even {fmt(time_be, time_fit)}, sparse/dense time at 100 % = {last_time_ratio:.2f}"
    if last_time_ratio > 1.2 * last_flops_ratio:
        text += " (time worse than FLOPs: many small crops run less efficiently per FLOP than one large image)."
    elif last_time_ratio < last_flops_ratio / 1.2:
        text += " (time better than FLOPs: the crops run more efficiently per FLOP than the dense pass)."
    else:
        text += " (time follows FLOPs)."
    if image_size != 224:
        text += (f" NOT COMPARABLE: the expectation is for 224 px; at {image_size} px the dense pass wastes more "
                 "work per patch at the image border, which moves the FLOPs break-even up.")
    return text


def bench_model(name: str, image_size: int, width: float, keep_fracs: tuple[float, ...], repeats: int,
                seed: int = 0, batch_size: int = 256, num_classes: int = 1000) -> dict:
    """All points of one model (see module docstring)."""
    torch.manual_seed(seed)
    model = bagnet(name, num_classes=num_classes, width=width)
    size, calib = min(image_size, 64), torch.Generator().manual_seed(seed)
    calibrate_batchnorm(model, (torch.rand((2, 3, size, size), generator=calib) * 2 - 1 for _ in range(2)))
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.rand((1, 3, image_size, image_size), generator=gen) * 2 - 1
    h, w = model.geometry.grid_size(image_size, image_size)
    total = h * w
    points, max_abs_diff, max_abs_logit = [], 0.0, 0.0
    with torch.no_grad():
        # Scale the (random) head so that the largest dense logit is 1 in magnitude: max_abs_diff is then
        # also a relative error (unscaled random logits reach ~10, and float32 rounding scales with them).
        scale = float(model.patch_logits(x).abs().max())
        model.fc.weight /= scale
        model.fc.bias /= scale
        dense_out = model.patch_logits(x)  # warm-up (and the reference for the equality check)
        max_abs_logit = float(dense_out.abs().max())
        for k, frac in enumerate(sorted(keep_fracs)):
            keep = masks.random(h, w, drop_frac=1.0 - frac, generator=gen)
            if not keep.any():  # tiny grids: keep at least one patch
                keep.view(-1)[int(torch.randint(total, (1,), generator=gen))] = True
            dense_flops, sparse_flops = dense_and_sparse_flops(model, x, keep, batch_size=batch_size)
            sparse_out = patch_logits_at(model, x, keep, batch_size=batch_size)  # warm-up + equality
            sel = keep.expand_as(dense_out[:, 0]).unsqueeze(1).expand_as(dense_out)
            max_abs_diff = max(max_abs_diff, float((sparse_out[sel] - dense_out[sel]).abs().max()))
            dense_t, sparse_t = [], []
            for _ in range(repeats):  # alternate, so both see the same load
                dense_t.append(_time_once(lambda: model.patch_logits(x)))
                sparse_t.append(_time_once(lambda: patch_logits_at(model, x, keep, batch_size=batch_size)))
            points.append({"keep_frac": frac, "kept": int(keep.sum()), "sparse_flops": sparse_flops,
                           "dense_flops": dense_flops, "sparse_s": statistics.median(sparse_t),
                           "dense_s": statistics.median(dense_t)})
    fracs = [p["keep_frac"] for p in points]
    flops_ratio = [p["sparse_flops"] / p["dense_flops"] for p in points]
    time_ratio = [p["sparse_s"] / p["dense_s"] for p in points]
    flops_be, flops_note = break_even(fracs, flops_ratio)
    time_be, time_note = break_even(fracs, time_ratio)
    kept = [p["kept"] for p in points]
    dense_flops = points[0]["dense_flops"]
    dense_s = statistics.median(p["dense_s"] for p in points)
    flops_fit = linear_break_even(kept, [p["sparse_flops"] for p in points], dense_flops, total)
    time_fit = linear_break_even(kept, [p["sparse_s"] for p in points], dense_s, total)
    flops_per_patch = statistics.median(p["sparse_flops"] / p["kept"] for p in points)
    return {
        "receptive_field": model.geometry.size,
        "grid": [h, w],
        "patches": total,
        "points": points,
        "break_even_keep_frac": {"flops": flops_be, "time": time_be},
        "break_even_linear_fit": {"flops": flops_fit, "time": time_fit},
        "note": {"flops": flops_note, "time": time_note,
                 "linear_fit": "keep fraction where a least-squares line cost = a + b·kept meets the dense cost; "
                               "above 1 means never within the image"},
        "sparse_flops_per_patch": flops_per_patch,
        "dense_flops_per_patch": dense_flops / total,
        "flops_per_patch_ratio": flops_per_patch / (dense_flops / total),
        "expected_flops_break_even": EXPECTED_FLOPS_BREAK_EVEN[name],
        "expected_vs_measured": _verdict(name, image_size, flops_be, flops_fit, time_be, time_fit, flops_ratio[-1], time_ratio[-1]),
        "max_abs_diff": max_abs_diff,
        "max_abs_logit": max_abs_logit,
    }


def run(quick: bool = False, threads: int | None = 1) -> dict:
    """The benchmark (JSON-ready). quick: width 0.25, 112 px, keep {5, 25, 100} %, one repeat (seconds).

    `threads` (default 1) is set with `torch.set_num_threads` for the run and restored afterwards; None
    keeps torch's setting. One thread because this machine is shared: a 2-thread pass stalls whenever
    another process holds a core (measured here: single passes 10-100× slower, at random), which
    drowns the sparse/dense ratios; a single thread gives repeatable ratios.
    """
    if quick:
        image_size, width, fracs, repeats = 112, 0.25, QUICK_KEEP_FRACS, 1
    else:
        image_size, width, fracs, repeats = 224, 1.0, KEEP_FRACS, 3
    start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        used_threads = torch.get_num_threads()
        models = {name: bench_model(name, image_size, width, fracs, repeats) for name in MODELS}
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "benchmark": "sparse",
        "quick": quick,
        "image_size": image_size,
        "width": width,
        "keep_fracs": list(fracs),
        "repeats": repeats,
        "batch_size": 256,
        "torch_threads": used_threads,
        "torch_version": torch.__version__,
        "grid": {name: r["grid"] for name, r in models.items()},
        "models": models,
        "elapsed_s": time.perf_counter() - start,
        "method": ("one image; sparse = bagnet_lib.sparse.patch_logits_at with a random keep-map of that fraction "
                   "(kept rf×rf windows cropped and batched 256 at a time), dense = model.patch_logits on the whole "
                   "image; FLOPs from torch.utils.flop_counter.FlopCounterMode on a meta copy (convolutions and "
                   "matmuls only); times = median of `repeats` runs after a warm-up, dense and sparse alternating; "
                   "random weights, BatchNorm calibrated on random data, head scaled so the largest dense logit is 1; max_abs_diff = largest |sparse - dense| "
                   "logit over the kept positions of all points."),
    }


# ------------------------------------------------------------------------------------ reporting
def _pct(v: float | None) -> str:
    return "none" if v is None else f"{v:.1%}"


def format_table(result: dict) -> str:
    """One block per model: FLOPs and wall time, sparse vs dense, per keep fraction; then the break-evens."""
    lines = [f"bench sparse: {result['image_size']} px, width {result['width']}, {result['torch_threads']} "
             f"torch threads, median of {result['repeats']} run(s), {result['elapsed_s']:.0f} s in all"]
    for name, r in result["models"].items():
        lines.append("")
        lines.append(f"{name} (rf {r['receptive_field']}, grid {r['grid'][0]}×{r['grid'][1]}, "
                     f"max |sparse - dense| = {r['max_abs_diff']:.2g})")
        lines.append(f"  {'keep':>6} {'kept':>5} {'sparse GFLOP':>13} {'dense GFLOP':>12} {'ratio':>7} "
                     f"{'sparse s':>9} {'dense s':>8} {'ratio':>7}")
        for p in r["points"]:
            lines.append(f"  {p['keep_frac']:>6.0%} {p['kept']:>5} {p['sparse_flops'] / 1e9:>13.3f} "
                         f"{p['dense_flops'] / 1e9:>12.3f} {p['sparse_flops'] / p['dense_flops']:>7.3f} "
                         f"{p['sparse_s']:>9.4f} {p['dense_s']:>8.4f} {p['sparse_s'] / p['dense_s']:>7.3f}")
        be = r["break_even_keep_frac"]
        lines.append(f"  break-even keep fraction: FLOPs {_pct(be['flops'])}, time {_pct(be['time'])}")
        lines.append(f"  {r['expected_vs_measured']}")
    return "\n".join(lines)


def plot_sparse(result: dict, out: str | Path | None = None) -> Figure:
    """Sparse/dense FLOPs ratio and wall-time ratio vs keep fraction (log-log), per model, break-evens marked.

    Below the dashed line (ratio 1) computing only the kept patches is cheaper than the dense pass;
    the dotted line is the ideal (cost proportional to the patches computed, no overlap recomputed).
    """
    fig = Figure(figsize=(12, 5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    panels = (("flops", "FLOPs (FlopCounterMode)", "sparse_flops", "dense_flops"),
              ("time", "wall time (one image, median of runs)", "sparse_s", "dense_s"))
    fracs = sorted({p["keep_frac"] for r in result["models"].values() for p in r["points"]})
    lo_x, hi_x = 100 * fracs[0] / 1.3, 100 * fracs[-1] * 1.15
    ratios = [1.0]
    for ax, (key, label, s_key, d_key) in zip(axes, panels):
        fr = np.geomspace(lo_x / 100, hi_x / 100, 100)
        ax.plot(fr * 100, fr, color="0.55", lw=1, ls=":", label="ideal: cost ∝ patches computed")
        ax.axhline(1.0, color="black", lw=1.2, ls="--", label="dense cost (ratio 1)")
        for name, r in result["models"].items():
            pts = r["points"]
            x = [100 * p["keep_frac"] for p in pts]
            y = [p[s_key] / p[d_key] for p in pts]
            ratios += y
            color = MODEL_COLORS.get(name)
            be = r["break_even_keep_frac"][key]
            be_text = f"break-even {100 * be:.1f} %" if be is not None else "cheaper at every fraction (no break-even)"
            if be is None and y[0] >= 1.0:
                be_text = "dearer at every fraction"
            ax.plot(x, y, "o-", color=color, lw=1.8, ms=4, label=f"{name}: {be_text}")
            if be is not None:
                ax.plot([100 * be], [1.0], marker="X", ms=12, color=color, mec="black", mew=0.8, zorder=5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo_x, hi_x)
        ticks = [100 * f for f in fracs]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("keep fraction (% of patches computed, log scale)")
        ax.set_title(f"{label}: sparse / dense")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=8.5, framealpha=0.95)
    axes[0].set_ylim(min(ratios) / 1.5, max(ratios) * 1.5)
    axes[0].set_ylabel("cost of the sparse pass / cost of the dense pass (log scale)")
    fig.suptitle(f"Computing only the kept patches (crops) vs the dense pass: one {result['image_size']} px image, "
                 f"width {result['width']}, torch threads {result['torch_threads']}; ✕ = break-even "
                 "(below the dashed line sparse is cheaper)", fontsize=10.5)
    return save(fig, out)


def markdown(result: dict) -> str:
    """docs/performance.md's `bench-sparse` block: the setting and each BagNet's break-evens, from the result."""
    def kept(frac):
        return "cheaper at every fraction" if frac is None else f"{100 * frac:.1f} % kept"

    lines = [f"One {result['image_size']} px image, width {result['width']} (the published networks' channel counts), "
             f"{result['torch_threads']} thread(s), median of {result['repeats']} runs: computing only the kept patches "
             "(`bagnet_lib.blackout.sparse.patch_logits_at`) against the dense pass. Break-even = the keep fraction "
             "below which the sparse computation is cheaper.", "",
             "| model | grid | break-even by FLOPs | break-even by wall time | expected from the architecture |",
             "| --- | --- | --- | --- | --- |"]
    for name, m in result["models"].items():
        be = m["break_even_keep_frac"]
        expected = ("cheaper at any fraction" if m["expected_flops_break_even"] is None
                    else f"≈ {100 * m['expected_flops_break_even']:.0f} %")
        lines.append(f"| {name} | {'×'.join(map(str, m['grid']))} | {kept(be['flops'])} | {kept(be['time'])} | {expected} |")
    return "\n".join(lines)
