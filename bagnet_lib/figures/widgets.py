"""The interactive blackout explorer: pick an image, a mask and an aggregation, see what changes.

Introduced in notebook 04. `BlackoutExplorer(cache, images)` works on a BagNet `LogitCache` (patch
logits [N, K, H', W']) and the same test images (uint8 [N, 3, H, W], eval-transformed). For one image
it builds the keep-mask, aggregates the patch logits with every patch kept ("all patches") and with
the mask ("after blackout"), and draws one figure with three panels:

1. the image with the dropped tiles painted grey (`pixel_blackout`; the grid tiles are laid evenly over
   the image, so they show *where* a patch logit sits, not its full 33-px receptive field);
2. the patch-logit map of the class predicted with all patches, dropped cells hatched;
3. class probabilities (softmax of the aggregated logits) before and after the blackout.

"Before" uses the same aggregation as "after", with nothing dropped, so the difference between the
two is the effect of the mask alone (for `mean` and `zero`, "before" is the BagNet's own output).

`update(...)` is plain Python + matplotlib (what tests and papermill call); `widget()` wraps it in
ipywidgets controls, imported lazily. Each explorer owns one `matplotlib.figure.Figure` that pyplot
does not track; every `update` refills its artists (no new figure, nothing to close), so moving a
slider never leaks figures and a notebook cell never shows a stray copy. `state.figure` is that
figure as drawn by the latest update (save or display it before the next one if you need both). A
state shows its figure when it is the last expression of a notebook cell (`_repr_png_`).
"""
from __future__ import annotations

import html
import math
import operator
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from bagnet_lib.blackout.aggregate import AGGREGATIONS, aggregate
from bagnet_lib.blackout.masks import make_mask
from bagnet_lib.blackout.pixels import pixel_blackout
from bagnet_lib.blackout.sweep import LogitCache
from bagnet_lib.figures.plots import png_bytes, save, to_hwc

# Names shown to users → mask kinds of `make_mask`. The plain kind names are accepted too.
PATTERNS = {
    "checkerboard": "checkerboard",
    "raster": "raster",
    "random": "random",
    "center": "center",
    "border": "border",
    "block": "block",
    "top-k": "topk",
    "bottom-k": "bottomk",
}
_ALIASES = {"topk": "top-k", "bottomk": "bottom-k"}
ALTERNATING = ("checkerboard", "raster")  # always drop half: drop_frac is ignored
SEEDED = ("random", "block")  # the only patterns that use the seed
NO_PATCH_KEPT = "no patch kept: nothing to aggregate"

BEFORE_COLOR = "#4c72b0"
AFTER_COLOR = "#dd8452"


@dataclass
class ExplorerState:
    """Everything one `update` computed for one image and one blackout setting."""

    image_index: int
    pattern: str  # the user-facing name ("top-k", not "topk")
    drop_frac: float  # as requested (checkerboard/raster ignore it: see kept_frac)
    seed: int  # as requested (only random/block use it)
    aggregation: str
    keep: Tensor  # bool [H', W'], True = kept
    probs_before: Tensor  # [K], every patch kept
    probs_after: Tensor  # [K], NaN everywhere when the mask keeps no patch
    pred_before: str
    pred_after: str  # "none" when the mask keeps no patch
    true_label: str
    kept_frac: float
    text: str
    figure: "object" = field(repr=False)  # the explorer's matplotlib Figure (redrawn by the next update)

    @property
    def n_kept(self) -> int:
        return int(self.keep.sum())

    def __repr__(self) -> str:
        """One readable line (what `text` says), not the mask: a 24×24 boolean tensor is no summary."""
        return f"ExplorerState(image {self.image_index}: {self.text})"

    @property
    def changed(self) -> bool:
        """Whether the blackout changed the prediction (True when nothing was kept)."""
        return self.pred_after != self.pred_before

    def _repr_png_(self) -> bytes:
        return png_bytes(self.figure)


def _canonical_pattern(pattern: str) -> str:
    name = _ALIASES.get(pattern, pattern) if isinstance(pattern, str) else None
    if name not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; choose one of {', '.join(PATTERNS)}")
    return name


