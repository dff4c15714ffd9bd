"""Figures of a run: the glue between a run directory and the plotting functions, one call per figure.

The notebooks call these so that each of their cells stays one line; every function saves its PNG
into RUN_DIR/figures/ under a name from the registry (`figures.py`: names start with the notebook's number)
and returns the Figure. Functions of notebook 04 study the run's BagNet (`Run.bagnet`: the one notebook 03
trained) unless told another.
"""
from __future__ import annotations

import json
import re

import pandas as pd
import torch
from matplotlib.figure import Figure

from bagnet_lib.blackout.aggregate import aggregate
from bagnet_lib.blackout.masks import make_mask
from bagnet_lib.blackout.study import blackout_runs, cache_step
from bagnet_lib.data.tensors import eval_batch, normalize
from bagnet_lib.figures import plots
from bagnet_lib.figures.evidence import plot_gradcam_grid, plot_patch_evidence, plot_receptive_field
from bagnet_lib.figures.registry import figure_path
from bagnet_lib.figures.widgets import BlackoutExplorer
from bagnet_lib.nets.adapt import adaptation_label
from bagnet_lib.nets.gradcam import grad_cam
from bagnet_lib.nets.models import model_label
from bagnet_lib.nets.run import Run
from bagnet_lib.writeup.paper import PAPER_POINTS_LABEL, paper_changes


def _out(run: Run, name: str):
    return figure_path(run.figures, name)


# ----------------------------------------------------------------------------------- 01
def split_counts(run: Run) -> Figure:
    """Images per class and split (notebook 01; the paper's Fig. 1)."""
    return plots.plot_split_counts(run.split, _out(run, "01_split_counts.png"))


def samples(run: Run, per_class: int = 6) -> Figure:
    """A grid of example images per class (notebook 01)."""
    return plots.plot_sample_grid(plots.sample_images(run.data_dir, run.split, per_class, run.seed),
                                  _out(run, "01_samples.png"))


def image_sizes(run: Run) -> tuple[Figure, pd.DataFrame]:
    """The image-size distribution (notebook 01); also returns the table."""
    sizes = plots.image_sizes(run.data_dir, run.split)
    return plots.plot_image_sizes(sizes, _out(run, "01_image_sizes.png")), sizes


def augmentations(run: Run, index: int = 0, n: int = 6) -> Figure:
    """One training image, its eval view and `n` training augmentations per training recipe: one row when every
    network trains alike, else ResNet-50's and the BagNets' (`Profile.bagnet_settings`) (notebook 01)."""
    train = run.tensors("train", progress=False)
    recipes: dict[tuple, list[str]] = {}
    for name, label in (("resnet50", "ResNet-50"), ("bagnet33", "BagNets")):
        p = run.profile.for_model(name)
        recipes.setdefault((p.train_crop, p.crop_scale_min, p.crop_scale_max), []).append(label)
    rows, eval_view = {}, None
    for (size, smin, smax), labels in recipes.items():
        rows[" & ".join(labels)], eval_view = plots.augmentation_examples(train.images[index], size, n, run.seed, smin,
                                                                          smax, run.profile.image_size)
    return plots.plot_augmentations(train.images[index], rows, eval_view, _out(run, "01_augmentation.png"))


def audit_tables(run: Run) -> tuple[pd.Series, pd.DataFrame]:
    """Problem counts by kind and the list of problems (notebook 01)."""
    audit = json.loads((run.run_dir / "audit.json").read_text())
    problems = pd.DataFrame(audit["problems"], columns=["path", "kind", "detail", "group"])
    return pd.Series(audit["summary"], name="files", dtype=int), problems


# ----------------------------------------------------------------------------------- 02 / 03
def _nb(model_name: str) -> str:
    return "02" if model_name == "resnet50" else "03"


def learning_curves(run: Run, model_name: str) -> Figure:
    """Train/val loss and accuracy per epoch (notebooks 02, 03)."""
    history = pd.read_csv(run.results / f"{model_name}_history.csv")
    return plots.plot_history(history, _out(run, f"{_nb(model_name)}_{model_name}_history.png"),
                              f"{model_label(model_name)}: learning curves ({run.profile.name} profile)")


