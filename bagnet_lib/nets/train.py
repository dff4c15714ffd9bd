"""Training with checkpoints after every epoch: resumable, seeded, deterministic on CPU.

Introduced in notebook 02. The `paper` profile is the paper's recipe (SGD lr 0.001, momentum 0.9,
batch 32, 50 epochs, frozen backbone, the best validation epoch kept); other profiles train from
scratch. Each epoch appends a row to `<name>_history.csv` and rewrites `<name>_last.pt` atomically;
the best validation epoch is kept in `<name>_best.pt`. Calling `train_model` again with the same
settings resumes after the last complete epoch (or returns at once if training is finished), and ends
with exactly the metrics of an uninterrupted run, because each epoch's shuffling and augmentation
depend only on (seed, epoch).

The writes at the end of an epoch come in this order: `<name>_best.pt` (when validation improved),
`<name>_last.pt`, `<name>_history.csv`. A process killed anywhere (tests kill it at each named point of
`faults.py`: after any batch, half-way through any of the three writes, between any two of them)
resumes from `<name>_last.pt`, the single source of truth: the history CSV is rewritten from it,
an epoch whose checkpoint did not reach the disk is trained again (identically), and temporary files
of interrupted writes are deleted, never read.

Under torchrun (docs/distributed.md) the same function trains with DistributedDataParallel: each rank
takes its share of every global batch (the images one process would see, augmented alike), the gradients
are averaged, BatchNorm is synchronised on CUDA (`SyncBatchNorm`) and per-rank on CPU (PyTorch's
SyncBatchNorm has no CPU kernel), validation is sharded, and rank 0 alone writes, in the order above.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from bagnet_lib.data.tensors import (
    ImageTensors,
    epoch_order,
    eval_batch,
    eval_batches,
    normalize,
    prefetch,
    rank_share,
    train_batches,
)
from bagnet_lib.errors import UserError
from bagnet_lib.faults import fault_point
from bagnet_lib.io import atomic_write, remove_stale_temporaries
from bagnet_lib.nets.compiled import CompiledOrEager
from bagnet_lib.nets.distributed import World, all_sum, barrier, eval_block, gather_cat, trace_batch, world
from bagnet_lib.nets.metrics import accuracy, cross_entropy
from bagnet_lib.nets.precision import features_fp32, ieee_fp32, precision_scope, resolve_precision
from bagnet_lib.nets.profiles import Profile
from bagnet_lib.nets.weights import load_into, load_state_dict_file

DEVICE_ENV = "BAGNET_DEVICE"


def select_device(device: str | torch.device | None = None) -> torch.device:
    """`device` if given, else $BAGNET_DEVICE (the CLI's --device), else CUDA when available, else CPU.

    Under torchrun with NCCL, "cuda" is this rank's own GPU (`distributed.init_distributed` selected it)."""
    device = device or os.environ.get(DEVICE_ENV) or None
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def use_channels_last(model: nn.Module, device: torch.device, requested: bool) -> bool:
    """Whether to train `model` in the channels-last (NHWC) layout: always on CUDA, on CPU when `requested`.

    BagNets train channels-last on CPU too since their strided 1×1 convolutions are `SubsampledConv2d`
    (every other pixel, then a stride-1 1×1 convolution): oneDNN's weight gradient of a strided 1×1
    convolution on channels-last input with few input channels corrupts the heap (oneDNN issue #6035), the
    stride-1 one does not (tests/test_models.py runs the crashing case in a subprocess)."""
    return device.type == "cuda" or requested


def use_compile(model: nn.Module, device: torch.device, requested: bool) -> bool:
    """Whether to `torch.compile` the training step of `model`: when `requested`, on CUDA always, on CPU for
    BagNets only. On this project's 2-core CPU, `bench train` (results/bench/train.json) measures what
    channels-last plus compilation gives BagNet-33's step and how long compiling takes; ResNet-50's step (already
    channels-last, a 4× smaller feature map) gained about 2 % in a one-off measurement while tuning, not worth
    compiling it in every process."""
    return requested and (device.type == "cuda" or getattr(model, "is_bagnet", False))


@dataclass
class TrainResult:
    """What a training run leaves behind."""

    history: pd.DataFrame
    best_epoch: int
    best_val_acc: float
    best_checkpoint: Path
    resumed_from_epoch: int
    trained_with: list[dict] = field(default_factory=list)  # per epoch: {"world_size", "backend"}
    compile_s: float | None = None  # this call's first compiled step, compilation included (None: eager)
    compile_fallback: str | None = None  # why torch.compile was requested but the step ran eagerly


def _lr_lambda(profile: Profile, steps_per_epoch: int):
    total = max(1, profile.epochs * steps_per_epoch)
    warm = profile.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if profile.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
        return 1.0

    if profile.schedule not in ("constant", "cosine"):
        raise UserError(f"Unknown schedule {profile.schedule!r}; use 'constant' or 'cosine'.")
    return factor


def make_optimizer(model: nn.Module, profile: Profile) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW over the parameters that require gradients; without `norm_weight_decay`, the
    BatchNorm weights and all biases (the one-dimensional parameters) are in a group of their own without weight
    decay (FFCV's ResNet-50 recipe, `bn_wd: 0`): decaying a BatchNorm scale only rescales what follows it."""
    trained = [p for p in model.parameters() if p.requires_grad]
    params: list = trained
    if not profile.norm_weight_decay:
        params = [{"params": [p for p in trained if p.dim() > 1]},
                  {"params": [p for p in trained if p.dim() <= 1], "weight_decay": 0.0}]
    if profile.optimizer == "sgd":
        return torch.optim.SGD(params, lr=profile.lr, momentum=profile.momentum, weight_decay=profile.weight_decay)
    if profile.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=profile.lr, weight_decay=profile.weight_decay)
    raise UserError(f"Unknown optimizer {profile.optimizer!r}; use 'sgd' or 'adamw'.")


def _fingerprint(profile: Profile, model_name: str, seed: int, n_train: int) -> dict:
    return {"profile": profile.training_fields(), "model": model_name, "seed": seed, "n_train": n_train}


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int = 64, device: torch.device | None = None,
            patch: bool = False, progress: bool = False, precision: str = "fp32") -> Tensor:
    """Logits for a uint8 image stack [N, 3, H, W]: image logits [N, K] or, with `patch`, [N, K, H', W'].

    The backbone runs in `precision` (see `features_fp32`), the head in fp32. Under torchrun each rank
    computes one contiguous block of whole batches (`distributed.eval_block`) and every rank gets all the
    logits, in order: the same batches, so the same numbers, as one process.
    """
    device = device or next(model.parameters()).device
    precision = resolve_precision(precision, device)
    model.eval()
    start, stop = eval_block(len(images), batch_size)
    mine = images[start:stop]
    outs = []
    labels = torch.zeros(len(mine), dtype=torch.long)
    for x, _ in tqdm(eval_batches(mine, labels, batch_size), total=math.ceil(len(mine) / batch_size),
                     desc="predict", disable=not progress, leave=False):
        f = features_fp32(model, normalize(x.to(device)), precision)
        out = model.head(f) if patch else model.fc(f.mean(dim=(2, 3)))
        outs.append(out.cpu())
    return gather_cat(outs)


