"""The write-up (notebook 05): results/summary.json, one verdict per claim of the paper, REPORT.md.

Everything here is read from the run directory; no number is typed in except the paper's own
(Table 1 as printed, see ../shared/paper/README.md).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import verdicts as V
from .experiments import summarize_sweep
from .io import write_json, write_text
from .pipeline import CURVE_FRACS, PAPER_FRACS, Run, mask_seeds, pixel_tiles
from .stats import bootstrap_ci, spread

PAPER_TABLE1 = {  # as printed in the paper (test; train where given)
    "resnet50": {"train": {"acc": 0.9211, "loss": 0.2517}, "test": {"acc": 0.9093, "loss": 0.2847}},
    "bagnet33": {"train": {"acc": 0.9288, "loss": 0.2799}, "test": {"acc": 0.8821, "loss": 0.3745}},
    "alternating": {"acc": 0.8293, "loss": 0.5761},
    "random 25%": {"acc": 0.8827, "loss": 0.4123},
    "random 50%": {"acc": 0.8327, "loss": 0.5445},
    "random 75%": {"acc": 0.8327, "loss": 0.5445},  # identical to the 50 % column: most likely a copy error
}
PAPER_POINTS = {0.5: (0.8327, 0.5445), 0.25: (0.8827, 0.4123), 0.75: (0.8327, 0.5445)}  # for the drop-curve figure
FIGURE_CAPTIONS = {
    "01_split_counts.png": "Images per class and split (the paper's Fig. 1).",
    "01_samples.png": "Example images of each class.",
    "01_image_sizes.png": "Image sizes before resizing.",
    "01_augmentation.png": "One training image: the eval view and training augmentations.",
    "02_resnet50_confusion.png": "ResNet-50 confusion matrix on the test split.",
    "02_resnet50_gradcam.png": "ResNet-50 Grad-CAM of its most confident mistakes.",
    "03_bagnet33_confusion.png": "BagNet-33 confusion matrix on the test split.",
    "03_bagnet33_gradcam.png": "BagNet-33 Grad-CAM of its most confident mistakes.",
    "03_bagnet33_receptive_field.png": "The 33×33 px window of one BagNet-33 logit and the stride-8 grid.",
    "04_aggregations.png": "Aggregations other than the mean under random blackout.",
    "04_explorer.png": "A snapshot of the interactive blackout explorer.",
    "02_resnet50_history.png": "ResNet-50 learning curves.",
    "03_bagnet33_history.png": "BagNet-33 learning curves.",
    "03_bagnet33_evidence.png": "BagNet-33 patch evidence for test images (true and predicted class), next to ResNet-50's Grad-CAM.",
    "04_blackout_masks.png": "The paper's four blackout settings on one test image (the paper's Fig. 4).",
    "04_drop_curve.png": "Accuracy and cross-entropy vs the fraction of patches dropped, `mean` vs `zero` aggregation.",
    "04_blackout_kinds.png": "Patch-logit blackout (the paper's text) vs channel masking (the paper's code) vs pixel blackout.",
    "04_frontier.png": "Test accuracy against forward GFLOPs per image: kept patches, anytime stopping, fewer pixels, ResNet-50.",
    "04_structured.png": "Centre vs border, most vs least confident patches (the latter an oracle: ranked by the full-image prediction).",
}


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


STRUCTURED_ROWS = (("center", "keep the centre, drop the outer ring"), ("border", "keep the border, drop the centre"),
                   ("topk", "keep the most confident patches (an oracle: ranked by the full-image prediction)"),
                   ("bottomk", "keep the least confident patches (likewise an oracle)"),
                   ("random", "random (30+ masks, for reference)"))


def structured_table(blackout: list[dict]) -> list[str]:
    """Markdown rows of the structured-mask experiment (BagNet-33, `mean` aggregation) at 25/50/75 % dropped."""
    lines = ["| patches dropped by | 25% | 50% | 75% |", "| --- | --- | --- | --- |"]
    for kind, label in STRUCTURED_ROWS:
        cells = [find(blackout, kind, frac) for frac in (0.25, 0.5, 0.75)]
        lines.append(f"| {label} | " + " | ".join(f"{b['acc_mean']:.3f} (loss {b['loss_mean']:.3f})" if b else "–"
                                                 for b in cells) + " |")
    return lines


def drop_curve_table(curve: list[dict], fracs=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)) -> list[str]:
    """Markdown rows of the drop curve at a few fractions, `mean` next to `zero` aggregation."""
    by = {(round(c["drop_frac"], 6), c["aggregation"]): c for c in curve if c["model"] == "bagnet33"}
    lines = ["| dropped | masks | acc, `mean` [95% of masks in] | loss, `mean` | acc, `zero` | loss, `zero` |",
             "| --- | --- | --- | --- | --- | --- |"]
    for f in fracs:
        m, z = by.get((round(f, 6), "mean")), by.get((round(f, 6), "zero"))
        if m and z:
            lines.append(f"| {100 * f:.0f}% | {m['n_masks']} | {m['acc_mean']:.3f} [{m['acc_spread'][0]:.3f}, "
                         f"{m['acc_spread'][1]:.3f}] | {m['loss_mean']:.3f} | {z['acc_mean']:.3f} | {z['loss_mean']:.3f} |")
    return lines


def find(blackout: list[dict], kind: str, frac: float, agg: str = "mean", model: str = "bagnet33") -> dict | None:
    """The summary entry of one setting, or None."""
    for b in blackout:
        if b["kind"] == kind and abs(b["drop_frac"] - frac) < 1e-9 and b["aggregation"] == agg and b["model"] == model:
            return b
    return None


def paired_accuracy_difference(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    """Accuracy of `b` minus `a` on the same test images (by path), with a paired image-bootstrap 95 % interval."""
    merged = a.merge(b, on="path", suffixes=("_a", "_b"))
    diff = merged["correct_b"].astype(float).to_numpy() - merged["correct_a"].astype(float).to_numpy()
    return {"diff": float(diff.mean()), "ci": list(bootstrap_ci(diff)), "n": int(len(diff))}


# The rows of Table 1 that involve blackout: (label, reading, kind, fraction, the paper's column).
BLACKOUT_ROWS = (
    ("alternating: checkerboard (spatial)", "patch", "checkerboard", 0.5, "alternating"),
    ("alternating: raster (a spatial analogue of the code's index parity)", "patch", "raster", 0.5, "alternating"),
    ("alternating: channel index parity (the paper's code)", "channel", "alternating", 0.5, "alternating"),
    *((f"random {int(100 * f)}%", reading, "random", f, f"random {int(100 * f)}%")
      for f in PAPER_FRACS for reading in ("patch", "channel")),
)


def _best_val(run: Run, model: str) -> dict:
    """The best validation epoch's accuracy and loss (what the paper printed as "train")."""
    hist = pd.read_csv(run.results / f"{model}_history.csv")
    best = hist.loc[hist["val_acc"].idxmax()]
    return {"epoch": int(best["epoch"]), "acc": float(best["val_acc"]), "loss": float(best["val_loss"])}


