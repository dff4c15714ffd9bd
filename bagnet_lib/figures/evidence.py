"""Figures of what a BagNet looks at: its patch grid, per-class patch evidence and Grad-CAM maps.

A BagNet-33 logit at grid cell (i, j) sees only the 33×33 px window whose top-left pixel is
(8i, 8j); neighbouring logits are 8 px apart, so a 224 px image gives a 24×24 grid of windows. The
window's centre pixel is 8i + 16. `evidence_extent` places each cell of a patch-logit map as an
8×8 px square centred there, so an evidence map overlays the image exactly (the outermost 12 px of
the image are the edges of windows only and are left uncovered).

Every function draws on a fresh `matplotlib.figure.Figure` (not registered with pyplot, so nothing
is shown and nothing leaks), saves it to `out` as a PNG when given (parent folders created) and
returns it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from bagnet_lib.figures.plots import save, to_hwc
from bagnet_lib.nets.gradcam import upsample
from bagnet_lib.nets.models import PatchGeometry

__all__ = ["evidence_extent", "plot_gradcam_grid", "plot_patch_evidence", "plot_receptive_field"]

EVIDENCE_CMAP = "RdBu_r"  # red: evidence for the class, blue: against, white: none
EVIDENCE_ALPHA = 0.6
EVIDENCE_LABEL = "patch logit (class evidence)"
CAM_CMAP = "inferno"
CAM_ALPHA = 0.55
CAM_LABEL = "Grad-CAM (scaled to [0, 1])"
PANEL_IN = 2.7  # inches per image panel


def evidence_extent(geometry: PatchGeometry, grid_hw: tuple[int, int]) -> tuple[float, float, float, float]:
    """`imshow` extent (left, right, bottom, top) that puts cell (i, j) over its window's centre.

    Window (i, j) covers pixels stride·i … stride·i + size − 1, so its centre is at
    stride·i + (size − 1)/2 (8i + 16 for BagNet-33), in the pixel coordinates `imshow` uses for the
    image (pixel k spans k − ½ … k + ½). Each cell is drawn as a stride×stride square around that
    centre. Use with `origin="upper"` (the default).
    """
    h, w = grid_hw
    s = geometry.stride
    c0 = (geometry.size - 1) / 2
    return (c0 - s / 2, c0 + (w - 1) * s + s / 2, c0 + (h - 1) * s + s / 2, c0 - s / 2)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def _image_batch(images: Tensor) -> Tensor:
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, 3, H, W], got shape {tuple(images.shape)}")
    return images.detach().cpu()


def _gray(image: np.ndarray) -> np.ndarray:
    """Luminance as a grey RGB image: under a colour overlay, every colour then comes from the map."""
    y = image @ np.array([0.299, 0.587, 0.114])
    return np.repeat(y[..., None], 3, axis=2)


def _show_image(ax, image: np.ndarray) -> None:
    h, w = image.shape[:2]
    ax.imshow(image, interpolation="nearest")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)


def _pixel_axes(ax, xlabel: bool, ylabel: bool) -> None:
    ax.tick_params(labelsize=7, length=2)
    if xlabel:
        ax.set_xlabel("x (px)", fontsize=8)
    if ylabel:
        ax.set_ylabel("y (px)", fontsize=8)


def _empty(message: str, title: str, out: str | Path | None) -> Figure:
    fig = Figure(figsize=(4, 1.5))
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, transform=ax.transAxes)
    ax.set_title(title)
    return save(fig, out)


def _check_grid(geometry: PatchGeometry, image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> None:
    expected = geometry.grid_size(*image_hw)
    if tuple(grid_hw) != tuple(expected):
        raise ValueError(f"a {image_hw[0]}×{image_hw[1]} px image has a {expected[0]}×{expected[1]} grid of "
                         f"{geometry.size} px windows at stride {geometry.stride}, but the patch logits are "
                         f"{grid_hw[0]}×{grid_hw[1]}; pass the images the logits were computed from")


# ----------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------

def plot_receptive_field(image: Tensor, geometry: PatchGeometry, cell: tuple[int, int] | None = None,
                         out: str | Path | None = None, title: str | None = None) -> Figure:
    """The image with the grid of window centres and the window of one logit (default: the middle).

    Dots mark the centre of every window (one per logit, `stride` px apart); the rectangle outlines
    the `size`×`size` px window that logit `cell` = (i, j) sees, and a small square its own cell.
    """
    if geometry is None:
        raise ValueError("plot_receptive_field needs a PatchGeometry (a BagNet's `model.geometry`); "
                         "ResNet-50's receptive field is the whole image")
    img = to_hwc(image)
    H, W = img.shape[:2]
    gh, gw = geometry.grid_size(H, W)
    if gh < 1 or gw < 1:
        raise ValueError(f"a {H}×{W} px image is smaller than one {geometry.size} px window")
    i, j = (gh // 2, gw // 2) if cell is None else cell
    if not (0 <= i < gh and 0 <= j < gw):
        raise ValueError(f"cell {(i, j)} is outside the {gh}×{gw} grid")
    s, size, c0 = geometry.stride, geometry.size, (geometry.size - 1) / 2

    fig = Figure(figsize=(6.4, 6.4 * H / W + 0.9), layout="constrained")
    ax = fig.add_subplot()
    _show_image(ax, img)
    ys, xs = np.meshgrid(c0 + s * np.arange(gh), c0 + s * np.arange(gw), indexing="ij")
    ax.scatter(xs.ravel(), ys.ravel(), s=7, c="white", edgecolors="black", linewidths=0.3,
               label=f"window centres: {gh}×{gw} grid, {s} px apart", zorder=3)
    rows, cols = geometry.window(i, j)
    ax.add_patch(Rectangle((cols.start - 0.5, rows.start - 0.5), size, size, fill=False, edgecolor="yellow",
                           linewidth=2.0, label=f"{size}×{size} px window of logit ({i}, {j})", zorder=4))
    cx, cy = c0 + s * j, c0 + s * i
    ax.add_patch(Rectangle((cx - s / 2, cy - s / 2), s, s, facecolor="red", edgecolor="white", linewidth=0.8,
                           alpha=0.8, label=f"its cell in the logit map ({s}×{s} px)", zorder=5))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=1, fontsize=8, framealpha=0.9)
    ax.text(0.01, 0.99, f"one logit sees {size}×{size} px; neighbours are {s} px apart; grid {gh}×{gw}",
            transform=ax.transAxes, ha="left", va="top", fontsize=8.5,
            bbox=dict(boxstyle="round,pad=0.3", facecolor="white", alpha=0.85))
    _pixel_axes(ax, True, True)
    ax.set_title(title or f"Receptive field of one patch logit ({H}×{W} px image)")
    return save(fig, out)


def plot_patch_evidence(images: Tensor, patch_logits: Tensor, labels: Tensor, classes: Sequence[str],
                        geometry: PatchGeometry, out: str | Path | None = None, gradcams: Tensor | None = None,
                        gradcam_title: str = "ResNet-50 Grad-CAM") -> Figure:
    """One row per image: the image, patch evidence for the true and the predicted class, [Grad-CAM].

    The prediction is the softmax of the mean patch logit (what the BagNet outputs). Evidence maps are
    the raw patch logits of one class on a diverging colour map centred at 0, with symmetric limits
    shared by the two maps of a row, laid semi-transparently over a grey copy of the image (so all
    colour comes from the map); each cell sits over its window's centre (`evidence_extent`). `gradcams` ([N, h, w],
    e.g. ResNet-50's) adds a fourth column, upsampled to the image and scaled to [0, 1].
    """
    images = _image_batch(images)
    logits = patch_logits.detach().float().cpu()
    labels = torch.as_tensor(labels).cpu().long().reshape(-1)
    n = images.shape[0]
    if logits.dim() != 4 or logits.shape[0] != n or labels.shape[0] != n:
        raise ValueError(f"need patch_logits [N, K, h, w] and labels [N] for N={n} images, got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    if logits.shape[1] != len(classes):
        raise ValueError(f"patch_logits have {logits.shape[1]} classes but {len(classes)} class names were given")
    if gradcams is not None and (gradcams.dim() != 3 or gradcams.shape[0] != n):
        raise ValueError(f"gradcams must be [N, h, w] for N={n}, got {tuple(gradcams.shape)}")
    if n == 0:
        return _empty("no images to show", "Patch evidence", out)
    H, W = images.shape[-2:]
    _check_grid(geometry, (H, W), tuple(logits.shape[-2:]))
    extent = evidence_extent(geometry, tuple(logits.shape[-2:]))
    probs = logits.mean(dim=(2, 3)).softmax(dim=1)
    preds = probs.argmax(dim=1)
    cams = upsample(gradcams.detach().float().cpu(), (H, W)) if gradcams is not None else None

    ncols = 3 if cams is None else 4
    fig = Figure(figsize=(PANEL_IN * ncols + 1.2, PANEL_IN * n * H / W + 0.6), layout="constrained")
    axes = np.asarray(fig.subplots(n, ncols, squeeze=False))
    fig.suptitle(f"What the BagNet looks at: {geometry.size}×{geometry.size} px patch evidence "
                 f"(red = for the class, blue = against)", fontsize=11)
    for r in range(n):
        img = to_hwc(images[r])
        y, p = int(labels[r]), int(preds[r])
        ok = y == p
        ax = axes[r, 0]
        _show_image(ax, img)
        ax.set_title(f"true: {classes[y]}\npredicted: {classes[p]} (p={probs[r, p]:.2f})", fontsize=9,
                     color="darkgreen" if ok else "darkred")
        maps = (logits[r, y], logits[r, p])
        vmax = max(float(m.abs().max()) for m in maps) or 1e-6
        im = None
        for c, (k, m, role) in enumerate(((y, maps[0], "true"), (p, maps[1], "predicted")), start=1):
            ax = axes[r, c]
            _show_image(ax, _gray(img))
            im = ax.imshow(m.numpy(), cmap=EVIDENCE_CMAP, vmin=-vmax, vmax=vmax, alpha=EVIDENCE_ALPHA,
                           extent=extent, interpolation="nearest")
            ax.set_xlim(-0.5, W - 0.5)
            ax.set_ylim(H - 0.5, -0.5)
            ax.set_title(f"evidence for {classes[k]} ({role})\nmean patch logit {float(m.mean()):+.2f}", fontsize=9)
        cb = fig.colorbar(im, ax=list(axes[r, 1:3]), shrink=0.9, pad=0.02)
        cb.set_label(EVIDENCE_LABEL, fontsize=8)
        cb.ax.tick_params(labelsize=7)
        if cams is not None:
            ax = axes[r, 3]
            _show_image(ax, _gray(img))
            cim = ax.imshow(cams[r].numpy(), cmap=CAM_CMAP, vmin=0, vmax=1, alpha=CAM_ALPHA,
                            extent=(-0.5, W - 0.5, H - 0.5, -0.5), interpolation="bilinear")
            ax.set_title(gradcam_title, fontsize=9)
            cb = fig.colorbar(cim, ax=ax, shrink=0.9, pad=0.02)
            cb.set_label(CAM_LABEL, fontsize=8)
            cb.ax.tick_params(labelsize=7)
        for c in range(ncols):
            _pixel_axes(axes[r, c], xlabel=r == n - 1, ylabel=c == 0)
    return save(fig, out)


def plot_gradcam_grid(images: Tensor, cams: Tensor, labels: Tensor, preds: Tensor, classes: Sequence[str],
                      out: str | Path | None = None, title: str = "Grad-CAM", pairs_per_row: int = 3,
                      geometry: PatchGeometry | None = None) -> Figure:
    """Pairs of (image, image + Grad-CAM heat map), titled "true X / predicted Y".

    `cams` [N, h, w] are scaled to [0, 1] per image and drawn over a grey copy of the image: upsampled
    bilinearly over the whole image (`gradcam.upsample`, right for ResNet-50) or, given a BagNet's
    `geometry`, as cells over their windows' centres (`evidence_extent`, no interpolation).
    Titles are green for correct and red for wrong predictions. N = 0 gives a figure that says so.
    """
    images = _image_batch(images)
    n = images.shape[0]
    labels = torch.as_tensor(labels).cpu().long().reshape(-1)
    preds = torch.as_tensor(preds).cpu().long().reshape(-1)
    if cams.dim() != 3 or cams.shape[0] != n or labels.shape[0] != n or preds.shape[0] != n:
        raise ValueError(f"need cams [N, h, w], labels [N] and preds [N] for N={n} images, got "
                         f"{tuple(cams.shape)}, {tuple(labels.shape)} and {tuple(preds.shape)}")
    if n == 0:
        return _empty("no images to show", title, out)
    H, W = images.shape[-2:]
    if geometry is None:
        up = upsample(cams.detach().float().cpu(), (H, W))
        extent, interpolation = (-0.5, W - 0.5, H - 0.5, -0.5), "bilinear"
    else:
        _check_grid(geometry, (H, W), tuple(cams.shape[-2:]))
        up = upsample(cams.detach().float().cpu(), tuple(cams.shape[-2:]))  # same size: only scaled
        extent, interpolation = evidence_extent(geometry, tuple(cams.shape[-2:])), "nearest"
    per_row = max(1, min(n, pairs_per_row))
    nrows = math.ceil(n / per_row)
    fig = Figure(figsize=(PANEL_IN * 2 * per_row + 0.8, PANEL_IN * nrows * H / W + 0.7), layout="constrained")
    axes = np.asarray(fig.subplots(nrows, 2 * per_row, squeeze=False))
    fig.suptitle(title, fontsize=12)
    cim = None
    for idx in range(nrows * per_row):
        r, c = divmod(idx, per_row)
        ax_img, ax_cam = axes[r, 2 * c], axes[r, 2 * c + 1]
        if idx >= n:
            ax_img.axis("off")
            ax_cam.axis("off")
            continue
        img = to_hwc(images[idx])
        y, p = int(labels[idx]), int(preds[idx])
        _show_image(ax_img, img)
        ax_img.set_title(f"true {classes[y]} / predicted {classes[p]}", fontsize=9,
                         color="darkgreen" if y == p else "darkred")
        _show_image(ax_cam, _gray(img))
        cim = ax_cam.imshow(up[idx].numpy(), cmap=CAM_CMAP, vmin=0, vmax=1, alpha=CAM_ALPHA,
                            extent=extent, interpolation=interpolation)
        ax_cam.set_xlim(-0.5, W - 0.5)
        ax_cam.set_ylim(H - 0.5, -0.5)
        ax_cam.set_title("heat map over the image", fontsize=9)
        last_row = idx + per_row >= n
        _pixel_axes(ax_img, xlabel=last_row, ylabel=c == 0)
        _pixel_axes(ax_cam, xlabel=last_row, ylabel=False)
    cb = fig.colorbar(cim, ax=list(axes.ravel()), shrink=0.6, pad=0.01)
    cb.set_label(CAM_LABEL, fontsize=9)
    return save(fig, out)