def predict_as_trained(model: nn.Module, images: Tensor, profile: Profile,
                       device: str | torch.device | None = None) -> Tensor:
    """Image logits of `model` computed exactly as `train_model` computes its validation logits: on `device`, in
    the memory layout training uses (channels-last where `use_channels_last` says so; `model` is converted in
    place), in the profile's precision (`resolve_precision`), in batches of `eval_batch_size`.

    A number compared with the training history (its `val_acc`, the best epoch's accuracy) must be computed this
    way: the two memory layouts run other kernels (oneDNN on this project's CPU), whose logits differ in bf16 (and,
    less, in fp32) by enough to move an image across the decision boundary, and fp32 differs from bf16 more.
    `profile` is the one the network trained with (`Profile.for_model`)."""
    device = select_device(device)
    params = list(model.parameters())
    if any(q.device.type != device.type or device.index not in (None, q.device.index) for q in params):
        model.to(device)  # "cuda" is the current GPU: a model on cuda:0 stays
    if use_channels_last(model, device, profile.channels_last) and any(
            q.dim() == 4 and not q.is_contiguous(memory_format=torch.channels_last) for q in params):
        model.to(memory_format=torch.channels_last)  # only when needed: training's model is left untouched
    return predict(model, images, profile.eval_batch_size, device, precision=resolve_precision(profile.precision, device))


def epoch_batches(train: ImageTensors, profile: Profile, seed: int, epoch: int, w: World | None = None):
    """One epoch's augmented uint8 batches (`train_batches`; this rank's shares under torchrun), prepared a
    batch ahead in a background thread."""
    w = w or World()
    return prefetch(train_batches(train, profile.train_crop, profile.batch_size, seed, epoch,
                                  drop_last=profile.drop_last, scale_min=profile.crop_scale_min,
                                  scale_max=profile.crop_scale_max, rank=w.rank,
                                  world_size=w.size))