def blackout_evidence(run: Run, bagnet: str = "bagnet33") -> dict:
    """Per-image numbers behind Table 1 and the verdicts, recomputed from the run's logit cache.

    For every blackout row: per-mask accuracies and the per-image (accuracy over masks) − (all kept)
    differences; for the drop curve: per-image loss and accuracy increases at each fraction, `mean` and
    `zero`, and the temperature null of `zero`. The masks are the ones `blackout_step` used (same seeds).
    """
    import torch

    from .experiments import LogitCache, channel_per_image, per_image_scores

    cache = LogitCache.load(run.run_dir / "cache" / f"{bagnet}_test_logits.pt")
    seeds, curve_seeds = mask_seeds(run)
    full_logits = cache.patch_logits.float().mean(dim=(2, 3))
    full = (full_logits.argmax(-1) == cache.labels).numpy()
    full_nll = torch.nn.functional.cross_entropy(full_logits.double(), cache.labels, reduction="none").numpy()
    rows = {}
    for label, reading, kind, frac, _ in BLACKOUT_ROWS:
        if reading == "patch":
            correct = per_image_scores(cache, kind, [frac], seeds if kind == "random" else [0])[0][0].numpy()
        else:
            correct = channel_per_image(cache, kind, frac, seeds).numpy()
        rows[(reading, kind, frac)] = correct  # [M, N]
    curve_fracs = np.array([f for f in CURVE_FRACS if f > 0])
    c_mean, n_mean = per_image_scores(cache, "random", curve_fracs, curve_seeds, "mean")
    _, n_zero = per_image_scores(cache, "random", curve_fracs, curve_seeds, "zero")
    temp = np.array([float(torch.nn.functional.cross_entropy((1 - f) * full_logits.double(), cache.labels))
                     for f in curve_fracs]) - full_nll.mean()
    return {"full": full, "full_nll": full_nll, "rows": rows, "curve_fracs": curve_fracs,
            "loss_mean": n_mean.double().mean(1).numpy() - full_nll, "loss_zero": n_zero.double().mean(1).numpy() - full_nll,
            "acc_drop": full - c_mean.double().mean(1).numpy(), "temperature_null": temp}


