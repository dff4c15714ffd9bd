"""The registry of figures: every PNG a run makes, its caption and the notebook that draws it.

`views` saves through `figure_path` (so an unregistered name fails at once), the report embeds figures with
`caption`, and the tests check a run's figures folder against `expected`. `{bagnet}` in a name stands for the
BagNet the run studies (the notebooks' `BAGNET`), e.g. `03_{bagnet}_history.png` → `03_bagnet17_history.png`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bagnet_lib.nets.models import model_label


@dataclass(frozen=True)
class FigureSpec:
    name: str  # file name; `{bagnet}` is replaced by the run's BagNet
    caption: str  # `{Bagnet}` is replaced by its printed name (BagNet-33)
    notebook: str  # "01" … "05"


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("01_split_counts.png", "Images per class and split (the paper's Fig. 1).", "01"),
    FigureSpec("01_samples.png", "Example images of each class.", "01"),
    FigureSpec("01_image_sizes.png", "Image sizes before resizing.", "01"),
    FigureSpec("01_augmentation.png", "One training image: the eval view and training augmentations.", "01"),
    FigureSpec("02_resnet50_history.png", "ResNet-50 learning curves.", "02"),
    FigureSpec("02_resnet50_confusion.png", "ResNet-50 confusion matrix on the test split.", "02"),
    FigureSpec("02_resnet50_gradcam.png", "ResNet-50 Grad-CAM of its most confident mistakes.", "02"),
    FigureSpec("03_{bagnet}_history.png", "{Bagnet} learning curves.", "03"),
    FigureSpec("03_{bagnet}_confusion.png", "{Bagnet} confusion matrix on the test split.", "03"),
    FigureSpec("03_{bagnet}_gradcam.png", "{Bagnet} Grad-CAM of its most confident mistakes.", "03"),
    FigureSpec("03_{bagnet}_receptive_field.png", "The window of one {Bagnet} patch logit and the stride-8 grid.",
               "03"),
    FigureSpec("03_{bagnet}_evidence.png", "{Bagnet} patch evidence for test images (true and predicted class), "
               "next to ResNet-50's Grad-CAM.", "03"),
    FigureSpec("04_mechanism.png", "One test image: its patch logits, a random mask, and the image logits that "
               "`mean` and `zero` aggregation make of the kept patches.", "04"),
    FigureSpec("04_blackout_masks.png", "The paper's four blackout settings on one test image (the paper's Fig. 4).",
               "04"),
    FigureSpec("04_mask_accuracy.png", "Test accuracy of every random mask at the paper's three fractions, "
               "`mean` and `zero` aggregation.", "04"),
    FigureSpec("04_drop_curve.png", "Accuracy and cross-entropy vs the fraction of patches dropped, `mean` vs "
               "`zero` aggregation, as changes from all patches kept (this run's own values on the right-hand axis); "
               "the crosses are the paper's channel masking of its pretrained BagNet-33, as changes from the paper's "
               "own all-kept accuracy and loss (its Table 1; its 75 % column repeats the 50 % one).", "04"),
    FigureSpec("04_blackout_kinds.png", "Patch-logit blackout (the paper's text) vs channel masking (the paper's "
               "code) vs pixel blackout, each as the change from its model's own all-kept accuracy; the crosses are "
               "the paper's channel masking, as changes from its own all-kept BagNet-33.", "04"),
    FigureSpec("04_structured.png", "Centre vs border, most vs least confident patches (the latter an oracle: "
               "ranked by the full-image prediction).", "04"),
    FigureSpec("04_aggregations.png", "Aggregations other than the mean under random blackout.", "04"),
    FigureSpec("04_frontier.png", "Test accuracy against forward GFLOPs per image: kept patches, anytime stopping, "
               "fewer pixels, ResNet-50; each point labelled with its setting (% of patches kept, sub-grid stride, "
               "margin threshold, image size), the Pareto front ringed.", "04"),
    FigureSpec("04_explorer.png", "A snapshot of the interactive blackout explorer.", "04"),
)


def _fill(spec: FigureSpec, bagnet: str) -> tuple[str, str]:
    return spec.name.format(bagnet=bagnet), spec.caption.replace("{Bagnet}", model_label(bagnet))


def expected(bagnet: str = "bagnet33", notebooks: str = "01234") -> list[str]:
    """The file names a run of `notebooks` makes for `bagnet`, in the course's order."""
    return [_fill(s, bagnet)[0] for s in FIGURES if s.notebook[-1] in notebooks]


def _match(name: str) -> tuple[int, str]:
    """(index in FIGURES, BagNet) of a filled-in figure name; KeyError if it is not registered."""
    for i, spec in enumerate(FIGURES):
        m = re.fullmatch(re.escape(spec.name).replace(re.escape("{bagnet}"), r"(bagnet\d+)"), name)
        if m:
            return i, (m.group(1) if m.groups() else "bagnet33")
    raise KeyError(f"{name} is not in bagnet_lib/figures.py's registry")


def caption(name: str) -> str:
    """The caption of a figure file (any BagNet)."""
    i, bagnet = _match(name)
    return _fill(FIGURES[i], bagnet)[1]


def order(name: str) -> int:
    """Position of a figure in the course (the registry's order): the report lists figures by it."""
    return _match(name)[0]


def figure_path(figure_dir: str | Path, name: str) -> Path:
    """Where `views` saves figure `name` (a filled-in registry name; anything else is a bug, said at once)."""
    caption(name)
    return Path(figure_dir) / name


def registered(name: str) -> bool:
    """Whether `name` is a figure of the registry (a PNG a user saved beside them is not)."""
    try:
        _match(name)
    except KeyError:
        return False
    return True
