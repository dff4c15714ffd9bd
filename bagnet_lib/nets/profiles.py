"""Profiles: the one place that names every knob of a run (resolution, width, epochs, optimiser, seeds).

Introduced in notebook 01. `smoke` is for CI; `cpu` trains both networks from scratch on this
project's 2-core reference machine within the course's time budget; `gpu` is the full networks at
224 px; `paper` is the paper's recipe exactly (ImageNet-pretrained, frozen backbones, needs internet).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

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
    batch_size: int = 32
    optimizer: str = "sgd"  # "sgd" | "adamw"
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"  # "constant" | "cosine" (with linear warm-up)
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    norm_weight_decay: bool = True  # False: no weight decay on BatchNorm weights and biases (FFCV's `bn_wd: 0`)
    # validation during training: every `val_every`-th epoch and each of the last `val_last` epochs (the last one
    # always); the best validated epoch is kept. The best epoch has always been among the last (docs/profiles.md),
    # and each validation pass is a forward pass over the validation split at the test size
    val_every: int = 1
    val_last: int = 0
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
    # FixRes adaptation after training (nets/adapt.py): BatchNorm statistics recomputed at `image_size` on the
    # training images' evaluation view, then `adapt_epochs` epochs of the classifier and the last BatchNorm
    adapt_bn: bool = False
    adapt_epochs: int = 0
    # fields the BagNets train with where they differ from ResNet-50's, e.g. {"epochs": 40, "train_size": 144}:
    # a BagNet-33 step costs about four times ResNet-50's here, so each network gets its own share (`for_model`)
    bagnet_settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = set(self.bagnet_settings) - BAGNET_SETTINGS
        if bad:
            raise UserError(f"Profile {self.name!r}: bagnet_settings names {sorted(bad)}, which a BagNet cannot set "
                            f"on its own (the evaluation reads them from the profile itself). It can set: "
                            f"{', '.join(sorted(BAGNET_SETTINGS))}.")

    def validates(self, epoch: int) -> bool:
        """Whether training validates after epoch `epoch` (1-based): every `val_every`-th, the last `val_last`, the
        final one."""
        return epoch % max(1, self.val_every) == 0 or epoch > self.epochs - self.val_last or epoch >= self.epochs

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def train_crop(self) -> int:
        """Side of the training crops. Smaller than `image_size` is "FixRes" (Touvron et al., NeurIPS 2019,
        https://arxiv.org/abs/1906.06423): RandomResizedCrop enlarges objects, so crops a little smaller than
        the test images show objects at the size the test images show them, and each step is cheaper."""
        return self.train_size or self.image_size

    def for_model(self, model_name: str) -> Profile:
        """The profile as `model_name` trains and is evaluated with it: BagNets take `bagnet_settings`."""
        if model_name.startswith("bagnet") and self.bagnet_settings:
            return replace(self, **self.bagnet_settings, bagnet_settings={})
        return self

    def training_fields(self) -> dict:
        """The fields that decide a training run's weights (a checkpoint's fingerprint): all but the blackout
        study's sample sizes and the adaptation that follows training, so that changing those reuses it."""
        return {k: v for k, v in self.to_dict().items() if k not in AFTER_TRAINING}


# What a BagNet may train with on its own (`bagnet_settings`): how it is trained and adapted, not how it is
# evaluated (resolution, width, precision and the study's sample sizes are the run's, for every network).
BAGNET_SETTINGS = frozenset({"epochs", "train_size", "crop_scale_min", "crop_scale_max", "lr", "momentum",
                             "weight_decay", "norm_weight_decay", "warmup_epochs", "label_smoothing", "batch_size",
                             "optimizer", "schedule", "zero_init_residual", "compile", "channels_last", "adapt_bn",
                             "adapt_epochs", "val_every", "val_last"})
