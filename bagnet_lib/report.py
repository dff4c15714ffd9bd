"""The write-up (notebook 05): results/summary.json, one verdict per claim of the paper, REPORT.md.

Everything here is read from the run directory; no number is typed in except the paper's own
(Table 1 as printed, see ../shared/paper/README.md).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .experiments import summarize_sweep
from .io import write_json, write_text
from .pipeline import Run

PAPER_TABLE1 = {  # as printed in the paper (test; train where given)
    "resnet50": {"train": {"acc": 0.9211, "loss": 0.2517}, "test": {"acc": 0.9093, "loss": 0.2847}},
    "bagnet33": {"train": {"acc": 0.9288, "loss": 0.2799}, "test": {"acc": 0.8821, "loss": 0.3745}},
    "alternating": {"acc": 0.8293, "loss": 0.5761},
    "random 25%": {"acc": 0.8827, "loss": 0.4123},
    "random 50%": {"acc": 0.8327, "loss": 0.5445},
    "random 75%": {"acc": 0.8327, "loss": 0.5445},  # identical to the 50 % column: most likely a copy error
}
PAPER_POINTS = {0.5: (0.8327, 0.5445), 0.25: (0.8827, 0.4123), 0.75: (0.8327, 0.5445)}  # for the drop-curve figure
COMPARABLE_MARGIN = 0.05  # "comparable": the 95 % interval of the accuracy difference lies within ±5 points
NO_LOSS_MARGIN = 0.01  # "without loss of accuracy": at most 1 point lower
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
    "04_structured.png": "Centre vs border, most vs least confident patches.",
}


def blackout_summary(runs: pd.DataFrame) -> list[dict]:
    """One entry per experiment/kind/fraction/aggregation/model: mean accuracy, 95 % CI over seeds, mean loss."""
    setting_of = {"checkerboard": "alternating", "raster": "alternating", "channel_alternating": "channel",
                  "channel_random": "channel"}
    out = []
    for (model, exp), g in runs.groupby(["model", "experiment"], sort=False):
        if exp == "curve":  # 20 fractions × many masks: summarised by the drop-curve figure and verdict (d)
            continue
        for row in summarize_sweep(g).to_dict("records"):
            out.append({"setting": setting_of.get(row["kind"], row["kind"]), "kind": row["kind"], "model": model,
                        "experiment": exp, "drop_frac": row["drop_frac"], "aggregation": row["aggregation"],
                        "n_seeds": row["n_seeds"], "acc_mean": row["acc_mean"], "acc_ci": row["acc_ci"],
                        "loss_mean": row["loss_mean"]})
    return out


def drop_curve_summary(runs: pd.DataFrame) -> list[dict]:
    """The drop curve (experiment `curve`): per fraction and aggregation, mean accuracy/loss and 95 % CIs."""
    out = []
    for model, g in runs[runs["experiment"] == "curve"].groupby("model", sort=True):
        for row in summarize_sweep(g).to_dict("records"):
            out.append({"model": model, "drop_frac": float(row["drop_frac"]), "aggregation": row["aggregation"],
                        "n_masks": row["n_seeds"], "acc_mean": float(row["acc_mean"]), "acc_ci": row["acc_ci"],
                        "loss_mean": float(row["loss_mean"]), "loss_ci": row["loss_ci"]})
    return out


STRUCTURED_ROWS = (("center", "keep the centre, drop the outer ring"), ("border", "keep the border, drop the centre"),
                   ("topk", "keep the most confident patches"), ("bottomk", "keep the least confident patches"),
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
    lines = ["| dropped | masks | acc, `mean` [95% CI] | loss, `mean` | acc, `zero` | loss, `zero` |",
             "| --- | --- | --- | --- | --- | --- |"]
    for f in fracs:
        m, z = by.get((round(f, 6), "mean")), by.get((round(f, 6), "zero"))
        if m and z:
            lines.append(f"| {100 * f:.0f}% | {m['n_masks']} | {m['acc_mean']:.3f} [{m['acc_ci'][0]:.3f}, "
                         f"{m['acc_ci'][1]:.3f}] | {m['loss_mean']:.3f} | {z['acc_mean']:.3f} | {z['loss_mean']:.3f} |")
    return lines


def find(blackout: list[dict], kind: str, frac: float, agg: str = "mean", model: str = "bagnet33") -> dict | None:
    """The summary entry of one setting, or None."""
    for b in blackout:
        if b["kind"] == kind and abs(b["drop_frac"] - frac) < 1e-9 and b["aggregation"] == agg and b["model"] == model:
            return b
    return None


def paired_accuracy_difference(a: pd.DataFrame, b: pd.DataFrame, n_boot: int = 4000, seed: int = 0) -> dict:
    """Accuracy of `b` minus `a` on the same test images, with a paired bootstrap 95 % interval."""
    merged = a.merge(b, on="path", suffixes=("_a", "_b"))
    diff = merged["correct_b"].astype(float).to_numpy() - merged["correct_a"].astype(float).to_numpy()
    rng = np.random.default_rng(seed)
    boots = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    return {"diff": float(diff.mean()), "ci": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))],
            "n": int(len(diff))}


def verdicts(summary: dict, runs: pd.DataFrame, predictions: dict[str, pd.DataFrame]) -> list[dict]:
    """One verdict per claim of the paper, each with the numbers it rests on."""
    out = []
    # (a) BagNet-33 is comparable to ResNet-50
    d = paired_accuracy_difference(predictions["resnet50"], predictions["bagnet33"])
    lo, hi = d["ci"]
    if -COMPARABLE_MARGIN <= lo and hi <= COMPARABLE_MARGIN:
        v = "supported"
    elif hi < -COMPARABLE_MARGIN or lo > COMPARABLE_MARGIN:
        v = "not supported"
    else:
        v = "inconclusive"
    out.append({"claim": "(a) BagNet-33 is comparable to ResNet-50", "verdict": v, "numbers": d,
                "text": f"test accuracy BagNet-33 − ResNet-50 = {d['diff']:+.3f} (paired bootstrap 95% CI "
                        f"[{lo:+.3f}, {hi:+.3f}], n={d['n']}); 'comparable' means the interval lies within "
                        f"±{COMPARABLE_MARGIN:.2f}. Paper: {PAPER_TABLE1['bagnet33']['test']['acc'] - PAPER_TABLE1['resnet50']['test']['acc']:+.3f}."
                        + ("" if summary["profile"] == "paper" else
                           " Caveat: here both networks learn from scratch on the training split with the same "
                           "epochs; the paper compared ImageNet-pretrained features with a retrained last layer, "
                           "so this tests how fast each architecture learns from few images, not the paper's setting.")})
    # (b) patch-order-agnostic: alternating ≈ random 50 %
    r50 = runs[(runs["kind"] == "random") & (runs["drop_frac"] == 0.5) & (runs["aggregation"] == "mean")
               & (runs["experiment"] == "paper")]["acc"]
    band = (float(r50.quantile(0.025)), float(r50.quantile(0.975)))
    alts = {k: find(summary["blackout"], k, 0.5)["acc_mean"] for k in ("checkerboard", "raster")}
    inside = all(band[0] <= a <= band[1] for a in alts.values())
    out.append({"claim": "(b) class inference is patch-order-agnostic (alternating ≈ random 50%)",
                "verdict": "supported" if inside else "not supported",
                "numbers": {"alternating": alts, "random50_mean": float(r50.mean()), "random50_range95": band,
                            "n_masks": int(len(r50))},
                "text": f"checkerboard {alts['checkerboard']:.3f}, raster (the paper's index parity) {alts['raster']:.3f}; "
                        f"random 50% masks: mean {r50.mean():.3f}, 95% of {len(r50)} masks in [{band[0]:.3f}, {band[1]:.3f}]. "
                        "Caveat: a BagNet ignores patch positions by construction (it averages a bag of patch logits), so "
                        "this compares two ways of choosing half of the patches; it cannot show that CNNs in general "
                        "are order-agnostic."})
    # (c) about 25 % of patches can be dropped without loss of accuracy
    full = summary["bagnet33"]["test"]["acc"]
    r25 = find(summary["blackout"], "random", 0.25)
    drop = full - r25["acc_mean"]
    v = "supported" if drop <= NO_LOSS_MARGIN else ("supported only approximately" if drop <= 3 * NO_LOSS_MARGIN
                                                   else "not supported")
    out.append({"claim": "(c) about 25% of patches can be dropped without loss of accuracy", "verdict": v,
                "numbers": {"full": full, "random25": r25["acc_mean"], "random25_ci": r25["acc_ci"], "drop": drop},
                "text": f"all patches {full:.3f} → 25% dropped {r25['acc_mean']:.3f} (95% CI over {r25['n_seeds']} masks "
                        f"[{r25['acc_ci'][0]:.3f}, {r25['acc_ci'][1]:.3f}]), a change of {-drop:+.3f}; 'without loss' "
                        f"means at most {NO_LOSS_MARGIN:.2f} lower. This removes patch *logits* after the network; "
                        "no computation is saved (see the pixel-blackout and channel rows)."})
    # (d) loss grows non-linearly with the fraction dropped
    curve = runs[runs["experiment"] == "curve"].groupby(["aggregation", "drop_frac"])["loss"].mean()
    shapes = {}
    for agg in ("mean", "zero"):
        c = curve[agg]
        x0, xm, x1 = c.index.min(), 0.5, c.index.max()
        shapes[agg] = float((c[xm] - c[x0]) / (c[x1] - c[x0])) if c[x1] != c[x0] else float("nan")
    linear = (0.5 - 0.0) / (0.95 - 0.0)
    convex = shapes["mean"] < linear - 0.1
    out.append({"claim": "(d) loss grows non-linearly with the fraction dropped",
                "verdict": "supported" if convex else "not supported",
                "numbers": {"share_of_loss_increase_at_50pct": shapes, "linear_share": linear},
                "text": f"share of the 0→95% loss increase reached at 50% dropped: {shapes['mean']:.2f} with `mean` "
                        f"aggregation, {shapes['zero']:.2f} with `zero` (a straight line would give {linear:.2f}; "
                        "smaller = accelerating). With `zero` the logits shrink towards 0 as patches go, so the loss "
                        "moves towards ln K even when the prediction is unchanged: the shape depends on the reading of "
                        "'set to 0'."})
    return out


def build_summary(run: Run, minutes: float | None = None) -> dict:
    """results/summary.json: Table 1 numbers, every blackout setting, the verdicts."""
    metrics = {m: json.loads((run.results / f"{m}_metrics.json").read_text()) for m in ("resnet50", "bagnet33")}
    runs = pd.read_csv(run.results / "blackout_runs.csv")
    timings_path = run.results / "timings.json"  # written by the runner after each notebook
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    if minutes is None and timings:
        minutes = sum(timings.values()) / 60
    summary: dict = {"profile": run.profile.name, "synthetic_data": run.synthetic, "data_dir": str(run.data_dir),
                     "seed": run.seed, "n_test": metrics["bagnet33"]["test"]["n"], "minutes": minutes,
                     "notebook_seconds": timings}
    for m, v in metrics.items():
        summary[m] = {"train": {k: v["train"][k] for k in ("acc", "loss")},
                      "test": {k: v["test"][k] for k in ("acc", "loss", "acc_ci", "loss_ci")},
                      "best_epoch": v["best_epoch"], "train_seconds": v["train_seconds"]}
    summary["blackout"] = blackout_summary(runs)
    summary["drop_curve"] = drop_curve_summary(runs)
    predictions = {m: pd.read_csv(run.results / f"{m}_test_predictions.csv") for m in ("resnet50", "bagnet33")}
    summary["verdicts"] = verdicts(summary, runs, predictions)
    return summary


def table1(summary: dict) -> list[str]:
    """Markdown rows of the paper's Table 1 with this run's numbers beside the paper's."""
    lines = ["| setting | this run: acc [95% CI] | this run: loss | paper: acc | paper: loss |", "| --- | --- | --- | --- | --- |"]
    for m, label in (("resnet50", "ResNet-50"), ("bagnet33", "BagNet-33")):
        t, tr = summary[m]["test"], summary[m]["train"]
        lines.append(f"| {label} (train) | {tr['acc']:.3f} | {tr['loss']:.3f} | {PAPER_TABLE1[m]['train']['acc']:.4f} | "
                     f"{PAPER_TABLE1[m]['train']['loss']:.4f} |")
        lines.append(f"| {label} | {t['acc']:.3f} [{t['acc_ci'][0]:.3f}, {t['acc_ci'][1]:.3f}] | {t['loss']:.3f} | "
                     f"{PAPER_TABLE1[m]['test']['acc']:.4f} | {PAPER_TABLE1[m]['test']['loss']:.4f} |")
    for label, kind, frac in (("alternating (checkerboard)", "checkerboard", 0.5), ("alternating (raster)", "raster", 0.5),
                              ("random 25%", "random", 0.25), ("random 50%", "random", 0.5), ("random 75%", "random", 0.75)):
        b = find(summary["blackout"], kind, frac)
        paper = PAPER_TABLE1["alternating" if kind != "random" else label]
        if b:
            ci = f" [{b['acc_ci'][0]:.3f}, {b['acc_ci'][1]:.3f}]" if b["n_seeds"] > 1 else ""
            lines.append(f"| BagNet-33, {label} ({b['n_seeds']} mask{'s' if b['n_seeds'] > 1 else ''}) | "
                         f"{b['acc_mean']:.3f}{ci} | {b['loss_mean']:.3f} | {paper['acc']:.4f} | {paper['loss']:.4f} |")
    return lines


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
    lines += ["", "Train rows: the training images under the evaluation transform. Blackout rows: `mean` aggregation "
              "(dropped patch logits left out of the mean); intervals over random masks. The paper's random 75% column "
              "repeats its 50% column (most likely a copy error).", "",
              "## Three meanings of blackout at 25 / 50 / 75 % dropped (test accuracy, mean over seeds)", "",
              "| blackout | model | aggregation | 25% | 50% | 75% |", "| --- | --- | --- | --- | --- | --- |"]
    for kind, model, agg, label in (("random", "bagnet33", "mean", "patch logits, left out of the mean (paper's text)"),
                                    ("random", "bagnet33", "zero", "patch logits, set to 0 (literal reading)"),
                                    ("channel_random", "bagnet33", "mean", "fc.weight columns zeroed (paper's code)"),
                                    ("pixel", "bagnet33", "model", "image tiles painted grey"),
                                    ("pixel", "resnet50", "model", "image tiles painted grey")):
        cells = []
        for frac in (0.25, 0.5, 0.75):
            b = find(summary["blackout"], kind, frac, agg, model)
            cells.append(f"{b['acc_mean']:.3f} (loss {b['loss_mean']:.3f})" if b else "–")
        lines.append(f"| {label} | {model} | {agg} | " + " | ".join(cells) + " |")
    if summary.get("drop_curve"):
        lines += ["", "## The drop curve (BagNet-33, random patch masks)", "",
                  "Each row: the same random masks scored with the dropped patch logits left out of the mean (`mean`) "
                  "and set to 0 (`zero`); the interval is over masks. The full curve (every 5 %) is in "
                  "`results/<profile>/summary.json` and the drop-curve figure.", ""]
        lines += drop_curve_table(summary["drop_curve"])
    lines += ["", "## Structured masks (BagNet-33, patch logits, `mean` aggregation; test accuracy)", "",
              "Patches dropped by position or by confidence, next to random "
              "masks at the same fraction.", ""]
    lines += structured_table(summary["blackout"])
    lines += ["", "## Verdicts on the paper's claims", ""]
    for v in summary.get("verdicts", []):
        lines += [f"- **{v['claim']}: {v['verdict']}.** {v['text']}"]
    lines += ["", "Caveats: one training run per model (seed above); the test split's size bounds every interval; "
              "random-mask intervals are over masks, not over training runs.", ""]
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
    lines += ["", "The paper's claims, each with the numbers it rests on (definitions and figures in REPORT.md):", ""]
    lines += [f"- **{v['claim']}: {v['verdict']}.** {v.get('text', '')}".rstrip() for v in summary.get("verdicts", [])]
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