def table1_rows(run: Run, metrics: dict, evidence: dict, blackout: list[dict] = ()) -> list[dict]:
    """Table 1 as data: this run next to the paper, one row per setting and reading, intervals by method."""
    out = []
    for m, label in (("resnet50", "ResNet-50"), ("bagnet33", "BagNet-33")):
        bv, t = _best_val(run, m), metrics[m]["test"]
        out.append({"setting": f"{label} (best validation epoch, {bv['epoch']})", "reading": "model",
                    "acc": bv["acc"], "loss": bv["loss"], "paper_acc": PAPER_TABLE1[m]["train"]["acc"],
                    "paper_loss": PAPER_TABLE1[m]["train"]["loss"], "split": "val"})
        out.append({"setting": label, "reading": "model", "acc": t["acc"], "acc_ci": t["acc_ci"], "loss": t["loss"],
                    "paper_acc": PAPER_TABLE1[m]["test"]["acc"], "paper_loss": PAPER_TABLE1[m]["test"]["loss"],
                    "split": "test"})
    full = evidence["full"].astype(float)
    for label, reading, kind, frac, paper in BLACKOUT_ROWS:
        correct = evidence["rows"][(reading, kind, frac)].astype(float)  # [M, N]
        per_mask = correct.mean(axis=1)
        diff = correct.mean(axis=0) - full
        entry = find(blackout, kind if reading == "patch" else f"channel_{kind}", frac)
        out.append({"setting": f"BagNet-33, {label}", "reading": reading, "kind": kind, "drop_frac": frac,
                    "acc": float(per_mask.mean()), "n_masks": int(len(per_mask)),
                    **({"loss": float(entry["loss_mean"])} if entry else {}),
                    "mask_spread": list(spread(per_mask)) if len(per_mask) > 1 else None,
                    "diff": float(diff.mean()), "diff_ci": list(bootstrap_ci(diff)),
                    "paper_acc": PAPER_TABLE1[paper]["acc"], "paper_loss": PAPER_TABLE1[paper]["loss"],
                    "split": "test"})
    return out


