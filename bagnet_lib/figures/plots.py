"""Figures of the course: data (01), training (02, 03) and blackout (04). Each draws, saves a PNG, returns the Figure.

What a BagNet looks at (receptive field, patch evidence, Grad-CAM) lives in `evidence.py`; the
interactive explorer in `widgets.py`.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import Tensor

from bagnet_lib.blackout.pixels import pixel_blackout
from bagnet_lib.data.images import load_rgb
from bagnet_lib.data.tensors import eval_transform, train_transform
from bagnet_lib.nets.metrics import spread
from bagnet_lib.nets.models import model_label

SPLIT_COLORS = {"train": "#4C72B0", "val": "#DD8452", "test": "#55A868"}


def save(fig: Figure, out: str | Path | BinaryIO | None, dpi: int = 120) -> Figure:
    """Save `fig` as a PNG to a path (parents created) or an open binary file when `out` is given; return it.

    The one figure saver of the library. Figures here are plain `matplotlib.figure.Figure` objects, not
    registered with pyplot: a notebook shows each once (as the cell's value) and a long run does not
    accumulate open figures.
    """
    if out is not None:
        if isinstance(out, (str, Path)):
            out = Path(out)
            out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png", dpi=dpi, bbox_inches="tight")
    return fig


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """The figure rendered as PNG bytes (Agg; no pyplot, no display backend needed)."""
    buf = io.BytesIO()
    save(fig, buf, dpi)
    return buf.getvalue()


def to_hwc(image: Tensor) -> np.ndarray:
    """uint8 [3, H, W] (or floats in [0, 1]) → float array [H, W, 3] in [0, 1] for imshow."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected one image [3, H, W], got shape {tuple(image.shape)}")
    img = image.detach().cpu()
    img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float().clamp(0, 1)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return img.permute(1, 2, 0).numpy()


# ----------------------------------------------------------------------------------- 01: data
def plot_split_counts(split: pd.DataFrame, out: str | Path | None = None, title: str | None = None) -> Figure:
    """Images per class and split, with the counts written on the bars (the paper's Fig. 1)."""
    counts = split.groupby(["label", "split"]).size().unstack(fill_value=0).reindex(columns=["train", "val", "test"],
                                                                                 fill_value=0)
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    x = np.arange(len(counts))
    for k, name in enumerate(counts.columns):
        bars = ax.bar(x + (k - 1) * 0.27, counts[name], 0.27, label=f"{name} ({counts[name].sum()})",
                      color=SPLIT_COLORS[name])
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(x, counts.index)
    ax.set_ylabel("images")
    ax.set_title(title or f"Images per class and split ({len(split)} images)")
    ax.legend(title="split")
    return save(fig, out)


def plot_sample_grid(images: Mapping[str, Sequence[np.ndarray]], out: str | Path | None = None,
                     title: str = "Sample images per class") -> Figure:
    """One row per class of example images (RGB arrays)."""
    n = max(len(v) for v in images.values())
    fig = Figure(figsize=(1.6 * n, 1.7 * len(images)))
    axes = fig.subplots(len(images), n, squeeze=False)
    for r, (label, imgs) in enumerate(images.items()):
        for c in range(n):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(imgs):
                ax.imshow(imgs[c])
        axes[r, 0].set_title(label, loc="left", fontsize=10)
    fig.suptitle(title)
    return save(fig, out)


def plot_image_sizes(sizes: pd.DataFrame, out: str | Path | None = None) -> Figure:
    """Width × height of every image (columns width, height, label) and the shorter side's histogram."""
    fig = Figure(figsize=(10, 4))
    (a, b) = fig.subplots(1, 2)
    for label, g in sizes.groupby("label"):
        a.scatter(g["width"], g["height"], s=6, alpha=0.5, label=label)
    a.set_xlabel("width (px)")
    a.set_ylabel("height (px)")
    a.set_title("Image sizes")
    a.legend(markerscale=3, fontsize=8)
    short = sizes[["width", "height"]].min(axis=1)
    b.hist(short, bins=40, color="#4C72B0")
    b.set_xlabel("shorter side (px)")
    b.set_ylabel("images")
    b.set_title(f"Shorter side: median {short.median():.0f} px")
    return save(fig, out)


