"""FixRes adaptation: a network trained on small crops, made ready for the larger test images.

Introduced in notebook 02. Touvron et al., "Fixing the train-test resolution discrepancy" (NeurIPS 2019,
https://arxiv.org/abs/1906.06423): training on `train_crop` px crops and testing at `image_size` px changes the
statistics of every activation, so BatchNorm's running means and variances, measured on training crops, no
longer fit the test images. Two cheap repairs, both at the test size on the *training* images:

1. `recalibrate_batchnorm`: run the training images' evaluation view (Resize + CenterCrop at `image_size`,
   every other image flipped, in a random order) through the network in train mode without gradients, and keep the plain average
   of the batch statistics (`momentum=None`) instead of the training run's running average. One forward pass
   over the training split; no weight changes.
2. `finetune_head`: then train the classifier and the last BatchNorm's scale and shift (the layer before the
   final pooling, the one FixRes fine-tunes) for a few epochs on the same view, every other parameter and all
   statistics frozen.

`adapt_step` applies what the profile asks for (`adapt_bn`, `adapt_epochs`) to a run's best checkpoint and
keeps the result as `<name>_adapted.pt` beside it, with the settings it was made with: called again with the
same ones it loads that file instead of adapting again.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from bagnet_lib.data.tensors import ImageTensors, eval_batch, eval_batches, normalize
from bagnet_lib.io import atomic_write
from bagnet_lib.nets.models import model_label
from bagnet_lib.nets.precision import precision_scope, resolve_precision
from bagnet_lib.nets.profiles import Profile


def _flip_every_other(images: Tensor, offset: int = 0) -> Tensor:
    """The stack with images offset, offset + 2, … flipped left-right (the evaluation view has no flip; training had)."""
    out = images.clone()
    out[offset::2] = out[offset::2].flip(-1)
    return out


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of `model`, in the order `modules()` lists them (the last one before the pooling last)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: Tensor, batch_size: int, precision: str = "fp32",
                          seed: int = 0, progress: bool = False) -> None:
    """Replace every BatchNorm's running mean and variance by their average over `images` (uint8, already at the
    test size), computed in train mode without gradients, in batches of a random order drawn from `seed`. The
    order matters: a split lists its images class by class, and the average of per-batch variances of one-class
    batches would miss the spread between the classes. The weights do not change; the model ends in eval mode."""
    layers = batchnorms(model)
    momenta = [bn.momentum for bn in layers]
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)  # as training and evaluation: bf16 only where it is fast
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # running statistics = the plain average over the batches seen
    model.train()
    try:
        labels = torch.zeros(len(images), dtype=torch.long)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
        for x, _ in tqdm(eval_batches(_flip_every_other(images)[order], labels, batch_size),
                         total=math.ceil(len(images) / batch_size), desc="BatchNorm statistics", disable=not progress,
                         leave=False):
            with precision_scope(device, precision):
                model.features(normalize(x.to(device)))
    finally:
        for bn, momentum in zip(layers, momenta):
            bn.momentum = momentum
        model.eval()


def finetune_head(model: nn.Module, images: Tensor, labels: Tensor, profile: Profile, epochs: int, seed: int,
                  progress: bool = False) -> list[float]:
    """Train `model.fc` and the last BatchNorm's weight and bias for `epochs` epochs on `images` (uint8, at the
    test size; epoch e flips the images of parity e), everything else frozen and every BatchNorm in eval mode.
    SGD with the profile's learning rate, momentum, weight decay and label smoothing, cosine-decayed over the
    steps. Returns each epoch's mean training loss."""
    device = next(model.parameters()).device
    precision = resolve_precision(profile.precision, device)
    trainable = list(model.fc.parameters()) + list(batchnorms(model)[-1].parameters())
    chosen = {id(p) for p in trainable}
    frozen = [p for p in model.parameters() if id(p) not in chosen and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    optimizer = torch.optim.SGD(trainable, lr=profile.lr, momentum=profile.momentum, weight_decay=profile.weight_decay)
    steps = epochs * math.ceil(len(images) / profile.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    losses = []
    model.eval()
    try:
        for epoch in range(epochs):
            order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed * 100_003 + 10_000 + epoch))
            view = _flip_every_other(images, epoch % 2)
            total = 0.0
            for start in tqdm(range(0, len(images), profile.batch_size), desc=f"head fine-tuning {epoch + 1}/{epochs}",
                              disable=not progress, leave=False):
                idx = order[start:start + profile.batch_size]
                with precision_scope(device, precision):
                    logits = model(normalize(view[idx].to(device)))
                loss = F.cross_entropy(logits.float(), labels[idx].to(device), label_smoothing=profile.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += loss.item() * len(idx)
            losses.append(total / len(images))
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return losses


def adaptation_label(adapted: dict) -> str:
    """How an adaptation is named in tables and reports, from metrics' `adapted` ({bn, epochs, image_size}):
    'BatchNorm statistics at 224 px, then 2 epochs of the classifier and last BatchNorm at 224 px'."""
    parts = [f"BatchNorm statistics at {adapted['image_size']} px"] if adapted["bn"] else []
    if adapted["epochs"]:
        parts.append(f"{adapted['epochs']} epoch{'s' * (adapted['epochs'] != 1)} of the classifier and last BatchNorm "
                     f"at {adapted['image_size']} px")
    return ", then ".join(parts)


def describe_adaptation(profile: Profile, model_name: str) -> str:
    """One sentence saying what adaptation `profile` gives `model_name` after training (its `for_model` settings):
    BatchNorm statistics recomputed at the test size or not (`adapt_bn`), and how many epochs the classifier and
    the last BatchNorm are fine-tuned (`adapt_epochs`). Notebooks print it instead of typing it."""
    p = profile.for_model(model_name)
    bn = (f"BatchNorm statistics recomputed at {p.image_size} px on every training image (adapt_bn)" if p.adapt_bn
          else "no BatchNorm recalibration (adapt_bn is off)")
    head = (f"{p.adapt_epochs} epoch{'s' * (p.adapt_epochs != 1)} of the classifier and last BatchNorm at "
            f"{p.image_size} px (adapt_epochs)" if p.adapt_epochs else "no fine-tuning (adapt_epochs is 0)")
    network = (f"every later number is the adapted network's ({model_name}_adapted.pt)" if p.adapt_bn or p.adapt_epochs
               else f"every later number is the best epoch's, as trained on {p.train_crop} px crops")
    return f"After training, the {p.name} profile gives {model_label(model_name)} {bn} and {head}: {network}."


def adapt_settings(profile: Profile, best: dict) -> dict:
    """What an adapted checkpoint depends on: the best checkpoint it starts from and the adaptation's settings."""
    return {"from_epoch": best["epoch"], "from_val_acc": best["val_acc"], "image_size": profile.image_size,
            "bn_order": "random",
            "adapt_bn": profile.adapt_bn, "adapt_epochs": profile.adapt_epochs, "precision": profile.precision,
            "batch_size": profile.batch_size, "eval_batch_size": profile.eval_batch_size, "lr": profile.lr,
            "momentum": profile.momentum, "weight_decay": profile.weight_decay,
            "label_smoothing": profile.label_smoothing}


def adapt_step(model: nn.Module, train: ImageTensors, profile: Profile, best_checkpoint: str | Path, seed: int,
               write: bool = True, progress: bool = False) -> Path | None:
    """Adapt `model` (its best checkpoint loaded) as `profile` asks, or load the adaptation made before.

    Returns the adapted checkpoint's path (`<name>_best.pt` → `<name>_adapted.pt`), or None when the profile asks
    for no adaptation. With `write` False (the ranks other than 0 under torchrun) nothing is written: the file
    rank 0 wrote is loaded, or, if it is missing, the same adaptation is computed."""
    if not (profile.adapt_bn or profile.adapt_epochs):
        return None
    best_checkpoint = Path(best_checkpoint)
    best = torch.load(best_checkpoint, map_location="cpu", weights_only=True)
    settings = adapt_settings(profile, best)
    path = best_checkpoint.with_name(best_checkpoint.name.replace("_best.pt", "_adapted.pt"))
    if path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # an unreadable adaptation is only derived data: made again below
            saved = {}
        if saved.get("settings") == settings:
            model.load_state_dict(saved["model"])
            return path
    images = eval_batch(train, profile.image_size)
    if profile.adapt_bn:
        recalibrate_batchnorm(model, images, profile.eval_batch_size, profile.precision, seed, progress)
    losses = finetune_head(model, images, train.labels, profile, profile.adapt_epochs, seed, progress) \
        if profile.adapt_epochs else []
    model.eval()
    if write:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        atomic_write(path, lambda p: torch.save({"model": state, "settings": settings, "finetune_losses": losses}, p))
    return path
