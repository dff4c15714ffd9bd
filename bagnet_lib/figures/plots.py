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
def interval_bars(ax, x, low, high, **errorbar_kw):
    """Vertical bars from `low` to `high` at `x`, drawn as given. `errorbar`'s yerr is measured from the plotted
    point, so it refuses a point outside its interval, which happens honestly: a mean outside the band where 95 % of
    its values lie (a skewed spread), or a difference of equal numbers rounded a bit below its band."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    return ax.errorbar(np.asarray(x, dtype=float), (low + high) / 2, yerr=(high - low) / 2, fmt="none", **errorbar_kw)


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
    validated = history.dropna(subset=["val_acc"])  # the epochs training validated (`Profile.validates`)
    a.plot(e, history["train_loss"], "o-", ms=3, label="train (augmented batches)")
    a.plot(validated["epoch"], validated["val_loss"], "o-", ms=3, label="validation")
    a.set_ylabel("cross-entropy (nats)")
    b.plot(e, history["train_acc"], "o-", ms=3, label="train (augmented batches)")
    b.plot(validated["epoch"], validated["val_acc"], "o-", ms=3, label="validation")
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


PAPER_STYLE = {"marker": "x", "color": "black", "ms": 9, "mew": 2, "ls": "none"}
AGG_STYLE = {"mean": {"marker": "o", "ls": "-", "lw": 2.6, "ms": 4}, "zero": {"marker": "s", "ls": "--", "lw": 1.4, "ms": 3}}


def plot_drop_curve(runs: pd.DataFrame, out: str | Path | None = None, paper: Mapping[float, tuple[float, float]] | None = None,
                    title: str = "Random patch blackout: the change from all patches kept",
                    paper_label: str = "paper (Table 1)") -> Figure:
    """Mean and 95 % band over random masks for each aggregation, against the fraction of patches dropped.

    Both panels show the *change* from all patches kept (the 0 % point of the curve; this run's own accuracy and
    cross-entropy are on the right-hand axis), so `paper` (fraction → (Δ accuracy, Δ cross-entropy), each a change
    from the paper's own all-kept network, `writeup.paper.paper_changes`) sits on the same axes as crosses. Without
    a 0 % point the panels show absolute values and the paper's points are left out."""
    fig = Figure(figsize=(11.5, 4.4), layout="constrained")
    (a, b) = fig.subplots(1, 2)
    full = runs[runs["drop_frac"] == 0]
    base = {col: float(full[col].mean()) for col in ("acc", "loss")} if len(full) else None
    for agg, g in runs.groupby("aggregation", sort=False):
        for ax, col in ((a, "acc"), (b, "loss")):
            band = _band(g, col) - (base[col] if base else 0.0)
            x = band.index.to_numpy() * 100
            line, = ax.plot(x, band["mean"], label=f"{agg} aggregation (mean over masks)", **AGG_STYLE.get(agg, {}))
            ax.fill_between(x, band["lo"], band["hi"], alpha=0.2, color=line.get_color())
    names = {"acc": "test accuracy", "loss": "test cross-entropy (nats)"}
    for ax, col, k in ((a, "acc", 0), (b, "loss", 1)):
        if base:
            if paper:
                fracs = sorted(paper)
                ax.plot([f * 100 for f in fracs], [paper[f][k] for f in fracs], label=paper_label, **PAPER_STYLE)
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_ylabel(f"change in {names[col]}\nfrom all patches kept")
            right = ax.secondary_yaxis("right", functions=(lambda d, c=base[col]: d + c, lambda v, c=base[col]: v - c))
            right.set_ylabel(f"{names[col]} (this run)")
        else:
            ax.set_ylabel(names[col])
        ax.set_xlabel("patches dropped (%)")
        ax.grid(alpha=0.3)
    a.set_title("accuracy ('mean' and 'zero' coincide: the same predictions)", fontsize=10)
    b.set_title("cross-entropy ('zero' shrinks the logits: a flatter softmax)", fontsize=10)
    a.legend(fontsize=8, loc="best")
    n = runs.groupby(["aggregation", "drop_frac"]).size().min()
    fig.suptitle(f"{title} ({n} masks per point; band: where 95% of the masks lie)")
    return save(fig, out)


def blackout_kinds_series(bagnet: str) -> list[tuple[str, str, str, str]]:
    """The curves of the blackout-kinds figure: (kind, model, aggregation, label)."""
    b = model_label(bagnet)
    return [("random", bagnet, "mean", f"{b}: patch logits dropped (paper's text)"),
            ("channel_random", bagnet, "mean", f"{b}: fc channels zeroed (paper's code)"),
            ("pixel", bagnet, "model", f"{b}: image tiles painted grey"),
            ("pixel", "resnet50", "model", "ResNet-50: image tiles painted grey")]


def _kind_rows(runs: pd.DataFrame, kind: str, model: str, agg: str) -> pd.DataFrame:
    return runs[(runs["kind"] == kind) & (runs["model"] == model) & (runs["aggregation"] == agg)
                & runs["drop_frac"].isin([0.25, 0.5, 0.75])]


def plot_blackout_kinds(runs: pd.DataFrame, out: str | Path | None = None,
                        title: str = "Three meanings of 'blackout' at the same fractions",
                        baselines: Mapping[str, float] | None = None, bagnet: str = "bagnet33",
                        paper: Mapping[float, tuple[float, float]] | None = None,
                        paper_label: str = "paper (Table 1)") -> Figure:
    """Accuracy vs fraction for patch-logit, channel (the paper's code) and pixel blackout: the mean over masks
    (or seeds), bars where 95 % of them lie. With `baselines` (model → accuracy with nothing dropped) the
    y axis is the change from each model's own baseline, so models that start apart compare fairly; then
    `paper` (fraction → (Δ accuracy, Δ loss) from the paper's own all-kept network) is drawn as crosses."""
    baselines = baselines or {}

    fig = Figure(figsize=(8, 4.6), layout="constrained")
    ax = fig.subplots()
    for kind, model, agg, label in blackout_kinds_series(bagnet):
        g = _kind_rows(runs, kind, model, agg)
        if g.empty:
            continue
        stats = g.groupby("drop_frac")["acc"].agg(list).map(lambda v, m=model: [a - baselines.get(m, 0.0) for a in v])
        means = [np.mean(v) for v in stats]
        lows, highs = zip(*(spread(v) for v in stats))
        (line,) = ax.plot(stats.index * 100, means, marker="o", label=label)
        interval_bars(ax, stats.index * 100, lows, highs, color=line.get_color(), capsize=3)
    if baselines and paper:
        fracs = sorted(paper)
        ax.plot([f * 100 for f in fracs], [paper[f][0] for f in fracs], label=paper_label, **PAPER_STYLE)
    ax.set_xlabel("dropped (%)")
    ax.set_ylabel("change in test accuracy\nfrom the model's own all-kept accuracy" if baselines else "test accuracy")
    if baselines:
        ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks([25, 50, 75])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"{title}\n(mean over masks or seeds; bars: where 95% of them lie)", fontsize=11)
    return save(fig, out)


