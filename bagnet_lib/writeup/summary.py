"""The numbers of the write-up (notebook 05): results/summary.json, its only writer.

Everything is read from the run directory, and only from it: metrics and histories (notebooks 02, 03), the
blackout tables and the logit cache (04; the per-image numbers behind every interval are recomputed from the
cache with the same masks), the frontier (04), the leakage table (01) and, when other training seeds of the same
course were run, the seed study (results/seeds.csv, written by `seeds`). The paper's own numbers come from
`paper`; the verdicts from `verdicts`. `report` renders this summary as REPORT.md.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from bagnet_lib.blackout.channels import channel_masked_logits, channel_per_image, channel_scores
from bagnet_lib.blackout.nulls import bag_members, channel_members, subsampling_null
from bagnet_lib.blackout.study import (
    CURVE_FRACS,
    blackout_runs,
    blackout_summary,
    drop_curve_summary,
    find,
    mask_seeds,
    pixel_tiles,
)
from bagnet_lib.blackout.sweep import PAPER_FRACS, LogitCache, per_image_scores
from bagnet_lib.io import display_path, write_json
from bagnet_lib.nets.adapt import adaptation_label
from bagnet_lib.nets.metrics import bootstrap_ci, correct, cross_entropy, nll, spread
from bagnet_lib.nets.models import build_model, model_label
from bagnet_lib.nets.run import Run
from bagnet_lib.writeup import verdicts as V
from bagnet_lib.writeup.paper import PAPER_TABLE1
from bagnet_lib.writeup.seeds import seeds_summary

# The rows of Table 1 that involve blackout: (label, reading, kind, fraction, the paper's column).
BLACKOUT_ROWS = (
    ("alternating: checkerboard (spatial)", "patch", "checkerboard", 0.5, "alternating"),
    ("alternating: raster (a spatial analogue of the code's index parity)", "patch", "raster", 0.5, "alternating"),
    ("alternating: channel index parity (the paper's code)", "channel", "alternating", 0.5, "alternating"),
    *((f"random {int(100 * f)}%", reading, "random", f, f"random {int(100 * f)}%")
      for f in PAPER_FRACS for reading in ("patch", "channel")),
)


def _best_val(run: Run, model: str, metrics: dict) -> dict:
    """The validation accuracy and loss of the network the course evaluates (what the paper printed as "train"):
    the best validation epoch's, or that epoch's network adapted to the test size where it was (`nets.adapt`)."""
    hist = pd.read_csv(run.results / f"{model}_history.csv")
    best = hist.loc[hist["val_acc"].idxmax()]
    out = {"epoch": int(best["epoch"]), "acc": float(best["val_acc"]), "loss": float(best["val_loss"])}
    adapted = metrics.get("adapted")
    if adapted and "val" in metrics:
        out.update(acc=metrics["val"]["acc"], loss=metrics["val"]["loss"], before_adaptation=float(best["val_acc"]),
                   adapted=adaptation_label(adapted))
    return out


def blackout_evidence(run: Run, bagnet: str = "bagnet33") -> dict:
    """Per-image numbers behind Table 1 and the verdicts, recomputed from the run's logit cache.

    For every blackout row: per-mask accuracies and the per-image (accuracy over masks) − (all kept)
    differences; for the drop curve, per image at each fraction: loss increase and accuracy drop under random patch
    masks (`mean` and `zero`) and under the paper's random channel masks (zeroed `fc.weight` columns), each next to
    its subsampling null (`blackout.nulls`), and the temperature null of `zero`. The masks are the ones
    `blackout_step` used (same seeds); the channel curve uses the drop curve's seeds.
    """
    cache = LogitCache.load(run.run_dir / "cache" / f"{bagnet}_test_logits.pt")
    seeds, curve_seeds = mask_seeds(run)
    labels = cache.labels
    full_logits = cache.patch_logits.float().mean(dim=(2, 3))
    full = correct(full_logits, labels).numpy()
    full_nll = nll(full_logits, labels).numpy()
    rows = {}
    for label, reading, kind, frac, _ in BLACKOUT_ROWS:
        if reading == "patch":
            right = per_image_scores(cache, kind, [frac], seeds if kind == "random" else [0])[0][0].numpy()
        else:
            right = channel_per_image(cache, kind, frac, seeds).numpy()
        rows[(reading, kind, frac)] = right  # [M, N]
    curve_fracs = np.array([f for f in CURVE_FRACS if f > 0])
    c_mean, n_mean = per_image_scores(cache, "random", curve_fracs, curve_seeds, "mean")
    _, n_zero = per_image_scores(cache, "random", curve_fracs, curve_seeds, "zero")
    temp = np.array([cross_entropy((1 - f) * full_logits.double(), labels) for f in curve_fracs]) - full_nll.mean()
    null_right, null_loss = subsampling_null(bag_members(cache.patch_logits), labels, curve_fracs, seed=run.seed)
    ch_logits = channel_masked_logits(cache, torch.ones(cache.features.shape[1]))
    ch_full, ch_full_nll = correct(ch_logits, labels).double().numpy(), nll(ch_logits, labels).numpy()
    ch_right, ch_loss = channel_scores(cache, "random", curve_fracs, curve_seeds)
    ch_null_right, ch_null_loss = subsampling_null(channel_members(cache.features, cache.fc_weight), labels,
                                                   curve_fracs, bias=cache.fc_bias, aggregation="zero", seed=run.seed)
    return {"full": full, "full_nll": full_nll, "rows": rows, "curve_fracs": curve_fracs,
            "loss_mean": n_mean.double().mean(1).numpy() - full_nll, "loss_zero": n_zero.double().mean(1).numpy() - full_nll,
            "acc_drop": full - c_mean.double().mean(1).numpy(), "temperature_null": temp,
            "null_loss_mean": null_loss - full_nll, "null_acc_drop": full - null_right,
            "channel_loss": ch_loss.double().mean(1).numpy() - ch_full_nll,
            "channel_acc_drop": ch_full - ch_right.double().mean(1).numpy(),
            "channel_null_loss": ch_null_loss - ch_full_nll, "channel_null_acc_drop": ch_full - ch_null_right,
            "channels": int(cache.features.shape[1])}


def table1_rows(run: Run, metrics: dict, evidence: dict, blackout: list[dict] = (), bagnet: str = "bagnet33") -> list[dict]:
    """Table 1 as data: this run next to the paper, one row per setting and reading, intervals by method.

    The paper's columns are always its BagNet-33 (it trained no other BagNet)."""
    out = []
    for m, paper_m in (("resnet50", "resnet50"), (bagnet, "bagnet33")):
        label, bv, t = model_label(m), _best_val(run, m, metrics[m]), metrics[m]["test"]
        how = f"best validation epoch, {bv['epoch']}" + (f"; {bv['adapted']}" if bv.get("adapted") else "")
        out.append({"setting": f"{label} ({how})", "reading": "model",
                    "acc": bv["acc"], "loss": bv["loss"], "paper_acc": PAPER_TABLE1[paper_m]["train"]["acc"],
                    "paper_loss": PAPER_TABLE1[paper_m]["train"]["loss"], "split": "val"})
        out.append({"setting": label, "reading": "model", "acc": t["acc"], "acc_ci": t["acc_ci"], "loss": t["loss"],
                    "paper_acc": PAPER_TABLE1[paper_m]["test"]["acc"], "paper_loss": PAPER_TABLE1[paper_m]["test"]["loss"],
                    "split": "test"})
    full = evidence["full"].astype(float)
    for label, reading, kind, frac, paper in BLACKOUT_ROWS:
        correct = evidence["rows"][(reading, kind, frac)].astype(float)  # [M, N]
        per_mask = correct.mean(axis=1)
        diff = correct.mean(axis=0) - full
        entry = find(blackout, kind if reading == "patch" else f"channel_{kind}", frac, model=bagnet)
        out.append({"setting": f"{model_label(bagnet)}, {label}", "reading": reading, "kind": kind, "drop_frac": frac,
                    "acc": float(per_mask.mean()), "n_masks": int(len(per_mask)),
                    **({"loss": float(entry["loss_mean"])} if entry else {}),
                    "mask_spread": list(spread(per_mask)) if len(per_mask) > 1 else None,
                    "diff": float(diff.mean()), "diff_ci": list(bootstrap_ci(diff)),
                    "paper_acc": PAPER_TABLE1[paper]["acc"], "paper_loss": PAPER_TABLE1[paper]["loss"],
                    "split": "test"})
    return out