def distribute(model: nn.Module, device: torch.device, w: World) -> tuple[nn.Module, nn.Module]:
    """(what to train, what to save): DistributedDataParallel over `model` when there are several ranks, with
    SyncBatchNorm on CUDA (batch statistics over the global batch; on CPU each rank keeps its own, since
    PyTorch's SyncBatchNorm has no CPU kernel); `(model, model)` for one process. The saved module's
    state_dict has the keys of the plain network."""
    if w.size == 1:
        return model, model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None), model


def check_world(profile: Profile, n_train: int, w: World) -> None:
    """Refuse, before any training, a world size that cannot split the profile's batches evenly."""
    if w.size == 1:
        return
    if profile.batch_size % w.size:
        raise UserError(f"The {profile.name} profile's batch of {profile.batch_size} images cannot be split over "
                        f"{w.size} processes (each rank takes batch_size / world_size images). Use a world size "
                        f"that divides {profile.batch_size} (--nproc_per_node × --nnodes).")
    last = n_train % profile.batch_size
    if not profile.drop_last and 0 < last < w.size:
        raise UserError(f"The last batch of each epoch holds {last} image{'s' * (last != 1)} (the {profile.name} "
                        f"profile keeps it), fewer than the {w.size} processes: some ranks would get none. "
                        "Use fewer processes.")