STRUCTURED_LABELS = {"random": "random", "center": "keep centre", "border": "keep border",
                     "topk": "keep most confident (oracle)", "bottomk": "keep least confident (oracle)"}


def plot_structured(runs: pd.DataFrame, out: str | Path | None = None,
                    title: str = "Which patches matter: structured masks vs random (mean aggregation)") -> Figure:
    """Accuracy of centre/border/top-k/bottom-k masks next to random masks at 25/50/75 % dropped."""
    kinds, labels = list(STRUCTURED_LABELS), STRUCTURED_LABELS
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


# What each frontier method's `parameter` is, as the legend says it, and how a point's label writes it.
FRONTIER_PARAMETERS = {
    "kept patches, random": ("% of patches kept", lambda v: f"{float(v):.0%}"),
    "kept patches, centre": ("% of patches kept", lambda v: f"{float(v):.0%}"),
    "kept patches, strided sub-grid": ("every n-th row and column", lambda v: str(v).replace("every ", "n=")),
    "anytime (stop when confident)": ("margin threshold", lambda v: f"≥{float(v):g}"),
    "fewer pixels (dense)": ("test image size", lambda v: f"{int(float(v))}px"),
}


def frontier_label(method: str, parameter) -> str:
    """The short label of one frontier point (its parameter: keep fraction, stride, threshold, pixels); '' for dense."""
    fmt = FRONTIER_PARAMETERS.get(method)
    return fmt[1](parameter) if fmt else ""