def plot_augmentations(original: Tensor, augmented: dict[str, Sequence[Tensor]], eval_view: Tensor,
                       out: str | Path | None = None) -> Figure:
    """The decoded image, its eval view (resize + centre crop) and, one row per training recipe (`augmented`:
    label → crops), several training augmentations, each panel titled with its size in pixels."""
    n = max(len(a) for a in augmented.values()) + 2
    fig = Figure(figsize=(1.9 * n, 2.3 * len(augmented) + 0.3), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(augmented), n))
    for row, (recipe, crops) in enumerate(augmented.items()):
        panels = [(original, f"decoded {original.shape[2]}×{original.shape[1]}"),
                  (eval_view, f"eval view, {eval_view.shape[-1]} px")] if row == 0 else [None, None]
        panels += [(a, f"{recipe}: aug {i + 1}, {a.shape[-1]} px" if len(augmented) > 1 else
                    f"train aug {i + 1}, {a.shape[-1]} px") for i, a in enumerate(crops)]
        for ax, panel in zip(axes[row], panels + [None] * (n - len(panels))):
            ax.axis("off")
            if panel is not None:
                ax.imshow(to_hwc(panel[0]))
                ax.set_title(panel[1], fontsize=8)
    fig.suptitle("Augmentation: RandomResizedCrop + horizontal flip (train); Resize + CenterCrop (eval)")
    return save(fig, out)


# ----------------------------------------------------------------------------------- 02/03: training
def plot_history(history: pd.DataFrame, out: str | Path | None = None, title: str = "Learning curves") -> Figure:
    """Train/val cross-entropy and accuracy per epoch, best validation epoch marked."""
    fig = Figure(figsize=(10, 3.8))
    (a, b) = fig.subplots(1, 2)
    e = history["epoch"]
    a.plot(e, history["train_loss"], "o-", ms=3, label="train (augmented batches)")
    a.plot(e, history["val_loss"], "o-", ms=3, label="validation")
    a.set_ylabel("cross-entropy (nats)")
    b.plot(e, history["train_acc"], "o-", ms=3, label="train (augmented batches)")
    b.plot(e, history["val_acc"], "o-", ms=3, label="validation")
    b.set_ylabel("accuracy")
    best = history.loc[history["val_acc"].idxmax()]
    b.axvline(best["epoch"], color="grey", ls=":", label=f"best val epoch {int(best['epoch'])} ({best['val_acc']:.3f})")
    for ax in (a, b):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return save(fig, out)


def plot_confusion(confusion: Sequence[Sequence[int]], classes: Sequence[str], out: str | Path | None = None,
                   title: str = "Confusion matrix (test)") -> Figure:
    """Counts as numbers, colours row-normalised (recall per true class): a seaborn heatmap."""
    import seaborn as sns

    cm = np.asarray(confusion, dtype=float)
    norm = pd.DataFrame(cm / np.maximum(cm.sum(axis=1, keepdims=True), 1), index=list(classes), columns=list(classes))
    fig = Figure(figsize=(5.4, 4.4), layout="constrained")
    ax = fig.subplots()
    sns.heatmap(norm, annot=cm.astype(int), fmt="d", cmap="Blues", vmin=0, vmax=1, square=True, ax=ax,
                cbar_kws={"label": "fraction of the true class"})
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.tick_params(axis="x", rotation=30)
    ax.set_title(title)
    return save(fig, out)


# ----------------------------------------------------------------------------------- 04: blackout
def plot_blackout_masks(image: Tensor, panels: Mapping[str, Tensor], out: str | Path | None = None,
                        title: str = "The paper's four blackout settings (grey tiles are dropped)") -> Figure:
    """The paper's Fig. 4: one image with each keep-mask's dropped tiles painted grey."""
    fig = Figure(figsize=(2.6 * (len(panels) + 1), 3.3), layout="constrained")
    axes = fig.subplots(1, len(panels) + 1)
    axes[0].imshow(to_hwc(image))
    axes[0].set_title("original")
    for ax, (label, keep) in zip(axes[1:], panels.items()):
        ax.imshow(to_hwc(pixel_blackout(image[None], keep)[0]))
        ax.set_title(f"{label}\n{int(keep.sum())}/{keep.numel()} patches kept", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title)
    return save(fig, out)