def build_verdicts(run: Run, evidence: dict, predictions: dict[str, pd.DataFrame], bagnet: str = "bagnet33") -> list[dict]:
    """Each claim of the paper, in each reading that applies (see `verdicts`)."""
    merged = predictions["resnet50"].merge(predictions[bagnet], on="path", suffixes=("_r", "_b"))
    out = [V.claim_a(merged["correct_r"].to_numpy(), merged["correct_b"].to_numpy(), run.profile.pretrained)]
    rows = evidence["rows"]
    r50 = {reading: rows[(reading, "random", 0.5)].mean(axis=1) for reading in ("patch", "channel")}
    out.append(V.claim_b({"checkerboard": float(rows[("patch", "checkerboard", 0.5)].mean()),
                          "raster": float(rows[("patch", "raster", 0.5)].mean())}, r50["patch"], "patch"))
    out.append(V.claim_b({"channel index parity": float(rows[("channel", "alternating", 0.5)].mean())},
                         r50["channel"], "channel"))
    for reading in ("patch", "channel"):
        out.append(V.claim_c(evidence["full"], rows[(reading, "random", 0.25)], reading))
    out.append(V.claim_d(evidence["curve_fracs"], evidence["loss_mean"], evidence["loss_zero"],
                         evidence["temperature_null"], evidence["acc_drop"]))
    frontier = frontier_data(run)
    if frontier is not None:
        points, correct, costs = frontier
        out.append(V.claim_e(points, correct, costs, bagnet))
    return out


def frontier_data(run: Run) -> tuple[list[dict], dict, dict] | None:
    """The accuracy–compute points of notebook 04 (results/frontier.csv), their per-image correctness and costs."""
    import torch

    path = run.results / "frontier.csv"
    if not path.is_file():
        return None
    points = pd.read_csv(path).to_dict("records")
    correct = {int(k): v.numpy() for k, v in torch.load(run.run_dir / "cache" / "frontier_correct.pt",
                                                        weights_only=True).items()}
    return points, correct, json.loads((run.results / "frontier_costs.json").read_text())


def frontier_table(points: list[dict]) -> list[str]:
    """Markdown rows of the Pareto-optimal points (fewest GFLOPs for their accuracy), cheapest first."""
    front = sorted((p for p in points if p.get("pareto")), key=lambda p: p["gflops_per_image"])
    lines = ["| model | method | parameter | GFLOPs per image | accuracy [95% CI, bootstrap over test images] |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {p['model']} | {p['method']} | {p['parameter']} | {p['gflops_per_image']:.3f} | {p['acc']:.3f} "
              f"[{p['acc_ci_low']:.3f}, {p['acc_ci_high']:.3f}] |" for p in front]
    return lines


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


def build_summary(run: Run, minutes: float | None = None) -> dict:
    """results/summary.json: Table 1 numbers, every blackout setting, the verdicts."""
    metrics = {m: json.loads((run.results / f"{m}_metrics.json").read_text()) for m in ("resnet50", "bagnet33")}
    runs = pd.read_csv(run.results / "blackout_runs.csv")
    timings_path = run.results / "timings.json"  # written by the runner after each notebook
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    if minutes is None and timings:
        minutes = sum(timings.values()) / 60
    summary: dict = {"profile": run.profile.name, "pretrained": run.profile.pretrained,
                     "synthetic_data": run.synthetic, "data_dir": display_path(run.data_dir),
                     "seed": run.seed, "n_test": metrics["bagnet33"]["test"]["n"], "minutes": minutes,
                     "notebook_seconds": timings}
    for m, v in metrics.items():
        summary[m] = {"train": {k: v["train"][k] for k in ("acc", "loss")},
                      "best_val": _best_val(run, m),
                      "test": {k: v["test"][k] for k in ("acc", "loss", "acc_ci", "loss_ci")},
                      "best_epoch": v["best_epoch"], "train_seconds": v["train_seconds"]}
    summary["blackout"] = blackout_summary(runs)
    summary["drop_curve"] = drop_curve_summary(runs)
    evidence = blackout_evidence(run)
    summary["table1"] = table1_rows(run, metrics, evidence, summary["blackout"])
    predictions = {m: pd.read_csv(run.results / f"{m}_test_predictions.csv") for m in ("resnet50", "bagnet33")}
    summary["verdicts"] = build_verdicts(run, evidence, predictions)
    frontier = frontier_data(run)
    if frontier is not None:
        summary["frontier"], summary["frontier_costs"] = frontier[0], frontier[2]
    summary["leakage"] = leakage_note(run)
    summary["pixel"] = pixel_tiles(run)
    return summary


