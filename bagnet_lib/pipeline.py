"""The whole experiment as a few steps over one run directory: prepare → train → blackout → report.

The CLI (`python -m bagnet_lib reproduce`) runs them in order; the notebooks call the same steps.
A run directory holds everything one run made:

    RUN_DIR/run.json            profile, data location, seed, whether the data is synthetic
    RUN_DIR/audit.json          the data audit
    RUN_DIR/split.csv           path,label,split: read by every later step
    RUN_DIR/checkpoints/        <model>_last.pt (resumable), <model>_best.pt
    RUN_DIR/cache/              decoded images, cached patch logits
    RUN_DIR/results/            histories, metrics and blackout tables (CSV/JSON), summary.json
    RUN_DIR/REPORT.md           Table 1 and the blackout results

Every step is idempotent: run again, it reuses what is there (training resumes).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .data.folder import class_names, find_data_dir
from .data.split import make_split, read_manifest, read_split, subsample, write_split
from .data.tensors import ImageTensors, eval_batch, load_split_tensors
from .errors import UserError
from .experiments import (PAPER_SETTINGS, LogitCache, cache_logits, channel_sweep, pixel_blackout_eval, summarize_sweep,
                          sweep)
from .io import write_json, write_text
from .metrics import evaluate_logits
from .models import build_model
from .profiles import Profile, get_profile
from .train import load_best, predict, select_device, train_model

PAPER_TABLE1 = {  # test (and train) accuracy / loss as printed in the paper (see shared/paper/README.md)
    "resnet50": {"train": {"acc": 0.9211, "loss": 0.2517}, "test": {"acc": 0.9093, "loss": 0.2847}},
    "bagnet33": {"train": {"acc": 0.9288, "loss": 0.2799}, "test": {"acc": 0.8821, "loss": 0.3745}},
    "alternating": {"acc": 0.8293, "loss": 0.5761},
    "random 25%": {"acc": 0.8827, "loss": 0.4123},
    "random 50%": {"acc": 0.8327, "loss": 0.5445},
    "random 75%": {"acc": 0.8327, "loss": 0.5445},
}
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

    @property
    def results(self) -> Path:
        return self.run_dir / "results"

    def tensors(self, split: str, progress: bool = True) -> ImageTensors:
        """Decoded images of one split (train/val/test), cached in RUN_DIR/cache."""
        return load_split_tensors(self.data_dir, self.split, split, self.classes, self.profile.image_size,
                                  self.run_dir / "cache", progress)

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
                synthetic_dir: str | Path = "data/synthetic", progress: bool = True) -> tuple[Path, bool]:
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
            return download_flowers(timeout=5.0, progress=progress), False
        except UserError as exc:
            print(f"[data] download not possible: {exc}")
    if not allow_synthetic:
        from .data.folder import resolve_data_dir

        resolve_data_dir(None)
    from .data.synthetic import generate_synthetic_dataset

    return generate_synthetic_dataset(synthetic_dir, progress=progress), True


def prepare_run(run_dir: str | Path, profile: str | Profile = "cpu", data_dir: str | Path | None = None,
                manifest: str | Path | None = None, seed: int = 0, allow_synthetic: bool = True,
                progress: bool = True) -> Run:
    """Open (or create) a run directory: choose the data, audit it, write the split once."""
    run_dir = Path(run_dir)
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
    return Run(run_dir, profile, data, synthetic, seed, split, classes)


def train_step(run: Run, model_name: str, progress: bool = True) -> dict:
    """Train `model_name` (resuming if interrupted), then score its best checkpoint on train and test."""
    p = run.profile
    train, val, test = (run.tensors(s, progress) for s in ("train", "val", "test"))
    torch.manual_seed(run.seed)
    model = build_model(model_name, len(run.classes), pretrained=p.pretrained, feature_extract=p.feature_extract,
                        width=p.width)
    t0 = time.perf_counter()
    result = train_model(model, train, val, p, run.run_dir / "checkpoints", model_name, run.seed, progress=progress,
                         history_path=run.results / f"{model_name}_history.csv")
    load_best(model, result.best_checkpoint)
    metrics = {"model": model_name, "best_epoch": result.best_epoch, "best_val_acc": result.best_val_acc,
               "train_seconds": float(result.history["seconds"].sum()), "wall_seconds": time.perf_counter() - t0,
               "n_parameters": sum(q.numel() for q in model.parameters())}
    for name, data in (("train", train), ("test", test)):
        logits = predict(model, eval_batch(data, p.image_size), p.eval_batch_size)
        metrics[name] = evaluate_logits(logits, data.labels, run.classes, seed=run.seed)
    write_json(run.results / f"{model_name}_metrics.json", metrics)
    return metrics


def cache_step(run: Run, model_name: str = "bagnet33", split: str = "test", progress: bool = True) -> LogitCache:
    """The patch logits of `split` under the trained model, computed once and kept in RUN_DIR/cache."""
    path = run.run_dir / "cache" / f"{model_name}_{split}_logits.pt"
    if path.is_file():
        return LogitCache.load(path)
    data = run.tensors(split, progress)
    cache = cache_logits(run.model(model_name), eval_batch(data, run.profile.image_size), data.labels,
                         run.profile.eval_batch_size, data.paths, run.classes, progress)
    cache.save(path)
    return cache


def blackout_step(run: Run, bagnet: str = "bagnet33", progress: bool = True) -> pd.DataFrame:
    """Every blackout experiment on the test split; all rows to results/blackout_runs.csv."""
    p = run.profile
    cache = cache_step(run, bagnet, "test", progress)
    aggs = ("mean", "zero")
    fracs = [0.25, 0.5, 0.75]
    frames = {
        # the paper's four settings (both readings of "alternating", random with many seeds)
        "paper": pd.concat([sweep(cache, ["checkerboard", "raster"], [0.5], [0], aggs),
                            sweep(cache, ["random"], fracs, range(p.n_seeds), aggs)]),
        # the drop curve 0 … 95 %, `curve_masks` random masks per point
        "curve": sweep(cache, ["random"], np.round(np.arange(0, 0.96, 0.05), 2),
                       range(1000, 1000 + p.curve_masks), aggs),
        "structured": sweep(cache, ["center", "border", "topk", "bottomk"], fracs, [0], aggs),
        "aggregations": sweep(cache, ["random"], fracs, range(min(p.n_seeds, 10)),
                              ["median", "trimmed_mean", "max", "logsumexp", "clipped", "center_weighted"]),
        "channel": channel_sweep(cache, PAPER_SETTINGS, range(p.n_seeds)),  # what the paper's code did
    }
    frames = [df.assign(experiment=name, model=bagnet) for name, df in frames.items()]
    test = run.tensors("test", progress)
    images = eval_batch(test, p.image_size)
    for name in ("resnet50", bagnet):
        frames.append(pixel_blackout_eval(run.model(name), images, test.labels, cache.grid, fracs,
                                          range(p.pixel_seeds), p.eval_batch_size, name, progress)
                      .assign(experiment="pixel"))
    df = pd.concat(frames, ignore_index=True)
    df.to_csv(run.results / "blackout_runs.csv", index=False)
    return df


def _blackout_summary(df: pd.DataFrame) -> list[dict]:
    out = []
    setting_of = {"checkerboard": "alternating", "raster": "alternating", "random": "random", "pixel": "pixel",
                  "channel_alternating": "channel", "channel_random": "channel"}
    for (model, exp), g in df.groupby(["model", "experiment"], sort=False):
        if exp == "curve":
            continue
        for row in summarize_sweep(g).to_dict("records"):
            out.append({"setting": setting_of.get(row["kind"], row["kind"]), "kind": row["kind"], "model": model,
                        "experiment": exp,
                        "drop_frac": row["drop_frac"], "aggregation": row["aggregation"], "n_seeds": row["n_seeds"],
                        "acc_mean": row["acc_mean"], "acc_ci": row["acc_ci"], "loss_mean": row["loss_mean"]})
    return out


def report_step(run: Run, minutes: float | None = None) -> dict:
    """results/summary.json and REPORT.md from what the earlier steps wrote."""
    metrics = {m: json.loads((run.results / f"{m}_metrics.json").read_text()) for m in ("resnet50", "bagnet33")}
    df = pd.read_csv(run.results / "blackout_runs.csv")
    blackout = _blackout_summary(df)
    summary = {"profile": run.profile.name, "synthetic_data": run.synthetic, "data_dir": str(run.data_dir),
               "n_test": metrics["bagnet33"]["test"]["n"], "minutes": minutes}
    for m, v in metrics.items():
        summary[m] = {"train": {k: v["train"][k] for k in ("acc", "loss")},
                      "test": {k: v["test"][k] for k in ("acc", "loss", "acc_ci", "loss_ci")},
                      "best_epoch": v["best_epoch"]}
    summary["blackout"] = blackout
    write_json(run.results / "summary.json", summary)
    write_text(run.run_dir / "REPORT.md", render_report(summary))
    return summary


def _find(blackout: list[dict], kind: str, frac: float, agg: str = "mean", model: str = "bagnet33") -> dict | None:
    for b in blackout:
        if b["kind"] == kind and abs(b["drop_frac"] - frac) < 1e-9 and b["aggregation"] == agg and b["model"] == model:
            return b
    return None


def render_report(summary: dict) -> str:
    """A short Markdown report: Table 1 beside the paper, and the blackout settings with intervals."""
    title = "# BagNet blackout reproduction" + (" — SYNTHETIC-DATA RUN (not the flowers)" if summary["synthetic_data"] else "")
    lines = [title, "", f"Profile `{summary['profile']}`, data `{summary['data_dir']}`, "
             f"{summary['n_test']} test images." + (f" Wall time {summary['minutes']:.1f} min." if summary.get("minutes") else ""), ""]
    if summary["synthetic_data"]:
        lines += ["> **These numbers come from the embedded synthetic dataset** (no real flowers were found). "
                  "They test the pipeline, not the paper.", ""]
    lines += ["## Table 1: accuracy / cross-entropy", "", "| setting | this run: test acc [95% CI] | test loss | paper: test acc | paper: test loss |",
              "| --- | --- | --- | --- | --- |"]
    for m, label in (("resnet50", "ResNet-50"), ("bagnet33", "BagNet-33")):
        t = summary[m]["test"]
        lines.append(f"| {label} | {t['acc']:.3f} [{t['acc_ci'][0]:.3f}, {t['acc_ci'][1]:.3f}] | {t['loss']:.3f} | "
                     f"{PAPER_TABLE1[m]['test']['acc']:.4f} | {PAPER_TABLE1[m]['test']['loss']:.4f} |")
    for label, kind, frac in (("alternating (checkerboard)", "checkerboard", 0.5), ("alternating (raster)", "raster", 0.5),
                              ("random 25%", "random", 0.25), ("random 50%", "random", 0.5), ("random 75%", "random", 0.75)):
        b = _find(summary["blackout"], kind, frac)
        paper = PAPER_TABLE1["alternating" if kind != "random" else label]
        if b:
            ci = f" [{b['acc_ci'][0]:.3f}, {b['acc_ci'][1]:.3f}]" if b["n_seeds"] > 1 else ""
            lines.append(f"| BagNet-33, {label} (n={b['n_seeds']}) | {b['acc_mean']:.3f}{ci} | {b['loss_mean']:.3f} | "
                         f"{paper['acc']:.4f} | {paper['loss']:.4f} |")
    lines += ["", "Blackout rows use the `mean` aggregation (dropped patches left out of the mean). "
              "The paper's random 75% column repeats its 50% column (a copy error in the paper).", "",
              "## Three kinds of blackout at 25 / 50 / 75 % dropped (accuracy, mean over seeds)", "",
              "| kind | model | aggregation | 25% | 50% | 75% |", "| --- | --- | --- | --- | --- | --- |"]
    for kind, model, agg in (("random", "bagnet33", "mean"), ("random", "bagnet33", "zero"),
                             ("channel_random", "bagnet33", "mean"), ("pixel", "bagnet33", "model"),
                             ("pixel", "resnet50", "model")):
        cells = []
        for frac in (0.25, 0.5, 0.75):
            b = _find(summary["blackout"], kind, frac, agg, model)
            cells.append(f"{b['acc_mean']:.3f} (loss {b['loss_mean']:.3f})" if b else "–")
        lines.append(f"| {kind} | {model} | {agg} | " + " | ".join(cells) + " |")
    lines += ["", "`random`: patch logits dropped after the network (the paper's text); `channel_random`: columns of "
              "`fc.weight` zeroed (what the paper's code did); `pixel`: image tiles painted grey before the network.", ""]
    return "\n".join(lines)


def reproduce(run_dir: str | Path, profile: str = "cpu", data_dir: str | Path | None = None,
              manifest: str | Path | None = None, seed: int = 0, progress: bool = True) -> dict:
    """All steps in order; prints one line per step with its wall time."""
    t0 = time.perf_counter()
    steps: list[tuple[str, float]] = []

    def timed(label, fn, *a, **kw):
        s = time.perf_counter()
        out = fn(*a, **kw)
        steps.append((label, time.perf_counter() - s))
        print(f"[reproduce] {label}: {steps[-1][1]:.1f} s", flush=True)
        return out

    run = timed("prepare data and split", prepare_run, run_dir, profile, data_dir, manifest, seed, progress=progress)
    run.results.mkdir(parents=True, exist_ok=True)
    for name in ("resnet50", "bagnet33"):
        m = timed(f"train {name}", train_step, run, name, progress)
        print(f"[reproduce] {name}: test acc {m['test']['acc']:.3f}, loss {m['test']['loss']:.3f}")
    timed("blackout experiments", blackout_step, run, "bagnet33", progress)
    summary = timed("report", report_step, run, (time.perf_counter() - t0) / 60)
    print(f"[reproduce] done in {(time.perf_counter() - t0) / 60:.1f} min; report: {run.run_dir / 'REPORT.md'}")
    if run.synthetic:
        print(SYNTHETIC_BANNER)
    return summary