def _place_labels(ax, xy: np.ndarray, labels: Sequence[str], colors: Sequence, fontsize: float = 7,
                  marker_pt: float = 12) -> None:
    """Write each label beside its point where it overlaps no label placed before (greedy, in axes fractions):
    candidates right, left, above and below the point, then further out; a label with no free place is left out."""
    to_axes = ax.transData + ax.transAxes.inverted()
    pts = to_axes.transform(xy)
    bbox = ax.get_position()
    w_in, h_in = ax.figure.get_size_inches()
    cw = 0.6 * fontsize / 72 / (bbox.width * w_in)  # one character's width, in axes fractions
    lh = 1.25 * fontsize / 72 / (bbox.height * h_in)  # one line's height
    mx, my = marker_pt / 72 / (bbox.width * w_in) / 2, marker_pt / 72 / (bbox.height * h_in) / 2
    placed: list[tuple[float, float, float, float]] = [(p[0] - mx, p[1] - my, p[0] + mx, p[1] + my)
                                                       for p in pts]  # the markers themselves

    def free(box):
        return all(box[2] <= q[0] or box[0] >= q[2] or box[3] <= q[1] or box[1] >= q[3] for q in placed) and \
            box[0] >= 0 and box[2] <= 1 and box[1] >= 0 and box[3] <= 1

    order = np.argsort(-pts[:, 1])
    for i in order:
        if not labels[i]:
            continue
        (x, y), width = pts[i], cw * len(labels[i])
        for step in (1, 2, 3, 4):
            dx, dy = mx + (step - 1) * cw, my + (step - 1) * lh / 2
            candidates = [(x + dx, y - lh / 2), (x - dx - width, y - lh / 2), (x - width / 2, y + dy),
                          (x - width / 2, y - dy - lh), (x + dx, y + dy), (x + dx, y - dy - lh)]
            box = next(((cx, cy, cx + width, cy + lh) for cx, cy in candidates
                        if free((cx, cy, cx + width, cy + lh))), None)
            if box:
                break
        if box is None:
            continue
        placed.append(box)
        ax.text(box[0], box[1] + lh / 2, labels[i], transform=ax.transAxes, fontsize=fontsize, color=colors[i],
                va="center", ha="left", bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.75, "pad": 0.3})