def _seed_changes(seed_study: dict | None, column: str) -> dict[int, float] | None:
    """One number per training seed of the seed study (a seeds.csv column), or None without a study."""
    if not seed_study:
        return None
    return {int(r["seed"]): float(r[column]) for r in seed_study["rows"] if column in r and np.isfinite(float(r[column]))}


def build_verdicts(run: Run, evidence: dict, predictions: dict[str, pd.DataFrame], bagnet: str = "bagnet33",
                   seed_study: dict | None = None) -> list[dict]:
    """Each claim of the paper, in each reading that applies (see `verdicts`); claims (a) and (c) cite the seed
    study's spread when there is one."""
    merged = predictions["resnet50"].merge(predictions[bagnet], on="path", suffixes=("_r", "_b"))
    pretrained = run.profile.pretrained
    out = [V.claim_a(merged["correct_r"].to_numpy(), merged["correct_b"].to_numpy(), pretrained, bagnet,
                     seed_gaps=_seed_changes(seed_study, "gap"))]
    rows = evidence["rows"]
    r50 = {reading: rows[(reading, "random", 0.5)].mean(axis=1) for reading in ("patch", "channel")}
    out.append(V.claim_b({"checkerboard": float(rows[("patch", "checkerboard", 0.5)].mean()),
                          "raster": float(rows[("patch", "raster", 0.5)].mean())}, r50["patch"], "patch"))
    out.append(V.claim_b({"channel index parity": float(rows[("channel", "alternating", 0.5)].mean())},
                         r50["channel"], "channel"))
    for reading in ("patch", "channel"):
        out.append(V.claim_c(evidence["full"], rows[(reading, "random", 0.25)], reading,
                             seed_changes=_seed_changes(seed_study, f"{reading}_random25_change"),
                             channels=evidence["channels"], pretrained=pretrained))
    fracs = evidence["curve_fracs"]
    half = int(np.argmin(np.abs(fracs - 0.5)))
    zero_half = float(evidence["loss_zero"][half].mean())
    share = float(evidence["temperature_null"][half] / zero_half) if zero_half > 0 else float("nan")
    out.append(V.claim_d(fracs, evidence["loss_mean"], evidence["null_loss_mean"], "patch", "loss",
                         temperature_share=share, loss_fit=V._bootstrap_fit(fracs, evidence["loss_mean"])))
    out.append(V.claim_d(fracs, evidence["acc_drop"], evidence["null_acc_drop"], "patch", "accuracy"))
    out.append(V.claim_d(fracs, evidence["channel_loss"], evidence["channel_null_loss"], "channel", "loss"))
    out.append(V.claim_d(fracs, evidence["channel_acc_drop"], evidence["channel_null_acc_drop"], "channel", "accuracy"))
    frontier = frontier_data(run)
    if frontier is not None:
        points, correct, costs = frontier
        out.append(V.claim_e(points, correct, costs, bagnet, within=True))
        out.append(V.claim_e(points, correct, costs, bagnet))
    return out


