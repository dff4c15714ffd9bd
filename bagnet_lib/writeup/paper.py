"""The paper this course reproduces: its links and the numbers it printed (the only numbers typed in).

Introduced in notebook 05 (its settings, as an experiment design, are `blackout.sweep.PAPER_SETTINGS`). Table 1 is copied as printed; `../shared/paper/README.md` explains how to read it
(its "train" columns are the best validation epoch, and its random 75 % column repeats the 50 % one).
"""
from __future__ import annotations

CS229_TITLE = "CNN Image Recognition Architecture Simplification using Patch-Based Data Reduction Techniques"
CS229_CODE_URL = "https://github.com/rui-yan/CS229-final-project"
BAGNET_TITLE = "Approximating CNNs with Bag-of-local-Features models works surprisingly well on ImageNet"
BAGNET_PAPER_URL = "https://openreview.net/forum?id=SkfMWhAqYQ"
BAGNET_CODE_URL = "https://github.com/wielandbrendel/bag-of-local-features-models"

PAPER_IMAGE_SIZE, PAPER_GRID = 224, 24  # the paper's test images and BagNet-33's patch grid on them
PUBLISHED_CHANNELS = 2048  # feature channels of the published ResNet-50 / BagNet-33's last layer (the `fc` input)

PAPER_TABLE1 = {  # as printed in the paper (test; train where given)
    "resnet50": {"train": {"acc": 0.9211, "loss": 0.2517}, "test": {"acc": 0.9093, "loss": 0.2847}},
    "bagnet33": {"train": {"acc": 0.9288, "loss": 0.2799}, "test": {"acc": 0.8821, "loss": 0.3745}},
    "alternating": {"acc": 0.8293, "loss": 0.5761},
    "random 25%": {"acc": 0.8827, "loss": 0.4123},
    "random 50%": {"acc": 0.8327, "loss": 0.5445},
    "random 75%": {"acc": 0.8327, "loss": 0.5445},  # identical to the 50 % column: most likely a copy error
}
PAPER_POINTS = {0.5: (0.8327, 0.5445), 0.25: (0.8827, 0.4123), 0.75: (0.8327, 0.5445)}  # for the drop-curve figure
# What those points measured: the paper's code zeroed fc channels of an ImageNet-pretrained BagNet-33 (last layer retrained).
PAPER_POINTS_LABEL = "paper: channel masking of a pretrained BagNet-33 (its code)"


def paper_changes() -> dict[float, tuple[float, float]]:
    """The paper's random-blackout points as *changes* from its own all-kept BagNet-33 (its Table 1, test):
    drop fraction → (accuracy − all-kept accuracy, cross-entropy − all-kept cross-entropy), by fraction.

    The paper's network starts elsewhere (pretrained, last layer retrained), so only its changes compare with this run's."""
    base = PAPER_TABLE1["bagnet33"]["test"]
    return {f: (acc - base["acc"], loss - base["loss"]) for f, (acc, loss) in sorted(PAPER_POINTS.items())}