def plot_frontier(points: pd.DataFrame, out: str | Path | None = None,
                  title: str = "What could blackout save? Test accuracy against forward GFLOPs per image") -> Figure:
    """Accuracy vs GFLOPs per image (log scale) for every configuration, the Pareto front as a line.

    The colour says the method, the marker the network (a star: its dense pass, labelled with its name); every other
    point is labelled with its parameter (the legend says which: % of patches kept, the sub-grid's stride, the
    anytime margin threshold, the test image size); the Pareto points are ringed."""
    import matplotlib

    palette = matplotlib.colormaps["tab10"].colors
    methods = [m for m in dict.fromkeys(points["method"]) if m != "dense"]
    color_of = {m: palette[i % len(palette)] for i, m in enumerate(methods)} | {"dense": "black"}
    marker_of = {m: "osD^vP"[i % 6] for i, m in enumerate(dict.fromkeys(points["model"]))}
    fig = Figure(figsize=(10, 7.5), layout="constrained")
    ax = fig.subplots()
    xy, labels, colors = [], [], []
    for (model, method), g in points.groupby(["model", "method"], sort=False):
        dense = method == "dense"
        ax.plot(g["gflops_per_image"], g["acc"], linestyle="none", marker="*" if dense else marker_of[model],
                ms=13 if dense else 5, alpha=0.8, color=color_of[method], label=f"{model_label(model)}: {method}"
                + (f" (label: {FRONTIER_PARAMETERS[method][0]})" if method in FRONTIER_PARAMETERS else ""))
        interval_bars(ax, g["gflops_per_image"], g["acc_ci_low"], g["acc_ci_high"], color=color_of[method], capsize=2,
                      alpha=0.8, elinewidth=0.8)
        for r in g.itertuples():
            xy.append((r.gflops_per_image, r.acc))
            labels.append(model_label(model) if dense else frontier_label(method, r.parameter))
            colors.append(color_of[method])
    front = points[points["pareto"]].sort_values("gflops_per_image")
    ax.step(front["gflops_per_image"], front["acc"], where="post", color="black", lw=1, label="Pareto front (ringed)")
    ax.plot(front["gflops_per_image"], front["acc"], "o", ms=11, mfc="none", mec="black", mew=1.2)
    ax.set_xscale("log")
    ax.set_xlabel("forward GFLOPs per image (log scale)")
    ax.set_ylabel("test accuracy (bars: 95% CI over test images)")
    ax.grid(alpha=0.3, which="both")
    fig.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="outside lower center", ncol=2)
    ax.set_title(title)
    fig.draw_without_rendering()  # the constrained layout fixes the axes' size, which the labels' placement needs
    _place_labels(ax, np.array(xy), labels, colors)
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


# ----------------------------------------------------------------------------------- 04: one sentence per figure
# Each `describe_*` returns the sentence notebook 04 prints under a figure: what it shows, in the run's own numbers.
def _pct(frac: float) -> str:
    return f"{frac * 100:g} %"


def _near(values, frac: float) -> float | None:
    """The fraction of `values` equal to `frac` (within rounding), else None."""
    hits = [float(v) for v in values if abs(float(v) - frac) < 1e-9]
    return hits[0] if hits else None


def describe_mechanism(logits: Mapping[str, Tensor], label: int, classes: Sequence[str], n_kept: int, total: int,
                       index: int) -> str:
    """The worked example in one sentence: right or wrong with all patches, what `mean` and `zero` predict, and
    which way `zero` moves the cross-entropy, and why (`logits`: "all kept", "mean", "zero" → [K])."""
    import torch.nn.functional as F

    y = torch.tensor([label])
    ce = {name: float(F.cross_entropy(v.float()[None], y)) for name, v in logits.items()}
    pred = {name: classes[int(v.argmax())] for name, v in logits.items()}
    right = pred["all kept"] == classes[label]
    if ce["zero"] >= ce["mean"]:
        how, why = "higher", ("flattening the softmax takes probability from the predicted class, which is the true one"
                              if right else "the true class's logit lies above the softmax-weighted mean logit, so it "
                              "loses probability too")
    else:
        how, why = "lower", "flattening the softmax takes probability from the predicted class, which is not the true one"
    return (f"Test image {index} (true class {classes[label]}): with all {total} patches the BagNet predicts "
            f"{pred['all kept']} ({'right' if right else 'wrong'}); keeping {n_kept} of {total}, `mean` predicts "
            f"{pred['mean']} and `zero` {pred['zero']}, `zero`'s logits being `mean`'s times {n_kept / total:.2f}, so "
            f"its cross-entropy is {how}, {ce['zero']:.3f} against {ce['mean']:.3f} under `mean`: {why}.")


def describe_paper_masks(panels: Mapping[str, Tensor], index: int = 0, seed: int = 0) -> str:
    """What the paper's Fig. 4 shows: which masks, and how many patches each keeps."""
    kept = ", ".join(f"{label.splitlines()[0].split(':')[0]} {int(k.sum())}" for label, k in panels.items())
    total = next(iter(panels.values())).numel()
    return (f"Test image {index} under the paper's four settings (grey tiles dropped; random masks of seed {seed}); "
            f"patches kept of {total}: {kept}.")


