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
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .data.tensors import ImageTensors, eval_batch, eval_batches, normalize, train_batches
from .errors import UserError
from .faults import fault_point
from .io import atomic_write, remove_stale_temporaries
from .metrics import accuracy, cross_entropy
from .profiles import Profile
from .weights import load_state_dict_file


def select_device(device: str | torch.device | None = None) -> torch.device:
    """`device` if given, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class TrainResult:
    """What a training run leaves behind."""

    history: pd.DataFrame
    best_epoch: int
    best_val_acc: float
    best_checkpoint: Path
    resumed_from_epoch: int


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
    """SGD (momentum) or AdamW over the parameters that require gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    if profile.optimizer == "sgd":
        return torch.optim.SGD(params, lr=profile.lr, momentum=profile.momentum, weight_decay=profile.weight_decay)
    if profile.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=profile.lr, weight_decay=profile.weight_decay)
    raise UserError(f"Unknown optimizer {profile.optimizer!r}; use 'sgd' or 'adamw'.")


def _fingerprint(profile: Profile, model_name: str, seed: int, n_train: int) -> dict:
    return {"profile": profile.to_dict(), "model": model_name, "seed": seed, "n_train": n_train}


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int = 64, device: torch.device | None = None,
            patch: bool = False, progress: bool = False) -> Tensor:
    """Logits for a uint8 image stack [N, 3, H, W]: image logits [N, K] or, with `patch`, [N, K, H', W']."""
    device = device or next(model.parameters()).device
    model.eval()
    outs = []
    labels = torch.zeros(len(images), dtype=torch.long)
    for x, _ in tqdm(eval_batches(images, labels, batch_size), total=math.ceil(len(images) / batch_size),
                     desc="predict", disable=not progress, leave=False):
        x = normalize(x.to(device))
        with _autocast(device):
            out = model.patch_logits(x) if patch else model(x)
        outs.append(out.float().cpu())
    return torch.cat(outs)


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


def train_model(model: nn.Module, train: ImageTensors, val: ImageTensors, profile: Profile, out_dir: str | Path,
                name: str, seed: int = 0, device: str | torch.device | None = None,
                progress: bool = True, history_path: str | Path | None = None) -> TrainResult:
    """Train `model` on `train`, validating on `val` after each epoch; resumes from `out_dir`.

    The per-epoch history goes to `history_path` (default `out_dir/<name>_history.csv`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = select_device(device)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    steps = max(1, len(train) // profile.batch_size) if len(train) >= profile.batch_size else 1
    optimizer = make_optimizer(model, profile)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(profile, steps))
    last_path, best_path = out_dir / f"{name}_last.pt", out_dir / f"{name}_best.pt"
    history_path = Path(history_path) if history_path else out_dir / f"{name}_history.csv"
    fingerprint = _fingerprint(profile, name, seed, len(train))
    history: list[dict] = []
    best = {"epoch": 0, "val_acc": -1.0}
    start_epoch = 0
    for path in (last_path, best_path, history_path):  # leftovers of a write that was interrupted
        remove_stale_temporaries(path)
    if last_path.is_file():
        state = _load_training_state(last_path)
        if state.get("fingerprint") != fingerprint:
            raise UserError(
                f"{last_path} belongs to a training run with other settings (profile, model, seed or data). "
                "Use a new run directory, or delete that file to start this model's training again.")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best, start_epoch = state["history"], state["best"], int(state["epoch"])
        # the history CSV is written after the checkpoint: a kill between the two leaves it an epoch behind
        atomic_write(history_path, lambda p: pd.DataFrame(history).to_csv(p, index=False))
    val_images = eval_batch(val, profile.image_size)
    for epoch in range(start_epoch, profile.epochs):
        t0 = time.perf_counter()
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        batches = train_batches(train, profile.image_size, profile.batch_size, seed, epoch,
                                scale_min=profile.crop_scale_min)
        bar = tqdm(batches, total=steps, desc=f"{name} epoch {epoch + 1}/{profile.epochs}", disable=not progress,
                   leave=False)
        for x, y in bar:
            x, y = normalize(x.to(device, non_blocking=True)), y.to(device)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=profile.label_smoothing)
            if not torch.isfinite(loss):
                raise UserError(f"Training {name} diverged (loss {loss.item()}) in epoch {epoch + 1}; "
                                "lower the learning rate of the profile.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
            fault_point("after_batch")
        val_logits = predict(model, val_images, profile.eval_batch_size, device)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
               "val_loss": cross_entropy(val_logits, val.labels), "val_acc": accuracy(val_logits, val.labels),
               "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        history.append(row)
        if row["val_acc"] > best["val_acc"]:
            best = {"epoch": epoch + 1, "val_acc": row["val_acc"]}
            model_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            atomic_write(best_path, lambda p: torch.save({"model": model_state, **best}, p))
            fault_point("after_best")
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "history": history, "best": best,
                 "fingerprint": fingerprint}
        atomic_write(last_path, lambda p: torch.save(state, p))
        fault_point("after_last")
        atomic_write(history_path, lambda p: pd.DataFrame(history).to_csv(p, index=False))
        fault_point("after_epoch")
        if progress:
            tqdm.write(f"{name} epoch {epoch + 1}/{profile.epochs}: train loss {row['train_loss']:.3f} "
                       f"acc {row['train_acc']:.3f} | val loss {row['val_loss']:.3f} acc {row['val_acc']:.3f} "
                       f"| {row['seconds']:.0f}s")
    return TrainResult(pd.DataFrame(history), best["epoch"], best["val_acc"], best_path, start_epoch)


def _load_training_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"Cannot read training checkpoint {path} ({type(exc).__name__}); it is truncated or "
                        "corrupted. Delete it to restart this model's training from scratch.") from exc


def load_best(model: nn.Module, checkpoint: str | Path) -> nn.Module:
    """Load the weights of a `<name>_best.pt` (or any state_dict file) into `model`."""
    from .weights import load_into

    load_into(model, load_state_dict_file(checkpoint), checkpoint, type(model).__name__)
    return model