def plot_mechanism(image: Tensor, patch_logits: Tensor, keep: Tensor, logits: Mapping[str, Tensor],
                   classes: Sequence[str], label: int, out: str | Path | None = None, title: str = "") -> Figure:
    """Notebook 04's first figure: the image, its patch logits for the true class, the mask, and the image logits
    (all kept, `mean`, `zero`) as bars: the same argmax, smaller logits under `zero`."""
    fig = Figure(figsize=(15, 3.6), layout="constrained")
    a, b, c, d = fig.subplots(1, 4, width_ratios=[1, 1, 1, 1.6])
    a.imshow(to_hwc(image))
    a.set_title(f"true class: {classes[label]}")
    lim = float(patch_logits[label].abs().max())
    im = b.imshow(patch_logits[label].numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
    fig.colorbar(im, ax=b, shrink=0.8, label="patch logit")
    b.set_title(f"patch logits for '{classes[label]}' ({patch_logits.shape[1]}×{patch_logits.shape[2]} grid)")
    c.imshow(to_hwc(pixel_blackout(image[None], keep)[0]))
    c.set_title(f"mask: {int(keep.sum())}/{keep.numel()} patches kept")
    for ax in (a, b, c):
        ax.axis("off")
    x = np.arange(len(classes))
    for k, (name, v) in enumerate(logits.items()):
        d.bar(x + (k - 1) * 0.27, v.numpy(), 0.27, label=f"{name} (predicts {classes[int(v.argmax())]})")
    d.axhline(0, color="grey", lw=0.8)
    d.set_xticks(x, classes, rotation=20)
    d.set_ylabel("image logit")
    d.legend(fontsize=8)
    d.set_title("image logits: the average of the kept patch logits")
    fig.suptitle(title)
    return save(fig, out)


def plot_mask_accuracy(runs: pd.DataFrame, out: str | Path | None = None,
                       title: str = "Every random mask's test accuracy (one dot per mask)") -> Figure:
    """Accuracy and cross-entropy of each random mask at each fraction, `mean` vs `zero`: seaborn strip plots.
    The accuracies coincide (the same argmax); the losses do not."""
    import seaborn as sns

    df = runs.assign(dropped=(runs["drop_frac"] * 100).round().astype(int).astype(str) + "%")
    fig = Figure(figsize=(11, 4), layout="constrained")
    a, b = fig.subplots(1, 2)
    for ax, col, label in ((a, "acc", "test accuracy"), (b, "loss", "test cross-entropy (nats)")):
        sns.stripplot(df, x="dropped", y=col, hue="aggregation", dodge=True, alpha=0.6, size=4, ax=ax)
        ax.set_xlabel("patches dropped")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{title}; {df.groupby(['dropped', 'aggregation']).size().min()} masks per setting")
    return save(fig, out)


def _band(g: pd.DataFrame, col: str) -> pd.DataFrame:
    s = g.groupby("drop_frac")[col]
    return pd.DataFrame({"mean": s.mean(), "lo": s.quantile(0.025), "hi": s.quantile(0.975)})


def plot_drop_curve(runs: pd.DataFrame, out: str | Path | None = None, paper: Mapping[float, tuple[float, float]] | None = None,
                    title: str = "Random patch blackout: accuracy and loss vs fraction dropped") -> Figure:
    """Mean and 95 % band over random masks, for each aggregation; the paper's points as crosses."""
    fig = Figure(figsize=(11, 4))
    (a, b) = fig.subplots(1, 2)
    for agg, g in runs.groupby("aggregation", sort=False):
        for ax, col in ((a, "acc"), (b, "loss")):
            band = _band(g, col)
            x = band.index.to_numpy() * 100
            ax.plot(x, band["mean"], "o-", ms=3, label=f"{agg} aggregation")
            ax.fill_between(x, band["lo"], band["hi"], alpha=0.25)
    if paper:
        xs = [f * 100 for f in paper]
        a.plot(xs, [v[0] for v in paper.values()], "kx", ms=8, label="paper (Table 1)")
        b.plot(xs, [v[1] for v in paper.values()], "kx", ms=8, label="paper (Table 1)")
    a.set_ylabel("test accuracy")
    b.set_ylabel("test cross-entropy (nats)")
    n = runs.groupby(["aggregation", "drop_frac"]).size().min()
    for ax in (a, b):
        ax.set_xlabel("patches dropped (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title} ({n} masks per point, band = 95% of masks)")
    return save(fig, out)


def plot_blackout_kinds(runs: pd.DataFrame, out: str | Path | None = None,
                        title: str = "Three meanings of 'blackout' at the same fractions",
                        baselines: Mapping[str, float] | None = None, bagnet: str = "bagnet33") -> Figure:
    """Accuracy vs fraction for patch-logit, channel (the paper's code) and pixel blackout: the mean over masks
    (or seeds), bars where 95 % of them lie. With `baselines` (model → accuracy with nothing dropped) the
    y axis is the change from each model's own baseline, so models that start apart compare fairly."""
    baselines = baselines or {}

    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    b = model_label(bagnet)
    series = [("random", bagnet, "mean", f"{b}: patch logits dropped (paper's text)"),
              ("channel_random", bagnet, "mean", f"{b}: fc channels zeroed (paper's code)"),
              ("pixel", bagnet, "model", f"{b}: image tiles painted grey"),
              ("pixel", "resnet50", "model", "ResNet-50: image tiles painted grey")]
    for kind, model, agg, label in series:
        g = runs[(runs["kind"] == kind) & (runs["model"] == model) & (runs["aggregation"] == agg)
                 & runs["drop_frac"].isin([0.25, 0.5, 0.75])]
        if g.empty:
            continue
        stats = g.groupby("drop_frac")["acc"].agg(list).map(lambda v, m=model: [a - baselines.get(m, 0.0) for a in v])
        means = [np.mean(v) for v in stats]
        cis = [spread(v) for v in stats]
        err = np.array([[m - lo for m, (lo, _) in zip(means, cis)], [hi - m for m, (_, hi) in zip(means, cis)]])
        ax.errorbar(stats.index * 100, means, yerr=err, marker="o", capsize=3, label=label)
    ax.set_xlabel("dropped (%)")
    ax.set_ylabel("change in test accuracy from the model's own baseline" if baselines else "test accuracy")
    if baselines:
        ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks([25, 50, 75])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return save(fig, out)


def plot_structured(runs: pd.DataFrame, out: str | Path | None = None,
                    title: str = "Which patches matter: structured masks vs random (mean aggregation)") -> Figure:
    """Accuracy of centre/border/top-k/bottom-k masks next to random masks at 25/50/75 % dropped."""
    kinds = ["random", "center", "border", "topk", "bottomk"]
    labels = {"random": "random", "center": "keep centre", "border": "keep border",
              "topk": "keep most confident (oracle)",
              "bottomk": "keep least confident (oracle)"}
    g = runs[(runs["aggregation"] == "mean") & runs["kind"].isin(kinds) & runs["drop_frac"].isin([0.25, 0.5, 0.75])]
    table = g.groupby(["kind", "drop_frac"])["acc"].mean().unstack("kind").reindex(columns=kinds)
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    x = np.arange(len(table))
    width = 0.8 / len(kinds)
    for k, kind in enumerate(kinds):
        ax.bar(x + (k - 2) * width, table[kind], width, label=labels[kind])
    ax.set_xticks(x, [f"{int(f * 100)}% dropped" for f in table.index])
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(title)
    return save(fig, out)


def plot_aggregations(runs: pd.DataFrame, out: str | Path | None = None,
                      title: str = "Aggregations under random blackout") -> Figure:
    """Accuracy per aggregation (mean over seeds) at 25/50/75 % dropped."""
    g = runs[(runs["kind"] == "random") & runs["drop_frac"].isin([0.25, 0.5, 0.75]) & (runs["aggregation"] != "model")]
    table = g.groupby(["aggregation", "drop_frac"])["acc"].mean().unstack("drop_frac")
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    x = np.arange(len(table))
    for k, frac in enumerate(table.columns):
        ax.bar(x + (k - 1) * 0.27, table[frac], 0.27, label=f"{int(frac * 100)}% dropped")
    ax.set_xticks(x, table.index, rotation=20)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return save(fig, out)


def image_sizes(root: str | Path, split: pd.DataFrame) -> pd.DataFrame:
    """Width and height of every image of `split` (read from the file header, no decoding)."""
    from PIL import Image

    rows = []
    for path, label in zip(split["path"], split["label"]):
        with Image.open(Path(root) / path) as im:
            rows.append((path, label, *im.size))
    return pd.DataFrame(rows, columns=["path", "label", "width", "height"])


def sample_images(root: str | Path, split: pd.DataFrame, per_class: int = 6, seed: int = 0,
                  max_side: int = 160) -> dict[str, list[np.ndarray]]:
    """A few decoded images per class (thumbnails), for `plot_sample_grid`."""
    out: dict[str, list[np.ndarray]] = {}
    for label, rows in split.groupby("label", sort=True):
        picks = rows.sample(n=min(per_class, len(rows)), random_state=seed)["path"]
        thumbs = []
        for p in picks:
            im = load_rgb(Path(root) / p)
            im.thumbnail((max_side, max_side))
            thumbs.append(np.asarray(im))
        out[label] = thumbs
    return out


def augmentation_examples(image: Tensor, size: int, n: int = 6, seed: int = 0,
                          scale_min: float = 0.08, scale_max: float = 1.0,
                          eval_size: int | None = None) -> tuple[list[Tensor], Tensor]:
    """`n` training augmentations (crops of `scale_min`–`scale_max` of the area) and the eval view of one image
    (at `eval_size`, default `size`)."""
    gen = torch.Generator().manual_seed(seed)
    return ([train_transform(image, size, gen, scale_min, scale_max) for _ in range(n)],
            eval_transform(image, eval_size or size))


def plot_frontier(points: pd.DataFrame, out: str | Path | None = None,
                  title: str = "What could blackout save? Test accuracy against forward GFLOPs per image") -> Figure:
    """Accuracy vs GFLOPs per image (log scale) for every configuration, the Pareto front as a line."""
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.subplots()
    for (model, method), g in points.groupby(["model", "method"], sort=False):
        ax.errorbar(g["gflops_per_image"], g["acc"], yerr=[g["acc"] - g["acc_ci_low"], g["acc_ci_high"] - g["acc"]],
                    fmt="o" if method != "dense" else "*", ms=5 if method != "dense" else 12, capsize=2, alpha=0.8,
                    label=f"{model}: {method}")
    front = points[points["pareto"]].sort_values("gflops_per_image")
    ax.step(front["gflops_per_image"], front["acc"], where="post", color="black", lw=1, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("forward GFLOPs per image (log scale)")
    ax.set_ylabel("test accuracy (95% CI over test images)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title)
    return save(fig, out)


def plot_imagenet_drop(frame: pd.DataFrame, out: str | Path | None = None, title: str = "") -> Figure:
    """The ImageNet study's drop curves: top-1 and top-5 (%) vs the fraction dropped, for patch blackout with
    `mean` and `zero` aggregation and for the paper's channel masking (and pixel blackout where run).

    Each point is the mean over the random masks (seeds) of one fraction; the band is the mean of the masks'
    95 % intervals over images (normal approximation); the full model is the point at 0 % on every curve.
    """
    full = frame[frame["kind"] == "full"].iloc[0]
    curves = {f"patches dropped, {agg} aggregation": frame[(frame["kind"] == "random") & (frame["aggregation"] == agg)]
              for agg in ("mean", "zero")}
    curves["feature channels zeroed (the paper's code)"] = frame[frame["kind"] == "channel_random"]
    curves["pixel tiles painted out (8 px)"] = frame[frame["kind"] == "pixel_random"]
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2)
    for ax, col, name in ((axes[0], "acc", "top-1"), (axes[1], "top5", "top-5")):
        for label, g in curves.items():
            if g.empty:
                continue
            s = g.groupby("drop_frac")[[col, f"{col}_ci_low", f"{col}_ci_high"]].mean()
            x = np.concatenate([[0.0], s.index.to_numpy()]) * 100
            ax.plot(x, np.concatenate([[full[col]], s[col].to_numpy()]) * 100, "o-", ms=3, label=label)
            ax.fill_between(x, np.concatenate([[full[f"{col}_ci_low"]], s[f"{col}_ci_low"].to_numpy()]) * 100,
                            np.concatenate([[full[f"{col}_ci_high"]], s[f"{col}_ci_high"].to_numpy()]) * 100, alpha=0.12)
        ax.set_xlabel("fraction dropped (%)")
        ax.set_ylabel(f"{name} accuracy (%)")
        ax.set_title(f"{name}: all kept = {full[col] * 100:.2f} %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    n_masks = int(frame[frame["kind"] == "random"].groupby(["aggregation", "drop_frac"]).size().min()) \
        if (frame["kind"] == "random").any() else 0
    fig.suptitle(f"{title} ({int(full['n_images'])} images; {n_masks} random masks per point, band = 95 % interval "
                 "over images)".strip())
    return save(fig, out)