def describe_mask_accuracy(runs: pd.DataFrame) -> str:
    """The spread of the random masks' accuracies, and `mean` = `zero` in accuracy but not in loss."""
    r = runs[runs["kind"] == "random"]
    fracs = sorted(r["drop_frac"].unique())
    parts = []
    for f in dict.fromkeys((fracs[0], fracs[-1])):
        acc = r[(r["drop_frac"] == f) & (r["aggregation"] == "mean")]["acc"]
        lo, hi = spread(acc)
        parts.append(f"at {_pct(f)} dropped the {len(acc)} masks' accuracies have mean {acc.mean():.3f}, 95 % of "
                     f"them in [{lo:.3f}, {hi:.3f}]")
    paired = r.pivot_table(index=["drop_frac", "seed"], columns="aggregation", values="acc")
    last = r[r["drop_frac"] == fracs[-1]].groupby("aggregation")["loss"].mean()
    return (f"{'; '.join(parts).capitalize()}; `mean` and `zero` give every mask the same accuracy (largest "
            f"difference {float((paired['mean'] - paired['zero']).abs().max()):.1g}), but at {_pct(fracs[-1])} the "
            f"mean cross-entropy is {last['zero']:.3f} under `zero` against {last['mean']:.3f} under `mean`.")


def describe_drop_curve(runs: pd.DataFrame, paper: Mapping[float, tuple[float, float]] | None = None) -> str:
    """Accuracy with all patches kept, then at the paper's fractions and the largest one: the mean over masks,
    where 95 % of them lie, the change (and the paper's change); `zero`'s loss at the largest fraction."""
    mean = runs[runs["aggregation"] == "mean"]
    fracs = sorted(mean["drop_frac"].unique())
    a0 = mean[mean["drop_frac"] == fracs[0]]["acc"].mean()
    parts, done = [], set()
    for want in [*sorted(paper or ()), fracs[-1]]:
        f = _near(fracs, want)
        if f is None or f == fracs[0] or f in done:
            continue
        done.add(f)
        acc = mean[mean["drop_frac"] == f]["acc"]
        lo, hi = spread(acc)
        theirs = f", the paper's {paper[want][0]:+.3f}" if paper and want in paper else ""
        parts.append(f"{acc.mean():.3f} at {_pct(f)} dropped ([{lo:.3f}, {hi:.3f}]; change {acc.mean() - a0:+.3f}{theirs})")
    loss = runs[runs["drop_frac"] == fracs[-1]].groupby("aggregation")["loss"].mean()
    n = int(mean.groupby("drop_frac").size().min())
    tail = (f"; at {_pct(fracs[-1])} `zero`'s cross-entropy is {loss['zero']:.3f} against `mean`'s {loss['mean']:.3f}"
            if {"mean", "zero"} <= set(loss.index) else "")
    return (f"With all patches kept ({_pct(fracs[0])} dropped) the test accuracy is {a0:.3f}; averaged over {n} random "
            f"masks (brackets: where 95 % of them lie) it is {', '.join(parts)}{tail}.")


def describe_blackout_kinds(runs: pd.DataFrame, baselines: Mapping[str, float], bagnet: str = "bagnet33",
                            paper: Mapping[float, tuple[float, float]] | None = None, frac: float = 0.5) -> str:
    """The four curves at one fraction, each as the change from its model's own all-kept accuracy."""
    parts = []
    for kind, model, agg, label in blackout_kinds_series(bagnet):
        g = _kind_rows(runs, kind, model, agg)
        g = g[(g["drop_frac"] - frac).abs() < 1e-9]
        if len(g):
            parts.append(f"{g['acc'].mean() - baselines[model]:+.3f} for {label.split(' (')[0].replace(':', '')} "
                         f"({len(g)} {'seed' if kind == 'pixel' else 'mask'}{'s' * (len(g) != 1)})")
    theirs = (f", and {paper[frac][0]:+.3f} for the paper's channel masking of its pretrained BagNet-33"
              if paper and frac in paper else "")
    return (f"At {_pct(frac)} dropped, the change in test accuracy from each model's own all-kept accuracy is "
            f"{'; '.join(parts)}{theirs}.")