def train_on_batch(model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor, *,
                   precision: str = "fp32", channels_last: bool = False,
                   label_smoothing: float = 0.0, grad_scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """One optimizer step on a uint8 batch [N, 3, H, W]: normalise, forward in `precision`, cross-entropy in
    fp32, backward, step. Returns the loss (the mean over these images) and the logits (detached).
    `train_model` and `bench train` both time exactly this function.

    `grad_scale` multiplies the loss before `backward`: a rank's share n_r of a global batch of B images over
    W ranks takes n_r·W/B, so that DistributedDataParallel's average over ranks is the global batch's mean
    (1 whenever the shares are equal)."""
    device = next(model.parameters()).device
    x = normalize(images.to(device, non_blocking=True))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = labels.to(device)
    with precision_scope(device, precision):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    (loss if grad_scale == 1.0 else loss * grad_scale).backward()
    optimizer.step()
    return loss.detach(), logits.detach()


def train_model(model: nn.Module, train: ImageTensors, val: ImageTensors, profile: Profile, out_dir: str | Path,
                name: str, seed: int = 0, device: str | torch.device | None = None,
                progress: bool = True, history_path: str | Path | None = None) -> TrainResult:
    """Train `model` on `train`, validating on `val` after the epochs the profile names (`Profile.validates`: by
    default every one); resumes from `out_dir`.

    The per-epoch history goes to `history_path` (default `out_dir/<name>_history.csv`). Under torchrun
    every rank calls this with the same arguments (see the module docstring). An fp32 run (the `paper`
    profile) is IEEE fp32 throughout, TF32 off on CUDA (`precision.ieee_fp32`), backward passes included.
    """
    with ieee_fp32(resolve_precision(profile.precision, select_device(device)) == "fp32"):
        return _train(model, train, val, profile, out_dir, name, seed, device, progress, history_path)


def _train(model: nn.Module, train: ImageTensors, val: ImageTensors, profile: Profile, out_dir: str | Path,
           name: str, seed: int, device: str | torch.device | None, progress: bool,
           history_path: str | Path | None) -> TrainResult:
    out_dir = Path(out_dir)
    w = world()
    check_world(profile, len(train), w)
    device = select_device(device)
    precision = resolve_precision(profile.precision, device)
    if precision != profile.precision and w.main:
        print(f"[train] {profile.precision} requested, but this {device.type} has no fast bf16: training in {precision}")
    channels_last = use_channels_last(model, device, profile.channels_last)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net, model = distribute(model, device, w)
    if use_compile(model, device, profile.compile):
        net = CompiledOrEager(net, verbose=w.main)
    steps = (max(1, len(train) // profile.batch_size) if profile.drop_last and len(train) >= profile.batch_size
             else math.ceil(len(train) / profile.batch_size))
    optimizer = make_optimizer(model, profile)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(profile, steps))
    last_path, best_path = out_dir / f"{name}_last.pt", out_dir / f"{name}_best.pt"
    history_path = Path(history_path) if history_path else out_dir / f"{name}_history.csv"
    fingerprint = _fingerprint(profile, name, seed, len(train))
    history: list[dict] = []
    best = {"epoch": 0, "val_acc": -1.0}
    trained_with: list[dict] = []  # per epoch: the world size and backend it was trained with
    start_epoch = 0
    if w.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in (last_path, best_path, history_path):  # leftovers of a write that was interrupted
            remove_stale_temporaries(path)
    if last_path.is_file():  # every rank resumes from the same file
        state = _load_training_state(last_path)
        if state.get("fingerprint") != fingerprint:
            raise UserError(
                f"{last_path} belongs to a training run with other settings (profile, model, seed or data). "
                "Use a new run directory, or delete that file to start this model's training again.")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best, start_epoch = state["history"], state["best"], int(state["epoch"])
        trained_with = state.get("trained_with", [])
        if w.main:  # the history CSV is written after the checkpoint: a kill between the two leaves it an epoch behind
            atomic_write(history_path, lambda p: pd.DataFrame(history).to_csv(p, index=False))
    val_images = eval_batch(val, profile.image_size)
    for epoch in range(start_epoch, profile.epochs):
        t0 = time.perf_counter()
        net.train()
        loss_sum, correct, seen = 0.0, 0, 0
        global_batches = epoch_order(len(train), profile.batch_size, seed, epoch, profile.drop_last)
        batches = epoch_batches(train, profile, seed, epoch, w)
        bar = tqdm(batches, total=steps, desc=f"{name} epoch {epoch + 1}/{profile.epochs}",
                   disable=not (progress and w.main), leave=False)
        for step, ((x, y), batch) in enumerate(zip(bar, global_batches)):
            trace_batch(epoch, step, rank_share(batch, w.rank, w.size))
            try:
                loss, logits = train_on_batch(net, optimizer, x, y, precision=precision, channels_last=channels_last,
                                              label_smoothing=profile.label_smoothing,
                                              grad_scale=len(y) * w.size / len(batch))
            except FloatingPointError as exc:
                raise UserError(f"Training {name} diverged ({exc}) in epoch {epoch + 1}; "
                                "lower the learning rate of the profile.") from None
            scheduler.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1).cpu() == y).sum())
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
            fault_point("after_batch")
        loss_sum, correct, seen = all_sum([loss_sum, correct, seen])  # the global batch's numbers (as is: 1 rank)
        val_loss = val_acc = math.nan  # an epoch the profile does not validate (`Profile.validates`)
        if profile.validates(epoch + 1):
            val_logits = predict_as_trained(model, val_images, profile, device)  # model: already in place and layout
            val_loss, val_acc = cross_entropy(val_logits, val.labels), accuracy(val_logits, val.labels)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
               "val_loss": val_loss, "val_acc": val_acc, "lr": optimizer.param_groups[0]["lr"],
               "seconds": time.perf_counter() - t0}
        history.append(row)
        trained_with.append({"world_size": w.size, "backend": w.backend})
        if not math.isnan(val_acc) and val_acc > best["val_acc"]:  # every rank decides alike: the validation logits are gathered
            best = {"epoch": epoch + 1, "val_acc": row["val_acc"]}
            if w.main:
                model_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
                atomic_write(best_path, lambda p: torch.save({"model": model_state, **best}, p))
            fault_point("after_best")
        if w.main:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "history": history, "best": best,
                     "fingerprint": fingerprint, "trained_with": trained_with}
            atomic_write(last_path, lambda p: torch.save(state, p))
        fault_point("after_last")
        if w.main:
            atomic_write(history_path, lambda p: pd.DataFrame(history).to_csv(p, index=False))
        fault_point("after_epoch")
        if progress and w.main:
            tqdm.write(f"{name} epoch {epoch + 1}/{profile.epochs}: train loss {row['train_loss']:.3f} "
                       f"acc {row['train_acc']:.3f} | "
                       + (f"val loss {val_loss:.3f} acc {val_acc:.3f}" if not math.isnan(val_acc) else "not validated")
                       + f" | {row['seconds']:.0f}s")
    barrier()  # rank 0's checkpoints are on disk before any rank reads them
    compiled = net if isinstance(net, CompiledOrEager) else None
    return TrainResult(pd.DataFrame(history), best["epoch"], best["val_acc"], best_path, start_epoch, trained_with,
                       compiled.compile_s if compiled and not compiled.fallback else None,
                       compiled.fallback if compiled else None)


def _load_training_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"Cannot read training checkpoint {path} ({type(exc).__name__}); it is truncated or "
                        "corrupted. Delete it to restart this model's training from scratch.") from exc


def load_best(model: nn.Module, checkpoint: str | Path) -> nn.Module:
    """Load the weights of a `<name>_best.pt` (or any state_dict file) into `model`."""
    load_into(model, load_state_dict_file(checkpoint), checkpoint, type(model).__name__)
    return model