def frontier_data(run: Run) -> tuple[list[dict], dict, dict] | None:
    """The accuracy–compute points of notebook 04 (results/frontier.csv), their per-image correctness and costs."""
    path = run.results / "frontier.csv"
    if not path.is_file():
        return None
    points = pd.read_csv(path).to_dict("records")
    correct = {int(k): v.numpy() for k, v in torch.load(run.run_dir / "cache" / "frontier_correct.pt",
                                                        weights_only=True).items()}
    return points, correct, json.loads((run.results / "frontier_costs.json").read_text())


def leakage_note(run: Run) -> str | None:
    """One paragraph on duplicates that cross the paper's split (results/leakage.csv from notebook 01)."""
    path = run.results / "leakage.csv"
    if not path.is_file():
        return None
    df = pd.read_csv(path)
    paper = df[df["split"].str.startswith("paper")]
    row = (paper if not paper.empty else df[df["split"] == "this run"]).iloc[0]
    return (f"Leakage: in {row['split']}, {int(row['duplicate_groups_across_splits'])} groups of identical or "
            f"near-identical photos span more than one split ({int(row['groups_in_train_and_test'])} of them train "
            f"and test), and {int(row['label_conflict_files_used'])} images are photos filed under two classes "
            "(their label is unknowable). Both inflate or blur test accuracy a little; notebook 01 lists them, and "
            "this project's own split (`data split`) keeps duplicates together and leaves conflicts out.")


