"""The course's blackout study over one run directory: which experiments, which masks, where they are written.

Introduced in notebook 04, which runs one experiment per section. Each experiment (`BLACKOUT_EXPERIMENTS`)
reads the test split's patch logits from the run's logit cache (`cache_step`, one forward pass) and writes
results/blackout_<name>.csv (its only writer); `blackout_runs` reads them back, and `blackout_summary`,
`drop_curve_summary` and `find` summarise them for the write-up and the seed study. `frontier_step`
prices every way of spending less compute (results/frontier.csv).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from bagnet_lib.blackout.channels import channel_sweep
from bagnet_lib.blackout.frontier import (
    COLUMNS,
    SCALES,
    cost_model,
    dense_flops,
    downscaled_points,
    frontier_points,
    pareto_front,
    per_image_correct,
    verify_sparse,
)
from bagnet_lib.blackout.pixels import pixel_blackout_eval
from bagnet_lib.blackout.sweep import PAPER_FRACS, PAPER_SETTINGS, LogitCache, cache_logits, summarize_sweep, sweep
from bagnet_lib.data.tensors import eval_batch
from bagnet_lib.errors import UserError
from bagnet_lib.io import atomic_write, write_json
from bagnet_lib.nets.distributed import barrier, main_first, world
from bagnet_lib.nets.models import build_model
from bagnet_lib.nets.run import Run


def cache_step(run: Run, model_name: str = "bagnet33", split: str = "test", progress: bool = True) -> LogitCache:
    """The patch logits of `split` under the trained model, computed once and kept in RUN_DIR/cache.

    Under torchrun every rank calls it: the forward pass is sharded (`cache_logits`), rank 0 writes the file."""
    path = run.run_dir / "cache" / f"{model_name}_{split}_logits.pt"
    if path.is_file():
        return LogitCache.load(path)
    w = world()
    data = main_first(lambda: run.tensors(split, progress and w.main))
    cache = cache_logits(run.model(model_name), eval_batch(data, run.profile.image_size), data.labels,
                         run.profile.eval_batch_size, data.paths, run.classes, progress and w.main,
                         run.profile.precision)
    if w.main:
        cache.save(path)
    barrier()
    return cache


CURVE_FRACS = tuple(float(f) for f in np.round(np.arange(0, 0.96, 0.05), 2))  # the drop curve, 0 … 95 %


def mask_seeds(run: Run) -> tuple[range, range]:
    """Seeds of the random masks: the paper's settings, and the drop curve. The run's seed picks them too."""
    base = run.seed * 1_000_000
    return range(base, base + run.profile.n_seeds), range(base + 1000, base + 1000 + run.profile.curve_masks)


def pixel_tiles(run: Run, bagnet: str = "bagnet33") -> dict:
    """The tiles pixel blackout paints out: one per stride cell of the BagNet's patch grid (8×8 px).

    A tile of the stride grid is the unit a BagNet's windows move by, so "drop a tile" is the pixel-level
    counterpart of "drop a patch". Each window (33 px for BagNet-33) covers several tiles, and an interior
    tile lies inside `windows_per_tile` windows: dropping a fraction f of the tiles at random leaves a
    window untouched with probability about (1 − f)^(tiles per window).
    """
    geometry = build_model(bagnet, len(run.classes), width=run.profile.width).geometry
    s, size = geometry.stride, run.profile.image_size
    per_window = -(-geometry.size // s)  # tiles a window overlaps along one axis, when aligned (33 px: 5)
    return {"tile_px": s, "grid": (size // s, size // s), "windows_per_tile": per_window**2,
            "tiles_per_window": per_window**2, "window_px": geometry.size,
            "fill": "the ImageNet mean colour (124, 116, 104)"}


BLACKOUT_EXPERIMENTS = {
    "paper": "the paper's four settings: alternating (checkerboard and raster) and random 25/50/75 %",
    "curve": "the drop curve: random masks from 0 to 95 % dropped",
    "structured": "masks by position (centre, border) and by confidence (most, least)",
    "aggregations": "other ways to pool the kept patch logits",
    "channel": "what the paper's code did: columns of fc.weight zeroed",
    "pixel": "image tiles painted grey before the network (BagNet and ResNet-50)",
}


def blackout_experiment(run: Run, name: str, bagnet: str | None = None, progress: bool = True) -> pd.DataFrame:
    """One blackout experiment (a key of `BLACKOUT_EXPERIMENTS`) on the test split, one row per mask ×
    aggregation, written to results/blackout_<name>.csv (its only writer). Introduced in notebook 04."""
    if name not in BLACKOUT_EXPERIMENTS:
        raise UserError(f"Unknown blackout experiment {name!r}; choose one of {', '.join(BLACKOUT_EXPERIMENTS)}.")
    p, bagnet = run.profile, run.bagnet(bagnet)
    cache = cache_step(run, bagnet, "test", progress)
    aggs, fracs = ("mean", "zero"), list(PAPER_FRACS)
    seeds, curve_seeds = mask_seeds(run)
    if name == "paper":
        df = pd.concat([sweep(cache, ["checkerboard", "raster"], [0.5], [0], aggs),
                        sweep(cache, ["random"], fracs, seeds, aggs)]).assign(model=bagnet)
    elif name == "curve":
        df = sweep(cache, ["random"], CURVE_FRACS, curve_seeds, aggs).assign(model=bagnet)
    elif name == "structured":
        df = sweep(cache, ["center", "border", "topk", "bottomk"], fracs, [0], aggs).assign(model=bagnet)
    elif name == "aggregations":
        df = sweep(cache, ["random"], fracs, seeds[:10], ["median", "trimmed_mean", "max", "logsumexp", "clipped",
                                                          "center_weighted"]).assign(model=bagnet)
    elif name == "channel":
        df = channel_sweep(cache, PAPER_SETTINGS, seeds).assign(model=bagnet)
    else:
        test = run.tensors("test", progress)
        images, grid = eval_batch(test, p.image_size), pixel_tiles(run, bagnet)["grid"]
        df = pd.concat([pixel_blackout_eval(run.model(m), images, test.labels, grid, fracs, seeds[:p.pixel_seeds],
                                            p.eval_batch_size, m, progress, p.precision) for m in ("resnet50", bagnet)])
    df = df.assign(experiment=name).reset_index(drop=True)
    if world().main:  # under torchrun the pixel passes are sharded and every rank has the rows; rank 0 writes
        df.to_csv(run.results / f"blackout_{name}.csv", index=False)
    return df


def blackout_step(run: Run, bagnet: str | None = None, progress: bool = True) -> pd.DataFrame:
    """Every blackout experiment, in order (for scripts and tests; notebook 04 and the CLI's `blackout` run them one at a time)."""
    for name in BLACKOUT_EXPERIMENTS:
        blackout_experiment(run, name, bagnet, progress)
    return blackout_runs(run)


def blackout_runs(run: Run, experiments: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The rows of the blackout experiments that have run (results/blackout_<name>.csv), concatenated."""
    names = [n for n in (experiments or BLACKOUT_EXPERIMENTS) if (run.results / f"blackout_{n}.csv").is_file()]
    if not names:
        raise UserError(f"No blackout results in {run.results}: run notebook 04 (or `python -m bagnet_lib sweep "
                        f"--run-dir {run.run_dir}`) first.")
    return pd.concat([pd.read_csv(run.results / f"blackout_{n}.csv") for n in names], ignore_index=True)


def frontier_step(run: Run, bagnet: str | None = None, progress: bool = True) -> pd.DataFrame:
    """Accuracy against GFLOPs per image for every way of spending less: results/frontier.csv (one writer).

    For the run's BagNet and every other BagNet trained in the run directory, from their logit caches: the
    dense network, kept patches (random, centre, strided), anytime stopping; with forward passes: each BagNet
    and ResNet-50 on downscaled test images, and a check that computing only the kept windows really gives
    the cached patch logits. The per-image correctness of every point goes to cache/frontier_correct.pt (for
    the paired intervals of claim (e)), the costs of the networks to results/frontier_costs.json.
    """
    p, bagnet = run.profile, run.bagnet(bagnet)
    bagnets = [bagnet] + [b for b in run.trained("bagnet") if b != bagnet]
    seeds, _ = mask_seeds(run)
    test = run.tensors("test", progress)
    images = eval_batch(test, p.image_size)
    points, costs = [], {}
    for name in bagnets:
        cache, model = cache_step(run, name, "test", progress), run.model(name)
        cost = cost_model(model, p.image_size)
        points += frontier_points(cache, cost, name, seeds)
        points += downscaled_points(model, name, images, test.labels, SCALES[:-1], precision=p.precision,
                                    batch_size=p.eval_batch_size)  # its full-size point is the cache's "dense"
        costs[name] = {"gflops": cost.dense / 1e9, "gflops_per_patch": cost.per_patch / 1e9,
                       "n_patches": cost.n_patches, "break_even_keep_frac": cost.break_even,
                       "sparse_check_max_abs_diff": verify_sparse(model, images, cache)}
    resnet = run.model("resnet50")
    points += downscaled_points(resnet, "resnet50", images, test.labels, precision=p.precision,
                                batch_size=p.eval_batch_size)
    correct = per_image_correct(points)
    df = pd.DataFrame(points, columns=COLUMNS)
    df["pareto"] = pareto_front(df["gflops_per_image"], df["acc"])
    df.to_csv(run.results / "frontier.csv", index=False)
    tensors = {str(i): torch.as_tensor(v) for i, v in correct.items()}
    atomic_write(run.run_dir / "cache" / "frontier_correct.pt", lambda f: torch.save(tensors, f))
    epoch_s = {m: float(pd.read_csv(run.results / f"{m}_history.csv")["seconds"].median()) for m in ("resnet50", bagnet)}
    main = costs[bagnet]
    write_json(run.results / "frontier_costs.json", {
        "bagnet": bagnet, "image_size": p.image_size, "bagnet_gflops": main["gflops"],
        "bagnet_gflops_per_patch": main["gflops_per_patch"], "n_patches": main["n_patches"],
        "break_even_keep_frac": main["break_even_keep_frac"], "resnet_gflops": dense_flops(resnet, p.image_size) / 1e9,
        "bagnet_epoch_s": epoch_s[bagnet], "resnet_epoch_s": epoch_s["resnet50"],
        "sparse_check_max_abs_diff": max(c["sparse_check_max_abs_diff"] for c in costs.values()), "bagnets": costs})
    return df


def blackout_summary(runs: pd.DataFrame) -> list[dict]:
    """One entry per experiment/kind/fraction/aggregation/model: mean accuracy and loss over masks (or seeds),
    where 95 % of them lie, and (for a few seeds, e.g. pixel blackout) the Student-t interval of the mean."""
    setting_of = {"checkerboard": "alternating", "raster": "alternating", "channel_alternating": "channel",
                  "channel_random": "channel"}
    out = []
    for (model, exp), g in runs.groupby(["model", "experiment"], sort=False):
        if exp == "curve":  # 20 fractions × many masks: summarised by the drop-curve figure and verdict (d)
            continue
        for row in summarize_sweep(g).to_dict("records"):
            out.append({"setting": setting_of.get(row["kind"], row["kind"]), "kind": row["kind"], "model": model,
                        "experiment": exp, "drop_frac": row["drop_frac"], "aggregation": row["aggregation"],
                        "n_seeds": row["n_seeds"], "acc_mean": row["acc_mean"], "acc_spread": row["acc_spread"],
                        "acc_t_ci": row["acc_t_ci"], "loss_mean": row["loss_mean"]})
    return out


def drop_curve_summary(runs: pd.DataFrame) -> list[dict]:
    """The drop curve (experiment `curve`): per fraction and aggregation, mean accuracy/loss and where 95 % of
    the masks lie."""
    out = []
    for model, g in runs[runs["experiment"] == "curve"].groupby("model", sort=True):
        for row in summarize_sweep(g).to_dict("records"):
            out.append({"model": model, "drop_frac": float(row["drop_frac"]), "aggregation": row["aggregation"],
                        "n_masks": row["n_seeds"], "acc_mean": float(row["acc_mean"]), "acc_spread": row["acc_spread"],
                        "loss_mean": float(row["loss_mean"]), "loss_spread": row["loss_spread"]})
    return out


def find(blackout: list[dict], kind: str, frac: float, agg: str = "mean", model: str = "bagnet33") -> dict | None:
    """The summary entry of one setting, or None."""
    for b in blackout:
        if b["kind"] == kind and abs(b["drop_frac"] - frac) < 1e-9 and b["aggregation"] == agg and b["model"] == model:
            return b
    return None