def describe_structured(runs: pd.DataFrame, frac: float = 0.5) -> str:
    """Structured masks against random ones at one fraction (`mean` aggregation)."""
    g = runs[(runs["aggregation"] == "mean") & ((runs["drop_frac"] - frac).abs() < 1e-9)]
    acc = g.groupby("kind")["acc"].mean()
    parts = [f"{acc[k]:.3f} ({STRUCTURED_LABELS[k]})" for k in STRUCTURED_LABELS if k in acc.index]
    return f"At {_pct(frac)} dropped (`mean` aggregation) the test accuracy is {', '.join(parts)}."


def describe_aggregations(runs: pd.DataFrame, frac: float = 0.5) -> str:
    """The best and worst aggregation at one fraction, next to `mean` (the mean over the masks of each)."""
    g = runs[(runs["kind"] == "random") & ((runs["drop_frac"] - frac).abs() < 1e-9) & (runs["aggregation"] != "model")]
    acc = g.groupby("aggregation")["acc"].mean()
    masks = g.groupby("aggregation").size()
    others = acc.drop(["mean", "zero"], errors="ignore").sort_values()
    mean = (f", against {acc['mean']:.3f} for `mean` ({int(masks['mean'])} masks; `zero` predicts the same)"
            if "mean" in acc.index else "")
    return (f"At {_pct(frac)} dropped (random masks) the most accurate of the other aggregations is "
            f"`{others.index[-1]}` ({others.iloc[-1]:.3f}) and the least `{others.index[0]}` ({others.iloc[0]:.3f}), "
            f"each the mean over {int(masks[others.index].min())} masks{mean}.")


def describe_frontier(points: pd.DataFrame) -> str:
    """The Pareto front, and the best patch-dropping point that costs less than its dense BagNet."""
    front = points[points["pareto"]].sort_values("gflops_per_image")
    kinds = "; ".join(dict.fromkeys(f"{model_label(m)} {meth}" for m, meth in zip(front["model"], front["method"])))
    lo, hi = front.iloc[0], front.iloc[-1]
    out = f"The Pareto front holds {len(front)} of {len(points)} configurations ({kinds}), " + (
        f"at {lo['gflops_per_image']:.3g} GFLOPs per image (accuracy {lo['acc']:.3f})"
        if lo["gflops_per_image"] == hi["gflops_per_image"] else
        f"from {lo['gflops_per_image']:.3g} GFLOPs per image (accuracy {lo['acc']:.3f}) to {hi['gflops_per_image']:.3g} "
        f"({hi['acc']:.3f})")
    bagnets = points[points["model"].str.startswith("bagnet")]
    for model, g in bagnets.groupby("model", sort=True):
        dense = g[g["method"] == "dense"]
        if dense.empty:
            continue
        d = dense.iloc[0]
        cheaper = g[(g["method"].str.startswith("kept patches") | g["method"].str.startswith("anytime"))
                    & (g["gflops_per_image"] < d["gflops_per_image"])]
        if cheaper.empty:
            out += f"; no patch-dropping point of {model_label(model)} costs less than its dense pass"
            continue
        b = cheaper.sort_values(["acc", "gflops_per_image"], ascending=[False, True]).iloc[0]
        out += (f"; the most accurate patch-dropping point of {model_label(model)} cheaper than its dense pass "
                f"({d['gflops_per_image']:.3g} GFLOPs, accuracy {d['acc']:.3f}) is {b['method']} "
                f"({FRONTIER_PARAMETERS[b['method']][0]}: {frontier_label(b['method'], b['parameter'])}), "
                f"{b['gflops_per_image']:.3g} GFLOPs, accuracy {b['acc']:.3f}")
    return out + "."