def confusion(run: Run, model_name: str) -> Figure:
    """Confusion matrix on the test split (notebooks 02, 03)."""
    metrics = json.loads((run.results / f"{model_name}_metrics.json").read_text())
    return plots.plot_confusion(metrics["test"]["confusion"], run.classes,
                                _out(run, f"{_nb(model_name)}_{model_name}_confusion.png"),
                                f"{model_label(model_name)}: confusion matrix (test, accuracy {metrics['test']['acc']:.3f})")


def adaptation(run: Run, model_name: str) -> pd.DataFrame:
    """Validation accuracy and cross-entropy of the best epoch as trained and after its adaptation to the test size
    (`nets.adapt`), where the profile asks for one (notebooks 02, 03)."""
    history = pd.read_csv(run.results / f"{model_name}_history.csv")
    metrics = json.loads((run.results / f"{model_name}_metrics.json").read_text())
    best = history.loc[history["val_acc"].idxmax()]
    p = run.profile.for_model(model_name)
    rows = [{"network": f"best epoch ({int(best['epoch'])}) as trained on {p.train_crop} px crops",
             "val accuracy": best["val_acc"], "val cross-entropy": best["val_loss"], "seconds": None}]
    if metrics.get("adapted"):
        rows.append({"network": f"then {adaptation_label(metrics['adapted'])}", "val accuracy": metrics["val"]["acc"],
                     "val cross-entropy": metrics["val"]["loss"], "seconds": metrics["adapted"]["seconds"]})
    return pd.DataFrame(rows).set_index("network").round(4)


def hardest_mistakes(run: Run, model_name: str, n: int = 6) -> list[int]:
    """Test indices of the `n` most confident wrong predictions (falls back to the least confident right ones)."""
    pred = pd.read_csv(run.results / f"{model_name}_test_predictions.csv")
    wrong = pred[~pred["correct"]].sort_values("prob", ascending=False)
    if len(wrong) < n:
        wrong = pd.concat([wrong, pred[pred["correct"]].sort_values("prob").head(n - len(wrong))])
    return [int(i) for i in wrong.index[:n]]


def gradcam_mistakes(run: Run, model_name: str, n: int = 6) -> Figure:
    """Grad-CAM (hooks on `layer4`) of the test images the model gets most confidently wrong (notebooks 02, 03)."""
    test = run.tensors("test", progress=False)
    idx = hardest_mistakes(run, model_name, n)
    images = eval_batch(test, run.profile.image_size)[idx]
    model = run.model(model_name)
    x = normalize(images.to(next(model.parameters()).device))
    with torch.no_grad():
        preds = model(x).argmax(1).cpu()
    cams = grad_cam(model, x).cpu()
    return plot_gradcam_grid(images, cams, test.labels[idx], preds, run.classes,
                             _out(run, f"{_nb(model_name)}_{model_name}_gradcam.png"),
                             f"{model_label(model_name)}: Grad-CAM of its most confident mistakes", geometry=model.geometry)


def receptive_field(run: Run, model_name: str = "bagnet33", index: int = 0) -> Figure:
    """The window of one patch logit and the stride-8 grid, drawn on a test image (notebook 03)."""
    test = run.tensors("test", progress=False)
    image = eval_batch(test, run.profile.image_size)[index]
    geometry = run.model(model_name, best=False).geometry
    return plot_receptive_field(image, geometry, out=_out(run, f"03_{model_name}_receptive_field.png"),
                                title=f"{model_label(model_name)} at {run.profile.image_size} px")