# Fields read only after training (the blackout study's sample sizes, the FixRes adaptation); the BagNets'
# own settings are already applied by `for_model` when a network is trained.
AFTER_TRAINING = frozenset({"n_seeds", "curve_masks", "pixel_seeds", "adapt_bn", "adapt_epochs", "bagnet_settings"})


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", image_size=64, width=0.125, epochs=1, batch_size=16, optimizer="sgd", lr=0.05,
                     weight_decay=5e-4, schedule="cosine", images_per_class=12, eval_batch_size=64,
                     n_seeds=3, curve_masks=5, pixel_seeds=1, precision="bf16", channels_last=True),
    # cpu: tuned by validation accuracy within the course's time budget (docs/profiles.md, "How the cpu profile
    # was tuned"): 224 px evaluation (the paper's 24×24 BagNet-33 grid); FixRes training crops showing objects at
    # about the test images' size, 128 px for ResNet-50, 144 px for the BagNets; validation on every 5th epoch and
    # the last 3; no weight decay on ResNet-50's BatchNorm weights and biases; then 2 epochs of the classifier and
    # the last BatchNorm at 224 px
    "cpu": Profile("cpu", image_size=224, train_size=128, width=0.25, epochs=45, batch_size=32,
                   optimizer="sgd", lr=0.05, weight_decay=5e-4, norm_weight_decay=False, schedule="cosine",
                   warmup_epochs=1, label_smoothing=0.1, crop_scale_min=0.16, crop_scale_max=0.5,
                   zero_init_residual=True, val_every=5, val_last=3, eval_batch_size=16, n_seeds=30,
                   curve_masks=100, pixel_seeds=3, precision="bf16", channels_last=True, compile=True,
                   adapt_epochs=2,
                   bagnet_settings={"epochs": 40, "train_size": 144, "crop_scale_min": 0.2, "crop_scale_max": 0.6,
                                    "norm_weight_decay": True}),
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
    """A named profile, optionally with some fields replaced (e.g. `epochs=2`); `bagnet_settings` given here
    are merged into the profile's own (`{"train_size": 144}` keeps its BagNet epochs)."""
    if name not in PROFILES:
        raise UserError(f"Unknown profile {name!r}; choose one of {', '.join(PROFILES)}.")
    unknown = set(overrides) - set(Profile.__dataclass_fields__)
    if unknown:
        raise UserError(f"Unknown profile setting(s) {sorted(unknown)}; known: {sorted(Profile.__dataclass_fields__)}.")
    base = PROFILES[name]
    if "bagnet_settings" in overrides:
        overrides = {**overrides, "bagnet_settings": {**base.bagnet_settings, **overrides["bagnet_settings"]}}
    return replace(base, **overrides)


def parse_overrides(pairs: list[str]) -> dict:
    """The command line's `--set` values, typed and checked against Profile: `["image_size=160", "lr=0.1"]` →
    `{"image_size": 160, "lr": 0.1}`; `bagnet.FIELD=VALUE` sets a BagNet's own value (`bagnet_settings`)."""
    types = {f.name: str(f.type) for f in fields(Profile) if f.name not in ("name", "bagnet_settings")}
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        field_name = key.removeprefix("bagnet.")
        if not sep or field_name not in types or (key != field_name and field_name not in BAGNET_SETTINGS):
            raise UserError(f"--set {pair!r}: expected FIELD=VALUE with FIELD one of {', '.join(types)}, or "
                            f"bagnet.FIELD=VALUE (a BagNet's own value) with FIELD one of "
                            f"{', '.join(sorted(BAGNET_SETTINGS))}.")
        kind = types[field_name]
        try:
            if "bool" in kind:
                typed = value.lower() in ("1", "true", "yes")
            elif kind.startswith("int"):
                typed = None if value.lower() == "none" else int(value)
            elif kind.startswith("float"):
                typed = float(value)
            else:
                typed = value
        except ValueError:
            raise UserError(f"--set {pair!r}: {value!r} is not a valid {kind}.") from None
        if key != field_name:
            out.setdefault("bagnet_settings", {})[field_name] = typed
        else:
            out[field_name] = typed
    return out


def override_args(profile: Profile) -> list[str]:
    """The `--set` values (`parse_overrides`' input) that make `profile` from the named profile it was made from:
    how a tuned profile travels to a child process (torchrun)."""
    base = PROFILES.get(profile.name)
    if base is None:
        return []
    out = [f"{f.name}={getattr(profile, f.name)}" for f in fields(Profile)
           if f.name != "bagnet_settings" and getattr(profile, f.name) != getattr(base, f.name)]
    removed = set(base.bagnet_settings) - set(profile.bagnet_settings)
    if removed:
        raise UserError(f"This profile drops the {profile.name} profile's BagNet setting(s) {sorted(removed)}, which "
                        "`--set` cannot express; set them to the value the BagNet should use instead.")
    return out + [f"bagnet.{k}={v}" for k, v in profile.bagnet_settings.items() if base.bagnet_settings.get(k) != v]