def display_path(path: str | Path) -> str:
    """A path as published: relative to the repository when inside it, `$BAGNET_DATA` when it is that, else its name."""
    import os

    from .data.folder import PROJECT_ROOT

    path = Path(path).resolve()
    env = os.environ.get("BAGNET_DATA")
    if env and Path(env).resolve() == path:
        return "$BAGNET_DATA"
    for base, prefix in ((PROJECT_ROOT, ""), (PROJECT_ROOT.parent, "../")):
        try:
            return prefix + path.relative_to(base.resolve()).as_posix()
        except ValueError:
            continue
    return f"<{path.name}>"


def _fmt_ci(ci, signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    return "[" + ", ".join(f.format(v) for v in ci) + "]" if ci else "–"


def table1(summary: dict) -> list[str]:
    """Markdown rows of Table 1: this run next to the paper, every interval named by its method."""
    lines = ["| setting | reading | this run: acc | 95% CI, bootstrap over test images | 95% of masks in | "
             "masked − all kept [95% CI, paired image bootstrap] | this run: loss | paper: acc | paper: loss |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in summary.get("table1", []):
        masks = (_fmt_ci(r["mask_spread"]) + f" ({r['n_masks']} masks)") if r.get("mask_spread") else (
            "1 mask" if r.get("n_masks") == 1 else "–")
        diff = f"{r['diff']:+.3f} {_fmt_ci(r['diff_ci'], True)}" if "diff" in r else "–"
        loss = f"{r['loss']:.3f}" if "loss" in r else "–"
        lines.append(f"| {r['setting']} | {r['reading']} | {r['acc']:.3f} | {_fmt_ci(r.get('acc_ci'))} | {masks} | "
                     f"{diff} | {loss} | {r['paper_acc']:.4f} | {r['paper_loss']:.4f} |")
    return lines


def verdict_lines(summary: dict) -> list[str]:
    """One Markdown bullet per verdict: claim, reading, verdict, evidence, caveat."""
    out = []
    for v in summary.get("verdicts", []):
        caveat = f" *Caveat:* {v['caveat']}." if v.get("caveat") else ""
        out.append(f"- **{v['claim']}** — reading `{v['reading']}`: **{v['verdict']}**. {v['evidence']}.{caveat}")
    return out


def render_report(summary: dict, figures: list[str] = (), figure_dir: str = "figures") -> str:
    """REPORT.md: Table 1 next to the paper, blackout tables, verdicts, figures."""
    synthetic = summary["synthetic_data"]
    lines = ["# BagNet blackout: reproduction report" + (" — SYNTHETIC-DATA RUN (not the flowers)" if synthetic else ""), ""]
    minutes = (f" Wall time of notebooks before this report: {summary['minutes']:.1f} min."
               if summary.get("minutes") else "")
    lines += [f"Profile `{summary['profile']}`, seed {summary['seed']}, data `{summary['data_dir']}`, "
              f"{summary['n_test']} test images.{minutes}", ""]
    if synthetic:
        lines += ["> **These numbers come from the embedded synthetic dataset** (no real flowers were found). "
                  "They exercise the pipeline and say nothing about the paper's claims.", ""]
    if summary["profile"] != "paper":
        lines += ["> Trained **from scratch** (profile settings in `bagnet_lib/profiles.py`); the paper fine-tuned the "
                  "last layer of ImageNet-pretrained networks, so absolute numbers are not expected to match.", ""]
    lines += ["## Table 1: test accuracy / cross-entropy", ""] + table1(summary)
    lines += ["", "Reading `model`: no blackout; `patch`: patch logits dropped before the mean (the paper's text; "
              "`mean` aggregation); `channel`: columns of `fc.weight` zeroed (the paper's code, which has no spatial "
              "grid: its alternating is index parity over channels; checkerboard and raster are this project's "
              "spatial analogues). The paper's \"train\" numbers are its best validation epoch (its logs say so), "
              "so they stand next to this run's best validation epoch. Intervals: a model's accuracy by a percentile "
              "bootstrap over test images; blackout rows show where 95 % of the random masks lie, and the paired "
              "image-bootstrap interval of (accuracy averaged over the masks) − (all patches kept). The paper's "
              "random 75% column repeats its 50% column (most likely a copy error); its Table 1 cannot be traced to "
              "one published run.", ""]
    if summary.get("leakage"):
        lines += [summary["leakage"], ""]
    lines += ["## Three meanings of blackout at 25 / 50 / 75 % dropped", "",
              "Test accuracy, mean over masks (pixel blackout: over seeds), and in brackets the change from the same "
              "model with nothing dropped: the models start from different accuracies, so compare the changes."]
    px = summary.get("pixel")
    if px:
        lines += ["", f"Pixel blackout paints out {px['tile_px']}×{px['tile_px']} px tiles, one per stride cell of the "
                  f"BagNet's patch grid ({px['grid'][0]}×{px['grid'][1]} tiles), with {px['fill']}, a new random "
                  f"choice per image. A {px['window_px']} px window covers {px['tiles_per_window']} tiles and an interior "
                  f"tile lies in {px['windows_per_tile']} windows, so at 25 % of tiles dropped only about "
                  f"{100 * 0.75 ** px['tiles_per_window']:.1f} % of the windows stay untouched: this removes "
                  "information from most patches at once, unlike dropping 25 % of the patch logits."]
    lines += ["", "| blackout | model | aggregation | 25% | 50% | 75% |", "| --- | --- | --- | --- | --- | --- |"]
    for kind, model, agg, label in (("random", "bagnet33", "mean", "patch logits, left out of the mean (paper's text)"),
                                    ("random", "bagnet33", "zero", "patch logits, set to 0 (literal reading)"),
                                    ("channel_random", "bagnet33", "mean", "fc.weight columns zeroed (paper's code)"),
                                    ("pixel", "bagnet33", "model", "image tiles painted grey"),
                                    ("pixel", "resnet50", "model", "image tiles painted grey")):
        cells = []
        base = summary[model]["test"]["acc"]
        for frac in (0.25, 0.5, 0.75):
            b = find(summary["blackout"], kind, frac, agg, model)
            cells.append(f"{b['acc_mean']:.3f} ({b['acc_mean'] - base:+.3f})" if b else "–")
        lines.append(f"| {label} | {model} | {agg} | " + " | ".join(cells) + " |")
    if summary.get("drop_curve"):
        lines += ["", "## The drop curve (BagNet-33, random patch masks)", "",
                  "Each row: the same random masks scored with the dropped patch logits left out of the mean (`mean`) "
                  "and set to 0 (`zero`); the bracket is where 95 % of the masks lie. The full curve (every 5 %) is in "
                  "`results/<profile>/summary.json` and the drop-curve figure.", ""]
        lines += drop_curve_table(summary["drop_curve"])
    lines += ["", "## Structured masks (BagNet-33, patch logits, `mean` aggregation; test accuracy)", "",
              "Patches dropped by position or by confidence, next to random "
              "masks at the same fraction.", ""]
    lines += structured_table(summary["blackout"])
    if summary.get("frontier"):
        c = summary["frontier_costs"]
        lines += ["", "## What could blackout save? Accuracy against compute", "",
                  f"Forward FLOPs per image (FlopCounterMode: convolutions and matrix products) at {c['image_size']} px: "
                  f"dense {c['bagnet']} {c['bagnet_gflops']:.3f} GFLOPs, one of its {c['n_patches']} patches computed "
                  f"alone {c['bagnet_gflops_per_patch']:.4f} GFLOPs, so computing only the kept patches is cheaper "
                  f"below {100 * min(c['break_even_keep_frac'], 1):.0f} % kept; ResNet-50 {c['resnet_gflops']:.3f} "
                  f"GFLOPs. Training: {c['bagnet_epoch_s']:.0f} s ({c['bagnet']}) vs {c['resnet_epoch_s']:.0f} s "
                  "(ResNet-50) per epoch (median). Kept-patch accuracies come from the logit cache (the same numbers a "
                  f"sparse pass computes: checked on test images, largest difference {c['sparse_check_max_abs_diff']:.1e}); "
                  "anytime stops an image once the running mean's top-1 margin reaches the threshold. The points no "
                  "other point beats (fewer GFLOPs and higher accuracy); every point is in `results/frontier.csv`:", ""]
        lines += frontier_table(summary["frontier"])
    lines += ["", "## Verdicts on the paper's claims", "",
              "One verdict per claim and reading (`model`: no blackout; `patch`: the text's reading; `channel`: "
              "the code's reading).", ""]
    lines += verdict_lines(summary)
    lines += ["", "Caveats: one training run per model (seed above); the test split's size bounds every interval; "
              "no interval here covers a second training run.", ""]
    if figures:
        lines += ["## Figures", ""]
        for name in figures:
            caption = FIGURE_CAPTIONS.get(name, name.removesuffix(".png").replace("_", " "))
            lines += [f"![{caption}]({figure_dir}/{name})", "", f"*{caption}*", ""]
    return "\n".join(lines)


def compute_section(sparse: dict | None) -> list[str]:
    """The paper's 'industrial applications' question, answered from `bench sparse` (results/bench/sparse.json)."""
    if not sparse:
        return []
    lines = ["## Could blackout save computation?", "",
             "The paper hoped that dropping patches could save compute. Dropping patch *logits* after the network "
             "(as above) saves nothing: every patch was computed. A BagNet's logit at (i, j) depends only on its "
             "own window, so dropped patches need not be computed at all (`bagnet_lib.sparse.patch_logits_at` crops "
             "and runs only the kept windows) — but the dense network shares work between overlapping windows. "
             f"Measured by `python -m bagnet_lib bench sparse` ({sparse.get('image_size')} px, width "
             f"{sparse.get('width')}), the keep fraction below which computing only the kept patches is cheaper:", "",
             "| model | break-even by FLOPs | break-even by wall time |", "| --- | --- | --- |"]
    for name, m in sparse.get("models", {}).items():
        be = m.get("break_even_keep_frac", {})
        cell = lambda v: "cheaper at every fraction" if v is None or v >= 1.0 else f"{100 * v:.0f}% kept"  # noqa: E731
        lines.append(f"| {name} | {cell(be.get('flops'))} | {cell(be.get('time'))} |")
    b33 = sparse.get("models", {}).get("bagnet33", {}).get("break_even_keep_frac", {}).get("flops")
    if b33 is not None and b33 < 1.0:
        lines += ["", f"For BagNet-33, computing only the kept patches needs fewer FLOPs only when fewer than "
                  f"{100 * b33:.0f}% of the patches are kept, i.e. when more than {100 * (1 - b33):.0f}% are blacked "
                  "out; compare the drop curve above for what accuracy is left there."]
    return lines + [""]


def write_report(run: Run, minutes: float | None = None) -> dict:
    """Write results/summary.json and REPORT.md for `run`; return the summary."""
    from .data.folder import PROJECT_ROOT

    summary = build_summary(run, minutes)
    write_json(run.results / "summary.json", summary)
    figures = sorted(p.name for p in (run.run_dir / "figures").glob("*.png"))
    sparse_path = PROJECT_ROOT / "results" / "bench" / "sparse.json"
    sparse = json.loads(sparse_path.read_text()) if sparse_path.is_file() else None
    text = render_report(summary, figures)
    if sparse:
        head, sep, tail = text.partition("## Figures")
        text = head + "\n".join(compute_section(sparse)) + "\n" + sep + tail
    write_text(run.run_dir / "REPORT.md", text)
    return summary


def report_markdown(run: Run, relative_to: str | Path = ".") -> str:
    """REPORT.md with figure links relative to `relative_to` (e.g. the notebook's folder), for display."""
    import os

    figs = os.path.relpath(run.figures, relative_to)
    return (run.run_dir / "REPORT.md").read_text().replace("](figures/", f"]({figs}/")


# --------------------------------------------------------------------------- README blocks
NOTEBOOK_LABELS = {"01_data_exploration.ipynb": "01 data", "02_train_resnet50.ipynb": "02 ResNet-50",
                   "03_train_bagnet33.ipynb": "03 BagNet-33", "04_blackout_experiments.ipynb": "04 blackout",
                   "05_writeup.ipynb": "05 write-up"}


def readme_results_block(summary: dict, profile_settings: dict) -> str:
    """The README's results section for a published run: Table 1, verdicts, the two key figures."""
    p, name = profile_settings, summary["profile"]
    minutes = f"{summary['minutes']:.1f} min" if summary.get("minutes") else "time not recorded"
    lines = [f"Reference run: profile `{name}` (from scratch: {p['image_size']} px, width {p['width']}, "
             f"{p['epochs']} epochs), the paper's split, seed {summary['seed']}, {summary['n_test']} test images; "
             f"all five notebooks took {minutes} on this project's 2-core machine. Full report with every table "
             f"and figure: [REPORT.md](REPORT.md); numbers: `results/{name}/summary.json`.", "",
             "Table 1, this run next to the paper's (the paper fine-tuned ImageNet-pretrained networks; this run "
             "trains from scratch, so absolute accuracies are not expected to match):", ""]
    lines += table1(summary)
    lines += ["", "The paper's claims, one verdict per claim and reading, each with the numbers it rests on "
              "(definitions and figures in REPORT.md):", ""]
    lines += verdict_lines(summary)
    lines += ["", f"![Accuracy and cross-entropy vs fraction of patches dropped](figures/{name}/04_drop_curve.png)", "",
              f"![The paper's four blackout settings on one test image](figures/{name}/04_blackout_masks.png)", ""]
    return "\n".join(lines)


def readme_timings_block(summary: dict) -> str:
    """One table row per notebook: the published run's wall times (the runner's timings.json)."""
    t = summary.get("notebook_seconds") or {}
    names = [n for n in NOTEBOOK_LABELS if n in t]
    if not names:
        return f"No per-notebook times were recorded for the `{summary['profile']}` run."
    return "\n".join([f"`{summary['profile']}` profile, the published run (seconds per notebook):", "",
                      "| " + " | ".join(NOTEBOOK_LABELS[n] for n in names) + " | total |",
                      "| " + " | ".join("---" for _ in names) + " | --- |",
                      "| " + " | ".join(f"{t[n]:.0f}" for n in names) + f" | {sum(t[n] for n in names) / 60:.1f} min |"])


def replace_block(text: str, name: str, content: str) -> str:
    """Replace what lies between `<!-- name:start -->` and `<!-- name:end -->` in `text`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text or text.index(start) > text.index(end):
        raise ValueError(f"README has no '{start}' … '{end}' block")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{content.strip()}\n{end}{tail}"


def update_readme(readme: str | Path, summary: dict, profile_settings: dict) -> bool:
    """Rewrite the README's `results` and `timings` blocks from a published run; False if it has none."""
    readme = Path(readme)
    text = readme.read_text()
    try:
        new = replace_block(text, "results", readme_results_block(summary, profile_settings))
        new = replace_block(new, "timings", readme_timings_block(summary))
    except ValueError:
        return False
    if new != text:
        write_text(readme, new)
    return True