class BlackoutExplorer:
    """Interactive patch-blackout explorer over a BagNet logit cache and its test images."""

    def __init__(self, cache: LogitCache, images: Tensor, classes: Sequence[str] | None = None,
                 max_images: int | None = 50):
        pl = cache.patch_logits
        if pl.dim() != 4:
            raise ValueError(f"cache.patch_logits must be [N, K, H', W'], got shape {tuple(pl.shape)}")
        n, k, _, _ = pl.shape
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError("images must be a uint8 tensor [N, 3, H, W]"
                             + (f", got shape {tuple(images.shape)}" if isinstance(images, Tensor) else ""))
        if images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 (eval-transformed, not normalised), got {images.dtype}")
        if len(images) != n:
            raise ValueError(f"{len(images)} images but the cache holds {n}: pass the same test images")
        if len(cache.labels) != n:
            raise ValueError(f"cache has {len(cache.labels)} labels for {n} images")
        names = list(classes) if classes is not None else list(cache.classes)
        if not names:
            names = [f"class {i}" for i in range(k)]
        if len(names) != k:
            raise ValueError(f"{len(names)} class names for {k} classes in the cache")
        if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
            raise ValueError(f"max_images must be a positive int or None, got {max_images!r}")
        self.cache = cache
        self.images = images
        self.classes = names
        self.max_images = max_images
        self.state: ExplorerState | None = None
        self._artists: dict | None = None  # the one figure and its artists, built on the first update

    # ------------------------------------------------------------------ core
    @property
    def n_images(self) -> int:
        return self.cache.patch_logits.shape[0]

    def label_of(self, i: int) -> str:
        return self.classes[int(self.cache.labels[i])]

    def file_name(self, i: int) -> str:
        paths = self.cache.paths
        return Path(paths[i]).name if i < len(paths) and paths[i] else ""

    def _validate(self, image_index, pattern, drop_frac, seed, aggregation) -> tuple[int, str, float, int]:
        try:
            if isinstance(image_index, bool):
                raise TypeError
            i = operator.index(image_index)
        except TypeError:
            raise ValueError(f"image_index must be an int, got {image_index!r}") from None
        if not 0 <= i < self.n_images:
            raise ValueError(f"image_index {i} is out of range: the cache holds {self.n_images} images "
                             f"(0 … {self.n_images - 1})")
        name = _canonical_pattern(pattern)
        try:
            frac = float(drop_frac)
        except (TypeError, ValueError):
            raise ValueError(f"drop_frac must be a number in [0, 1], got {drop_frac!r}") from None
        if not 0.0 <= frac <= 1.0:  # also rejects NaN
            raise ValueError(f"drop_frac must lie in [0, 1], got {drop_frac!r}")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}")
        try:
            s = int(seed)
        except (TypeError, ValueError):
            raise ValueError(f"seed must be an int, got {seed!r}") from None
        return i, name, frac, s

    def update(self, image_index: int = 0, pattern: str = "checkerboard", drop_frac: float = 0.5,
               seed: int = 0, aggregation: str = "mean") -> ExplorerState:
        """Compute the blackout for one image and redraw the figure; returns (and keeps) the state."""
        i, name, frac, seed = self._validate(image_index, pattern, drop_frac, seed, aggregation)
        x = self.cache.patch_logits[i:i + 1].float()  # [1, K, H', W']
        _, k, h, w = x.shape
        kind = PATTERNS[name]
        keep = make_mask(kind, h, w, frac, seed, patch_logits=x if kind in ("topk", "bottomk") else None)
        keep = keep.reshape(h, w).to(torch.bool)

        probs_before = torch.softmax(aggregate(x, None, aggregation).double(), dim=1)[0].float()
        n_kept = int(keep.sum())
        if n_kept > 0:
            probs_after = torch.softmax(aggregate(x, keep, aggregation).double(), dim=1)[0].float()
            pred_after = self.classes[int(probs_after.argmax())]
        else:
            probs_after = torch.full((k,), math.nan)
            pred_after = "none"
        b = int(probs_before.argmax())
        pred_before = self.classes[b]
        true_label = self.label_of(i)

        setting = name + (f" seed {seed}" if name in SEEDED else "")
        head = (f"true: {true_label} | all patches: {pred_before} {float(probs_before[b]):.2f} → "
                f"{n_kept}/{h * w} patches kept ({setting}, {aggregation}): ")
        if n_kept > 0:
            text = head + f"{pred_after} {float(probs_after.max()):.2f}"
        else:
            text = head + NO_PATCH_KEPT

        fig = self._draw(i, name, seed, aggregation, x[0], keep, b, probs_before, probs_after,
                         pred_before, pred_after, true_label)
        self.state = ExplorerState(i, name, frac, seed, aggregation, keep, probs_before, probs_after,
                                   pred_before, pred_after, true_label, n_kept / (h * w), text, fig)
        return self.state

    def save(self, path: str | Path, dpi: int = 120) -> Path:
        """Save the last state's figure as PNG (tight bounding box), creating parent folders."""
        if self.state is None:
            raise RuntimeError("nothing to save yet: call explorer.update(...) first")
        save(self.state.figure, path, dpi)
        return Path(path)

    # ------------------------------------------------------------------ drawing
    def _build(self, k: int, h: int, w: int) -> None:
        """Create the explorer's one figure and its artists; `_draw` only refills them.

        A pyplot-free `Figure` (nothing to close, never auto-shown twice in a notebook). Refilling
        artists instead of rebuilding axes keeps a slider move cheap.
        """
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        fig = Figure(figsize=(15.5, 5.0), layout="constrained")
        ax_img, ax_map, ax_bar = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1.15, 1.1]})
        a = self._artists = {"fig": fig, "img": ax_img, "map": ax_map, "bar": ax_bar, "hatch": None}

        # (1) the image with the dropped tiles painted grey
        a["img_im"] = ax_img.imshow(to_hwc(self.images[0]))
        ax_img.set_xticks([])
        ax_img.set_yticks([])

        # (2) evidence map of the class predicted with every patch, dropped cells hatched
        a["map_im"] = ax_map.imshow(torch.zeros(h, w).numpy(), cmap="RdBu_r", vmin=-1, vmax=1,
                                    interpolation="nearest")
        ax_map.set_xlim(-0.5, w - 0.5)
        ax_map.set_ylim(h - 0.5, -0.5)
        ax_map.xaxis.set_major_locator(MaxNLocator(integer=True))  # patch indices, not half-cells
        ax_map.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax_map.set_xlabel("patch column")
        ax_map.set_ylabel("patch row")
        fig.colorbar(a["map_im"], ax=ax_map, label="patch logit", shrink=0.85)

        # (3) class probabilities before vs after
        ys = [float(j) for j in range(k)]
        bh = 0.38
        a["bars_before"] = ax_bar.barh([y - bh / 2 for y in ys], [0.0] * k, height=bh, color=BEFORE_COLOR,
                                       label="all patches")
        a["bars_after"] = ax_bar.barh([y + bh / 2 for y in ys], [0.0] * k, height=bh, color=AFTER_COLOR,
                                      label="after blackout")
        a["labels"] = [ax_bar.text(0, y + d, "", va="center", fontsize=8) for d in (-bh / 2, bh / 2) for y in ys]
        ax_bar.set_yticks(ys, self.classes)
        ax_bar.set_ylim(k - 0.5, -0.5)
        ax_bar.set_xlim(0, 1)
        ax_bar.set_xlabel("probability")
        ax_bar.grid(axis="x", alpha=0.3)
        ax_bar.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=9, frameon=False)
        a["empty"] = ax_bar.text(0.62, 0.5, NO_PATCH_KEPT, transform=ax_bar.transAxes, ha="center",
                                 va="center", color="firebrick", fontsize=11, visible=False,
                                 bbox={"facecolor": "white", "edgecolor": "firebrick"})

    def _draw(self, i, name, seed, aggregation, x, keep, b, probs_before, probs_after, pred_before,
              pred_after, true_label):
        """Refill the explorer's figure for one state and return it."""
        from matplotlib.collections import PatchCollection
        from matplotlib.patches import Rectangle

        k, h, w = x.shape
        if getattr(self, "_artists", None) is None:
            self._build(k, h, w)
        a = self._artists
        n_kept, total = int(keep.sum()), h * w

        # (1) image
        img = pixel_blackout(self.images[i:i + 1].clone(), keep)[0]
        a["img_im"].set_data(to_hwc(img))
        oracle = " (an oracle: ranked by the all-patch prediction)" if name in ("top-k", "bottom-k") else ""
        a["img"].set_title(f"{name}{f' (seed {seed})' if name in SEEDED else ''}: "
                           f"{n_kept} of {total} patches kept\n(grey = blacked out){oracle}")
        fname = self.file_name(i)
        a["img"].set_xlabel(f"image {i}" + (f": {fname}" if fname else ""), fontsize=9)

        # (2) evidence map
        ev = x[b].numpy()
        lim = float(max(abs(ev.min()), abs(ev.max()), 1e-6))
        a["map_im"].set_data(ev)
        a["map_im"].set_clim(-lim, lim)  # symmetric: white = no evidence either way
        if a["hatch"] is not None:
            a["hatch"].remove()
            a["hatch"] = None
        dropped = [Rectangle((c - 0.5, r - 0.5), 1, 1) for r, c in (~keep).nonzero().tolist()]
        if dropped:
            a["hatch"] = a["map"].add_collection(PatchCollection(
                dropped, facecolor=(0.55, 0.55, 0.55, 0.75), edgecolor=(0.2, 0.2, 0.2, 0.9), linewidth=0,
                hatch="///"), autolim=False)
        a["map"].set_title(f"patch evidence for '{pred_before}' (all-patch prediction)\n"
                           f"hatched grey = dropped")

        # (3) probabilities
        values = probs_before.tolist() + probs_after.tolist()
        for rect, v in zip(list(a["bars_before"]) + list(a["bars_after"]), values):
            rect.set_width(0.0 if math.isnan(v) else v)
        for label, v in zip(a["labels"], values):
            if math.isnan(v):
                label.set(x=0.01, text="n/a", ha="left", color="dimgray")
            elif v > 0.88:  # inside the bar's end, so the label stays within the 0–1 axis
                label.set(x=v - 0.01, text=f"{v:.2f}", ha="right", color="white")
            else:
                label.set(x=v + 0.01, text=f"{v:.2f}", ha="left", color="black")
        true_idx = int(self.cache.labels[i])
        a["bar"].set_yticks(range(k), [c + (" (true)" if j == true_idx else "") for j, c in enumerate(self.classes)])
        for j, tick in enumerate(a["bar"].get_yticklabels()):
            tick.set_fontweight("bold" if j == true_idx else "normal")
        a["empty"].set_visible(n_kept == 0)
        after = "none (no patch kept)" if n_kept == 0 else f"{pred_after} {float(probs_after.max()):.2f}"
        a["bar"].set_title(f"class probabilities ({aggregation})\n"
                           f"before: {pred_before} {float(probs_before[b]):.2f} → after: {after}")

        same = pred_after == pred_before
        a["fig"].suptitle(f"true: {true_label}  |  prediction with all patches: {pred_before}  →  "
                          f"after blackout: {pred_after}  ({'unchanged' if same else 'CHANGED'})", fontsize=13,
                          color="black" if same else "firebrick")
        return a["fig"]

    # ------------------------------------------------------------------ ipywidgets front end
    def widget(self):
        """An `ipywidgets.VBox`: image picker, pattern, drop fraction, seed, aggregation, text, figure."""
        import ipywidgets as W
        from IPython.display import display

        n_pick = self.n_images if self.max_images is None else min(self.n_images, self.max_images)
        options = []
        for i in range(n_pick):
            fname = self.file_name(i)
            options.append((f"{i}: {self.label_of(i)}" + (f" ({fname})" if fname else ""), i))
        wide = {"description_width": "initial"}
        image = W.Dropdown(options=options, value=0, description="image", style=wide,
                           layout=W.Layout(width="340px"))
        pattern = W.Dropdown(options=list(PATTERNS), value="checkerboard", description="pattern")
        drop = W.FloatSlider(value=0.5, min=0.0, max=0.95, step=0.05, description="drop fraction",
                             continuous_update=False, readout_format=".2f", style=wide)
        seed = W.IntSlider(value=0, min=0, max=99, step=1, description="seed", continuous_update=False)
        agg = W.Dropdown(options=list(AGGREGATIONS), value="mean", description="aggregation", style=wide)
        out = W.Output()
        line = W.HTML()
        self.controls = {"image": image, "pattern": pattern, "drop_frac": drop, "seed": seed,
                         "aggregation": agg, "output": out, "text": line}

        def sync_enabled():
            drop.disabled = pattern.value in ALTERNATING
            seed.disabled = pattern.value not in SEEDED

        def refresh(_change=None):
            sync_enabled()
            try:
                state = self.update(image.value, pattern.value, drop.value, seed.value, agg.value)
            except Exception as exc:  # JupyterLab shows a callback's error nowhere: show it in the explorer
                line.value = (f"<b style='color:firebrick'>error in the explorer:</b> "
                              f"{html.escape(f'{type(exc).__name__}: {exc}')}")
                with out:
                    out.clear_output()
                    traceback.print_exc()
                if isinstance(exc, ValueError):  # a setting the controls should not allow: shown, not fatal
                    return
                raise  # a bug: also reaches the kernel's log (and the browser test)
            color = "firebrick" if state.changed else "inherit"
            line.value = f"<span style='font-family:monospace;color:{color}'>{html.escape(state.text)}</span>"
            with out:
                out.clear_output(wait=True)
                display(state)  # rendered through ExplorerState._repr_png_, whatever the matplotlib backend

        for ctl in (image, pattern, drop, seed, agg):
            ctl.observe(refresh, names="value")
        refresh()
        return W.VBox([W.HBox([image, pattern, agg]), W.HBox([drop, seed]), line, out])
