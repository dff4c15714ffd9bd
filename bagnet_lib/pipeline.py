"""The experiment as a few steps over one run directory: prepare → train → blackout (→ `report.write_report`).

The notebooks call these steps (01 prepare, 02/03 train, 04 blackout, 05 report); the CLI commands
`train`, `cache-logits` and `sweep` call them too, and `python -m bagnet_lib reproduce` runs the notebooks.
A run directory holds everything one run made:

    RUN_DIR/run.json            profile, data location, seed, whether the data is synthetic
    RUN_DIR/audit.json          the data audit
    RUN_DIR/split.csv           path,label,split: read by every later step
    RUN_DIR/checkpoints/        <model>_last.pt (resumable), <model>_best.pt
    RUN_DIR/cache/              decoded images, cached patch logits
    RUN_DIR/results/            histories, metrics, blackout_<experiment>.csv, frontier.csv, summary.json
    RUN_DIR/REPORT.md           the write-up (notebook 05)

Every step is idempotent: run again, it reuses what is there (training resumes).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .data.folder import DEFAULT_DATA_DIR, PROJECT_ROOT, class_names, find_data_dir
from .data.split import make_split, read_manifest, read_split, subsample, write_split
from .data.tensors import ImageTensors, eval_batch, load_split_tensors
from .errors import UserError
from .experiments import PAPER_SETTINGS, LogitCache, cache_logits, channel_sweep, pixel_blackout_eval, sweep
from .io import atomic_write, write_json
from .metrics import correct, evaluate_logits, nll
from .models import BAGNETS, build_model
from .paper import PAPER_FRACS
from .profiles import Profile, get_profile
from .train import load_best, predict, resolve_precision, select_device, train_model

SYNTHETIC_BANNER = ("=" * 78 + "\n  NO REAL DATASET FOUND: this run uses the embedded SYNTHETIC flowers.\n"
                    "  Its numbers say nothing about the paper. For the real data set BAGNET_DATA\n"
                    "  (e.g. BAGNET_DATA=../shared/data/flowers) or run `python -m bagnet_lib data download`.\n"
                    + "=" * 78)


@dataclass
class Run:
    """An opened run directory with its profile, data location and split."""

    run_dir: Path
    profile: Profile
    data_dir: Path
    synthetic: bool
    seed: int
    split: pd.DataFrame
    classes: list[str]
    _decoded: dict[str, ImageTensors] = field(default_factory=dict, repr=False)

    @property
    def results(self) -> Path:
        return self.run_dir / "results"

    @property
    def figures(self) -> Path:
        return self.run_dir / "figures"

    def audit(self):
        """The data audit of this run (RUN_DIR/audit.json) as an `AuditReport`."""
        from .data.audit import AuditReport

        return AuditReport.from_json(json.loads((self.run_dir / "audit.json").read_text()))

    def tensors(self, split: str, progress: bool = True) -> ImageTensors:
        """Decoded images of one split (train/val/test), cached in RUN_DIR/cache and kept for this Run."""
        if split not in self._decoded:  # figure helpers ask for the test split several times per notebook
            self._decoded[split] = load_split_tensors(self.data_dir, self.split, split, self.classes,
                                                      self.profile.image_size, self.run_dir / "cache", progress,
                                                      self.profile.original_size)
        return self._decoded[split]

    def trained(self, prefix: str = "") -> list[str]:
        """The models of this run with a best checkpoint (e.g. `trained("bagnet")`), sorted by name."""
        return sorted(p.name.removesuffix("_best.pt") for p in (self.run_dir / "checkpoints").glob(f"{prefix}*_best.pt"))

    def bagnet(self, requested: str | None = None) -> str:
        """The BagNet this run studies: `requested`, else the one BagNet notebook 03 trained here.

        Introduced in notebook 04, so that notebook 03's `MODEL` (bagnet9, bagnet17, bagnet33) flows through 04
        and 05 without being repeated.
        """
        if requested:
            if requested not in BAGNETS:
                raise UserError(f"BAGNET={requested!r} is not a BagNet; choose one of {', '.join(BAGNETS)}.")
            return requested
        trained = self.trained("bagnet")
        if len(trained) == 1:
            return trained[0]
        if not trained:
            raise UserError(f"No trained BagNet in {self.run_dir}: run notebook 03 first (or `python -m bagnet_lib "
                            f"train --model bagnet33 --run-dir {self.run_dir}`).")
        raise UserError(f"{self.run_dir} holds several trained BagNets ({', '.join(trained)}); set BAGNET in the "
                        "notebook's parameters cell to the one to study.")

    def model(self, name: str, best: bool = True) -> torch.nn.Module:
        """The model `name` with its best checkpoint from this run loaded, in eval mode."""
        model = build_model(name, len(self.classes), width=self.profile.width)
        ckpt = self.run_dir / "checkpoints" / f"{name}_best.pt"
        if best:
            if not ckpt.is_file():
                raise UserError(f"No trained {name} in {self.run_dir} ({ckpt} is missing). Train it first: "
                                f"`python -m bagnet_lib train --model {name} --run-dir {self.run_dir}`.")
            load_best(model, ckpt)
        return model.to(select_device()).eval()


def choose_data(data_dir: str | Path | None, allow_synthetic: bool = True, try_download: bool = True,
                synthetic_dir: str | Path | None = None, progress: bool = True) -> tuple[Path, bool]:
    """The dataset to use and whether it is synthetic: real data if found, else a download, else synthetic.

    Set BAGNET_NO_DOWNLOAD=1 to skip the download attempt (the tests do: they never touch the network).
    """
    try_download = try_download and not os.environ.get("BAGNET_NO_DOWNLOAD")
    found = find_data_dir(data_dir)
    if found is not None:
        return found, (found / "synthetic.json").is_file()
    if data_dir is not None:  # an explicit path that holds no dataset is an error, not a fallback
        from .data.folder import resolve_data_dir

        resolve_data_dir(data_dir)
    if try_download:
        from .data.download import download_flowers

        try:
            return download_flowers(DEFAULT_DATA_DIR, timeout=5.0, progress=progress), False
        except UserError as exc:
            print(f"[data] download not possible: {exc}")
    if not allow_synthetic:
        from .data.folder import resolve_data_dir

        resolve_data_dir(None)
    from .data.synthetic import generate_synthetic_dataset

    return generate_synthetic_dataset(synthetic_dir or PROJECT_ROOT / "data" / "synthetic", progress=progress), True


def prepare_run(run_dir: str | Path, profile: str | Profile = "cpu", data_dir: str | Path | None = None,
                manifest: str | Path | None = None, seed: int = 0, allow_synthetic: bool = True,
                progress: bool = True) -> Run:
    """Open (or create) a run directory: choose the data, audit it, write the split once.

    `manifest` defaults to $BAGNET_MANIFEST (set by `make lab` and `make reproduce` to the paper's split
    when the shared flowers are used), so notebooks run by hand give the same split as the runner.
    """
    run_dir = Path(run_dir)
    manifest = manifest or os.environ.get("BAGNET_MANIFEST") or None
    profile = get_profile(profile) if isinstance(profile, str) else profile
    meta_path = run_dir / "run.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta["profile"]["name"] != profile.name or meta["seed"] != seed:
            raise UserError(f"{run_dir} holds a run with profile {meta['profile']['name']!r} and seed {meta['seed']}; "
                            f"this one asks for {profile.name!r} and seed {seed}. Use another --run-dir.")
        if data_dir is not None and Path(data_dir).resolve() != Path(meta["data_dir"]).resolve():
            raise UserError(f"{run_dir} was made with data {meta['data_dir']}, not {data_dir}. Use another --run-dir.")
        data, synthetic = Path(meta["data_dir"]), bool(meta["synthetic"])
    else:
        data, synthetic = choose_data(data_dir, allow_synthetic, progress=progress)
        data = data.resolve()
        if synthetic and manifest is not None:
            print(f"[data] ignoring the manifest {manifest}: it belongs to the real flowers, not the synthetic set")
            manifest = None
        meta = {"profile": profile.to_dict(), "data_dir": str(data.resolve()), "synthetic": synthetic, "seed": seed,
                "manifest": str(manifest) if manifest else None, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    if synthetic:
        print(SYNTHETIC_BANNER)
    split_path = run_dir / "split.csv"
    if not split_path.is_file():
        from .data.audit import audit_dataset

        audit = audit_dataset(data, progress=progress)
        write_json(run_dir / "audit.json", audit.to_json())
        split = read_manifest(data, manifest) if manifest else make_split(data, seed=seed, audit=audit)
        if profile.images_per_class:
            split = subsample(split, profile.images_per_class, seed)
        write_split(split, split_path)
        write_json(meta_path, meta)
    split = read_split(split_path)
    classes = class_names(data)
    for sub in ("results", "figures"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    return Run(run_dir, profile, data, synthetic, seed, split, classes)


def leakage_report(run: Run, manifest: str | Path | None = None) -> pd.DataFrame:
    """Duplicate groups that cross splits, for this run's split, the paper's manifest and a fresh project split.

    Introduced in notebook 01. Written to results/leakage.csv.
    """
    from .data.audit import split_leakage

    audit = run.audit()
    tables = {"this run": run.split}
    if manifest:
        tables["paper's split (manifest)"] = read_manifest(run.data_dir, manifest)
    tables["project split (duplicate-aware, conflicts excluded)"] = make_split(run.data_dir, seed=run.seed, audit=audit)
    rows = []
    for name, table in tables.items():
        leaks = split_leakage(table, audit)
        rows.append({"split": name, "images": len(table), "duplicate_groups_across_splits": len(leaks),
                     "groups_in_train_and_test": int(sum({"train", "test"} <= set(s) for s in leaks["splits"])),
                     "label_conflict_files_used": int(table["path"].isin({p for g in audit.conflict_groups for p in g}).sum())})
    out = pd.DataFrame(rows)
    out.to_csv(run.results / "leakage.csv", index=False)
    return out


def train_step(run: Run, model_name: str, progress: bool = True) -> dict:
    """Train `model_name` (resuming if interrupted), then score its best checkpoint on train and test."""
    p = run.profile
    train, val, test = (run.tensors(s, progress) for s in ("train", "val", "test"))
    torch.manual_seed(run.seed)
    model = build_model(model_name, len(run.classes), pretrained=p.pretrained, feature_extract=p.feature_extract,
                        width=p.width, zero_init_residual=p.zero_init_residual)
    t0 = time.perf_counter()
    result = train_model(model, train, val, p.for_model(model_name), run.run_dir / "checkpoints", model_name, run.seed, progress=progress,
                         history_path=run.results / f"{model_name}_history.csv")
    load_best(model, result.best_checkpoint)
    metrics = {"model": model_name, "best_epoch": result.best_epoch, "best_val_acc": result.best_val_acc,
               "precision": resolve_precision(p.precision, next(model.parameters()).device),
               "train_seconds": float(result.history["seconds"].sum()), "wall_seconds": time.perf_counter() - t0,
               "n_parameters": sum(q.numel() for q in model.parameters())}
    for name, data in (("train", train), ("test", test)):
        logits = predict(model, eval_batch(data, p.image_size), p.eval_batch_size, precision=p.precision)
        metrics[name] = evaluate_logits(logits, data.labels, run.classes, seed=run.seed)
        if name == "test":  # per-image predictions: paired comparisons and the images a model gets wrong
            probs = logits.softmax(dim=1)
            pd.DataFrame({"path": data.paths, "label": [run.classes[i] for i in data.labels],
                          "pred": [run.classes[i] for i in probs.argmax(1)], "prob": probs.max(1).values.numpy(),
                          "correct": correct(logits, data.labels).numpy(), "nll": nll(logits, data.labels).numpy()}
                         ).to_csv(run.results / f"{model_name}_test_predictions.csv", index=False)
    write_json(run.results / f"{model_name}_metrics.json", metrics)
    return metrics


def cache_step(run: Run, model_name: str = "bagnet33", split: str = "test", progress: bool = True) -> LogitCache:
    """The patch logits of `split` under the trained model, computed once and kept in RUN_DIR/cache."""
    path = run.run_dir / "cache" / f"{model_name}_{split}_logits.pt"
    if path.is_file():
        return LogitCache.load(path)
    data = run.tensors(split, progress)
    cache = cache_logits(run.model(model_name), eval_batch(data, run.profile.image_size), data.labels,
                         run.profile.eval_batch_size, data.paths, run.classes, progress, run.profile.precision)
    cache.save(path)
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
    df.to_csv(run.results / f"blackout_{name}.csv", index=False)
    return df


def blackout_step(run: Run, bagnet: str | None = None, progress: bool = True) -> pd.DataFrame:
    """Every blackout experiment, in order (the CLI's `sweep`; notebook 04 runs them one section at a time)."""
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
    from .frontier import (
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