def patch_evidence(run: Run, model_name: str = "bagnet33", n: int = 4) -> Figure:
    """Class evidence per patch for the true and predicted class, next to ResNet-50's Grad-CAM when trained (notebook 03)."""
    test = run.tensors("test", progress=False)
    idx = hardest_mistakes(run, model_name, n // 2) + list(range(n - n // 2))
    images = eval_batch(test, run.profile.image_size)[idx]
    model = run.model(model_name)
    with torch.no_grad():
        logits = model.patch_logits(normalize(images.to(next(model.parameters()).device))).float().cpu()
    cams = None
    if run.checkpoint("resnet50").is_file():
        resnet = run.model("resnet50")
        cams = grad_cam(resnet, normalize(images.to(next(resnet.parameters()).device))).cpu()
    return plot_patch_evidence(images, logits, test.labels[idx], run.classes, model.geometry,
                               out=_out(run, f"03_{model_name}_evidence.png"), gradcams=cams)


def training_figures(run: Run, model_name: str, n: int = 6) -> list[Figure]:
    """Learning curves, confusion matrix and Grad-CAM of the mistakes: what notebook 02 shows one by one, in one
    call (notebook 03 uses it for any BagNet)."""
    return [learning_curves(run, model_name), confusion(run, model_name), gradcam_mistakes(run, model_name, n)]


# ----------------------------------------------------------------------------------- 04
def mechanism(run: Run, keep: torch.Tensor, index: int = 0, bagnet: str | None = None) -> Figure:
    """One test image's patch logits, a keep-mask, and the image logits `mean` and `zero` make of them (notebook 04)."""
    bagnet = run.bagnet(bagnet)
    image = eval_batch(run.tensors("test", progress=False), run.profile.image_size)[index]
    x, logits, label = _mechanism_logits(run, keep, index, bagnet)
    return plots.plot_mechanism(image, x[0], keep, logits, run.classes, label,
                                _out(run, "04_mechanism.png"), title=f"{model_label(bagnet)}, test image {index}")


def _mechanism_logits(run: Run, keep: torch.Tensor, index: int, bagnet: str):
    """One test image's patch logits [1, K, H', W'], its image logits (all kept, `mean`, `zero`) and its label."""
    cache = cache_step(run, bagnet, "test", progress=False)
    x = cache.patch_logits[index:index + 1].float()
    logits = {"all kept": aggregate(x)[0], "mean": aggregate(x, keep, "mean")[0], "zero": aggregate(x, keep, "zero")[0]}
    return x, logits, int(cache.labels[index])


def _paper_panels(run: Run, seed: int, bagnet: str | None) -> dict[str, torch.Tensor]:
    h, w = cache_step(run, run.bagnet(bagnet), "test", progress=False).grid
    return {"alternating: raster (a spatial\nanalogue of the code's parity)": make_mask("raster", h, w),
            **{f"random {int(f * 100)}% dropped": make_mask("random", h, w, f, seed) for f in (0.75, 0.5, 0.25)}}


def paper_masks(run: Run, index: int = 0, seed: int = 0, bagnet: str | None = None) -> Figure:
    """The paper's Fig. 4: alternating and random 75/50/25 % blackout on one test image."""
    image = eval_batch(run.tensors("test", progress=False), run.profile.image_size)[index]
    return plots.plot_blackout_masks(image, _paper_panels(run, seed, bagnet), _out(run, "04_blackout_masks.png"))


def mask_accuracy(run: Run) -> Figure:
    """Every random mask's test accuracy at the paper's fractions, `mean` vs `zero` (seaborn strip plot)."""
    runs = blackout_runs(run, ("paper",))
    return plots.plot_mask_accuracy(runs[runs["kind"] == "random"], _out(run, "04_mask_accuracy.png"))


def drop_curve(run: Run) -> Figure:
    """Accuracy and loss from 0 to 95 % dropped, `mean` vs `zero`, as changes from all patches kept, with the paper's
    points as changes from its own all-kept BagNet-33."""
    return plots.plot_drop_curve(blackout_runs(run, ("curve",)), _out(run, "04_drop_curve.png"), paper_changes(),
                                 paper_label=PAPER_POINTS_LABEL)


def blackout_kinds(run: Run, bagnet: str | None = None) -> Figure:
    """Patch-logit vs channel (the paper's code) vs pixel blackout, the BagNet and ResNet-50."""
    bagnet = run.bagnet(bagnet)
    return plots.plot_blackout_kinds(blackout_runs(run, ("paper", "channel", "pixel")),
                                     _out(run, "04_blackout_kinds.png"), baselines=_baselines(run, bagnet), bagnet=bagnet,
                                     paper=paper_changes(), paper_label=PAPER_POINTS_LABEL)


def _baselines(run: Run, bagnet: str) -> dict[str, float]:
    """Each network's test accuracy with nothing dropped."""
    return {m: json.loads((run.results / f"{m}_metrics.json").read_text())["test"]["acc"] for m in ("resnet50", bagnet)}


def structured(run: Run) -> Figure:
    """Centre/border and most/least confident masks next to random masks."""
    return plots.plot_structured(blackout_runs(run, ("paper", "structured")), _out(run, "04_structured.png"))


def aggregations(run: Run) -> Figure:
    """Every aggregation under random blackout."""
    return plots.plot_aggregations(blackout_runs(run, ("paper", "aggregations")), _out(run, "04_aggregations.png"))


def frontier(run: Run) -> Figure:
    """Accuracy against GFLOPs per image for every way of spending less compute (results/frontier.csv)."""
    return plots.plot_frontier(pd.read_csv(run.results / "frontier.csv"), _out(run, "04_frontier.png"))


def explorer(run: Run, max_images: int = 50, bagnet: str | None = None):
    """The interactive blackout explorer over the run's test images (notebook 04)."""
    cache = cache_step(run, run.bagnet(bagnet), "test", progress=False)
    images = eval_batch(run.tensors("test", progress=False), run.profile.image_size)
    return BlackoutExplorer(cache, images, run.classes, max_images=max_images)


def finding(run: Run, name: str, bagnet: str | None = None, *, keep: torch.Tensor | None = None, index: int = 0,
            seed: int = 0) -> str:
    """The one sentence notebook 04 prints under its figure `name` (a registry name): what the figure shows, in this
    run's numbers (`plots.describe_*`). `04_mechanism.png` needs the mask `keep` and the image `index`,
    `04_blackout_masks.png` the random masks' `seed`; the explorer's sentence is its state's `text`."""
    bagnet = run.bagnet(bagnet)
    if name == "04_mechanism.png":
        if keep is None:
            raise ValueError("the mechanism's finding needs the mask: finding(run, '04_mechanism.png', keep=keep, "
                             "index=...)")
        _, logits, label = _mechanism_logits(run, keep, index, bagnet)
        return plots.describe_mechanism(logits, label, run.classes, int(keep.sum()), keep.numel(), index)
    if name == "04_blackout_masks.png":
        return plots.describe_paper_masks(_paper_panels(run, seed, bagnet), index, seed)
    if name == "04_mask_accuracy.png":
        return plots.describe_mask_accuracy(blackout_runs(run, ("paper",)))
    if name == "04_drop_curve.png":
        return plots.describe_drop_curve(blackout_runs(run, ("curve",)), paper_changes())
    if name == "04_blackout_kinds.png":
        return plots.describe_blackout_kinds(blackout_runs(run, ("paper", "channel", "pixel")), _baselines(run, bagnet),
                                             bagnet, paper_changes())
    if name == "04_structured.png":
        return plots.describe_structured(blackout_runs(run, ("paper", "structured")))
    if name == "04_aggregations.png":
        return plots.describe_aggregations(blackout_runs(run, ("paper", "aggregations")))
    if name == "04_frontier.png":
        return plots.describe_frontier(pd.read_csv(run.results / "frontier.csv"))
    raise ValueError(f"no finding for {name!r}: notebook 04's figures are {', '.join(FINDINGS)}")


FINDINGS = ("04_mechanism.png", "04_blackout_masks.png", "04_mask_accuracy.png", "04_drop_curve.png",
            "04_blackout_kinds.png", "04_structured.png", "04_aggregations.png", "04_frontier.png")


# ----------------------------------------------------------------------------------- 05
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def show_report_section(run: Run, text: str) -> None:
    """Display one section of REPORT.md (`report.run_report_sections`) in the notebook: its Markdown as Markdown and
    each figure it links (relative to the run directory) as an embedded PNG, so the executed notebook shows every
    figure wherever it is opened, the run directory gone or not (notebook 05)."""
    from IPython.display import Image, Markdown, display

    pos = 0
    for link in IMAGE_LINK.finditer(text):
        if text[pos:link.start()].strip():
            display(Markdown(text[pos:link.start()]))
        display(Image(filename=str(run.run_dir / link.group(1))))
        pos = link.end()
    if text[pos:].strip():
        display(Markdown(text[pos:]))