def run_setting(run: Run, bagnet: str) -> dict:
    """What this run did, next to what the paper did: the first section of the write-up."""
    p = run.profile
    geometry = build_model(bagnet, len(run.classes), width=p.width).geometry
    grid = geometry.grid_size(p.image_size, p.image_size)
    split = json.loads((run.run_dir / "run.json").read_text()).get("manifest")
    return {"pretrained": p.pretrained, "feature_extract": p.feature_extract, "image_size": p.image_size,
            "train_crop": {m: p.for_model(m).train_crop for m in ("resnet50", bagnet)},
            "crop_scale": {m: [p.for_model(m).crop_scale_min, p.for_model(m).crop_scale_max] for m in ("resnet50", bagnet)},
            "adaptation": {m: adaptation_label({"bn": p.for_model(m).adapt_bn, "epochs": p.for_model(m).adapt_epochs,
                                                "image_size": p.image_size}) or None for m in ("resnet50", bagnet)},
            "width": p.width, "epochs": {m: p.for_model(m).epochs for m in ("resnet50", bagnet)},
            "precision": p.precision, "grid": list(grid), "window_px": geometry.size,
            "split": "the paper's split (its manifest)" if split else "this project's split (duplicate-aware, seeded)",
            "n_train": int((run.split["split"] == "train").sum()), "n_val": int((run.split["split"] == "val").sum()),
            "n_test": int((run.split["split"] == "test").sum())}


def build_summary(run: Run, bagnet: str | None = None) -> dict:
    """The summary of a run: Table 1 numbers, every blackout setting, the frontier, the verdicts."""
    bagnet = run.bagnet(bagnet)
    models = ("resnet50", bagnet)
    metrics = {m: json.loads((run.results / f"{m}_metrics.json").read_text()) for m in models}
    runs = blackout_runs(run)
    runs = runs[runs["model"].isin(models)]
    summary: dict = {"profile": run.profile.name, "bagnet": bagnet, "pretrained": run.profile.pretrained,
                     "synthetic_data": run.synthetic, "data_dir": display_path(run.data_dir),
                     "seed": run.seed, "n_test": metrics[bagnet]["test"]["n"], "setting": run_setting(run, bagnet)}
    for m, v in metrics.items():
        summary[m] = {"train": {k: v["train"][k] for k in ("acc", "loss")},
                      "best_val": _best_val(run, m, v),
                      "test": {k: v["test"][k] for k in ("acc", "loss", "acc_ci", "loss_ci")},
                      "best_epoch": v["best_epoch"], "train_seconds": v["train_seconds"]}
    summary["blackout"] = blackout_summary(runs)
    summary["drop_curve"] = drop_curve_summary(runs)
    evidence = blackout_evidence(run, bagnet)
    summary["table1"] = table1_rows(run, metrics, evidence, summary["blackout"], bagnet)
    predictions = {m: pd.read_csv(run.results / f"{m}_test_predictions.csv") for m in models}
    seed_study = seeds_summary(run.run_dir, {"seed": run.seed, "resnet50_test_acc": metrics["resnet50"]["test"]["acc"],
                                             "bagnet_test_acc": metrics[bagnet]["test"]["acc"]})  # `make seeds`
    summary["verdicts"] = build_verdicts(run, evidence, predictions, bagnet, seed_study)
    frontier = frontier_data(run)
    if frontier is not None:
        summary["frontier"], summary["frontier_costs"] = frontier[0], frontier[2]
    summary["leakage"] = leakage_note(run)
    summary["pixel"] = pixel_tiles(run, bagnet)
    if seed_study is not None:
        summary["seeds"] = seed_study
    return summary


def write_summary(run: Run, bagnet: str | None = None) -> dict:
    """Write results/summary.json (this module is its only writer) and return it. Introduced in notebook 05."""
    summary = build_summary(run, bagnet)
    write_json(run.results / "summary.json", summary)
    return summary
