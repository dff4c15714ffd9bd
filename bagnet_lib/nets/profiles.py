"""Profiles: the one place that names every knob of a run (resolution, width, epochs, optimiser, seeds).

Introduced in notebook 01. `smoke` is for CI; `cpu` trains both networks from scratch on this
project's 2-core reference machine within the course's time budget; `gpu` is the full networks at
224 px; `paper` is the paper's recipe exactly (ImageNet-pretrained, frozen backbones, needs internet).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from bagnet_lib.errors import UserError


@dataclass(frozen=True)
class Profile:
    """Every setting of a run. `width` scales all channel counts (1.0 = the published networks)."""

    name: str
    image_size: int = 224
    width: float = 1.0
    pretrained: bool = False
    feature_extract: bool = False  # True: train only the final layer (the paper's code)
    epochs: int = 50
    bagnet_epochs: int | None = None  # epochs of the BagNets, where they differ from ResNet-50's (`for_model`)
    batch_size: int = 32
    optimizer: str = "sgd"  # "sgd" | "adamw"
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"  # "constant" | "cosine" (with linear warm-up)
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    train_size: int | None = None  # side of the training crops (None: image_size); see `for_model`
    crop_scale_min: float = 0.08  # RandomResizedCrop's smallest crop area (torchvision's default 0.08)
    crop_scale_max: float = 1.0  # and its largest; below 1, crops show objects at the test images' size (FixRes)
    zero_init_residual: bool = False  # start each residual branch at zero (last BN weight = 0)
    drop_last: bool = True  # drop the last partial training batch of an epoch (the paper kept it)
    original_size: bool = False  # decode at the original resolution (the paper cropped the full images)
    precision: str = "fp32"  # "bf16": autocast where the device computes bf16 fast (precision.resolve_precision)
    channels_last: bool = False  # NHWC memory layout for training (always on for CUDA)
    compile: bool = False  # torch.compile the training forward and backward where it pays (train.use_compile)
    images_per_class: int | None = None  # subsample the split (smoke runs)
    eval_batch_size: int = 64
    n_seeds: int = 30  # random masks per blackout setting
    curve_masks: int = 100  # random masks per point of the drop curve
    pixel_seeds: int = 5  # seeds of pixel blackout (each one a forward pass over the test set)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def train_crop(self) -> int:
        """Side of the training crops. Smaller than `image_size` is "FixRes" (Touvron et al., NeurIPS 2019,
        https://arxiv.org/abs/1906.06423): RandomResizedCrop enlarges objects, so crops a little smaller than
        the test images show objects at the size the test images show them, and each step is cheaper."""
        return self.train_size or self.image_size

    def for_model(self, model_name: str) -> Profile:
        """The profile as `model_name` trains with it: BagNets take `bagnet_epochs` where it is set."""
        if model_name.startswith("bagnet") and self.bagnet_epochs:
            return replace(self, epochs=self.bagnet_epochs)
        return self


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", image_size=64, width=0.125, epochs=1, batch_size=16, optimizer="sgd", lr=0.05,
                     weight_decay=5e-4, schedule="cosine", images_per_class=12, eval_batch_size=64,
                     n_seeds=3, curve_masks=5, pixel_seeds=1, precision="bf16", channels_last=True),
    # cpu: tuned by validation accuracy within the 60-minute course budget (docs/profiles.md)
    # (160 px: a 16×16 patch grid; 128 px training crops, FixRes; docs/profiles.md, "How the cpu profile was tuned")
    "cpu": Profile("cpu", image_size=160, train_size=128, width=0.25, epochs=45, bagnet_epochs=40, batch_size=32,
                   optimizer="sgd", lr=0.05, weight_decay=5e-4, schedule="cosine", warmup_epochs=1,
                   label_smoothing=0.1, crop_scale_min=0.35, zero_init_residual=True, n_seeds=30, curve_masks=100,
                   pixel_seeds=3, precision="bf16", channels_last=True, compile=True),
    "gpu": Profile("gpu", image_size=224, width=1.0, epochs=60, batch_size=64, optimizer="sgd", lr=0.1,
                   weight_decay=5e-4, schedule="cosine", warmup_epochs=2, label_smoothing=0.1,
                   eval_batch_size=128, n_seeds=100, curve_masks=200, pixel_seeds=10, precision="bf16",
                   channels_last=True),
    "paper": Profile("paper", image_size=224, width=1.0, pretrained=True, feature_extract=True, epochs=50,
                     batch_size=32, optimizer="sgd", lr=0.001, momentum=0.9, schedule="constant",
                     eval_batch_size=128, n_seeds=30, curve_masks=100, pixel_seeds=5,
                     drop_last=False, original_size=True, precision="fp32"),  # the paper used no autocast
}


def get_profile(name: str, **overrides) -> Profile:
    """A named profile, optionally with some fields replaced (e.g. `epochs=2`)."""
    if name not in PROFILES:
        raise UserError(f"Unknown profile {name!r}; choose one of {', '.join(PROFILES)}.")
    unknown = set(overrides) - set(Profile.__dataclass_fields__)
    if unknown:
        raise UserError(f"Unknown profile setting(s) {sorted(unknown)}; known: {sorted(Profile.__dataclass_fields__)}.")
    return replace(PROFILES[name], **overrides)
