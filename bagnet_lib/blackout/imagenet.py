"""The blackout study as one streaming pass over an image folder: sharded, resumable, memory independent of N.

Introduced for the ImageNet study (notebook 06, docs/imagenet.md). The flowers course caches every test
image's patch logits (`sweep.cache_logits`); for ImageNet's 50,000 validation images that cache would hold
50,000 × 1,000 × 24 × 24 values. Here each batch is decoded by `DataLoader` workers, run through the network
once, and reduced at once by every engine, then dropped:

- `full`: the model's own prediction (all patches), the anchor every drop is measured against;
- patch blackout (`stream.StreamingSweep`): mask kinds × drop fractions × seeds × aggregations, the masks of
  `make_mask` with the seeds `sweep` uses, one mask shared by all images as in the paper;
- channel masking (`channels.ChannelSweep`, what the paper's code did), on the batch's pooled features;
- pixel blackout, opt-in (`pixel_fracs`): random 8 px tiles painted out, a mask per image drawn from
  (seed 0, the image's index), so any batching and any number of ranks draw the same masks; each fraction
  costs one more forward pass.

What stays in memory is one batch and the per-configuration float64 sums. Under torchrun each rank takes a
contiguous block of whole batches (`distributed.eval_block`: no padding, each image once), and the sums are
added over ranks at the end. Every `every` batches each rank writes its partial sums atomically to
`<partial_dir>/rank<r>-of-<w>.pt`; a rerun with the same settings continues after the last written batch
(and adds the same batches in the same order, so its sums are those of an uninterrupted run). A file that
cannot be decoded is left out of its batch, counted and named (`StreamResult.unreadable`).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from bagnet_lib.blackout.aggregate import AGGREGATIONS
from bagnet_lib.blackout.channels import ChannelSweep, channel_configs
from bagnet_lib.blackout.masks import MASK_KINDS
from bagnet_lib.blackout.masks import random as random_mask
from bagnet_lib.blackout.pixels import pixel_blackout
from bagnet_lib.blackout.stream import StreamingSweep, SweepSums, sweep_configs
from bagnet_lib.data.imagenet import CROP, DEFAULT_WORKERS, collate
from bagnet_lib.data.tensors import image_generator, normalize
from bagnet_lib.errors import UserError
from bagnet_lib.faults import fault_point
from bagnet_lib.io import atomic_write, remove_stale_temporaries
from bagnet_lib.nets.distributed import eval_block, gather_parts, world
from bagnet_lib.nets.precision import features_fp32, ieee_fp32

TILE_PX = 8  # pixel blackout's tiles: the BagNets' stride, so one tile is the step between two windows
PIXEL_SEED = 0


@dataclass(frozen=True)
class StreamSettings:
    """Which configurations one pass evaluates (the default: the paper's settings and a drop curve)."""

    kinds: tuple[str, ...] = ("random", "checkerboard")
    drop_fracs: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
    seeds: int = 5  # random masks per (kind, fraction): seeds 0 … seeds − 1, as `sweep` draws them
    aggregations: tuple[str, ...] = ("mean", "zero")
    channel_kinds: tuple[str, ...] = ("random", "alternating")  # () for no channel masking
    pixel_fracs: tuple[float, ...] = ()  # opt-in: each one more forward pass

    def __post_init__(self) -> None:
        for what, given, known in (("mask kind", self.kinds, MASK_KINDS), ("aggregation", self.aggregations, AGGREGATIONS),
                                   ("channel mask kind", self.channel_kinds, ("random", "alternating"))):
            unknown = [g for g in given if g not in known]
            if unknown:
                raise UserError(f"Unknown {what} {unknown[0]!r}; choose from {', '.join(known)}.")
        if self.seeds < 1:
            raise UserError(f"--seeds must be at least 1 (got {self.seeds}).")
        if not self.kinds and not self.channel_kinds and not self.pixel_fracs:
            raise UserError("Nothing to evaluate: give at least one patch mask, channel mask or pixel fraction.")
        drop_fractions(self.drop_fracs + self.pixel_fracs)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def channel_settings(self) -> list[tuple[str, float]]:
        return [(kind, frac) for kind in self.channel_kinds
                for frac in ([0.5] if kind == "alternating" else self.drop_fracs)]


@dataclass
class StreamResult:
    """One row per configuration (`full`, patch, channel, pixel), the images counted, the unreadable files,
    and where this rank's time went in this call (seconds of forward passes, of the patch and channel sweeps,
    of pixel passes, and of the whole pass, decoding included); `batches` is how many this call evaluated."""

    frame: pd.DataFrame
    n_images: int
    unreadable: list[str]
    world_size: int
    grid: tuple[int, int]
    seconds: dict = field(default_factory=dict)
    batches: int = 0


class _Engines:
    """The pass's four sums, checkpointed together."""

    def __init__(self, model: nn.Module, grid: tuple[int, int], settings: StreamSettings) -> None:
        self.full = SweepSums([("full", 0.0, 0, "mean")])
        self.patch = StreamingSweep(grid, sweep_configs(settings.kinds, settings.drop_fracs, range(settings.seeds)),
                                    settings.aggregations)
        self.channel = ChannelSweep(model.fc.weight, model.fc.bias,
                                    channel_configs(settings.channel_settings(), range(settings.seeds)))
        self.pixel = SweepSums([("pixel_random", float(f), PIXEL_SEED, "mean") for f in settings.pixel_fracs])

    def items(self) -> list[tuple[str, SweepSums]]:
        return [("full", self.full), ("patch", self.patch), ("channel", self.channel), ("pixel", self.pixel)]

    def state_dict(self) -> dict:
        return {name: e.state_dict() for name, e in self.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, e in self.items():
            e.load_state_dict(state[name])


def patch_grid(model: nn.Module, device: torch.device, size: int = CROP) -> tuple[int, int]:
    """The model's grid of patch logits for `size`-pixel images (24×24 for BagNet-33 at 224 px)."""
    with torch.no_grad():
        return tuple(model.features(torch.zeros(1, 3, size, size, device=device)).shape[-2:])


def pixel_keep(indices: Tensor, frac: float, size: int = CROP) -> Tensor:
    """Per-image tile masks [B, size/8, size/8], each drawn from (PIXEL_SEED, the image's index) alone."""
    cells = size // TILE_PX
    return torch.stack([random_mask(cells, cells, frac, generator=image_generator(PIXEL_SEED, 0, int(i)))
                        for i in indices])


def _checkpoint_path(partial_dir: Path) -> Path:
    w = world()
    return partial_dir / f"rank{w.rank}-of-{w.size}.pt"


def _resume(path: Path, fingerprint: dict, engines: _Engines) -> tuple[int, list[str]]:
    """Batches already done by this rank and the unreadable files met in them (0, [] for a fresh start)."""
    remove_stale_temporaries(path)
    if not path.is_file():
        others = sorted(p.name for p in path.parent.glob("rank*-of-*.pt") if p.name != path.name)
        if others and not any(p.endswith(f"-of-{world().size}.pt") for p in others):
            raise UserError(f"{path.parent} holds partial sums of a run with another number of processes ({others[0]}). "
                            "Resume it with that number of processes, or use another --out (or delete "
                            f"{path.parent}) to start again.")
        return 0, []
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"Cannot read the partial sums {path} ({type(exc).__name__}); delete it to evaluate this "
                        "rank's images again.") from exc
    if state.get("fingerprint") != fingerprint:
        raise UserError(f"{path} holds partial sums of another evaluation (other model, weights, images, masks or "
                        "batch size). Use another --out, or delete that folder to start this one again.")
    engines.load_state_dict(state["engines"])
    return int(state["batches"]), list(state["unreadable"])


@torch.no_grad()
def stream_blackout(model: nn.Module, dataset: Dataset, settings: StreamSettings, partial_dir: str | Path,
                    fingerprint: dict, *, batch_size: int = 32, workers: int = DEFAULT_WORKERS, precision: str = "fp32",
                    every: int = 20, progress: bool = True, label: str = "",
                    on_batch: Callable[[int], None] | None = None) -> StreamResult:
    """Evaluate every configuration of `settings` on `dataset` (items as `data.imagenet.ValFolder`'s) in one
    pass; resumes from `partial_dir`. Under torchrun every rank calls it alike and gets the total.
    `on_batch(batches_done)` is called after each batch (`bench imagenet` reads the resident memory there)."""
    w = world()
    device = next(model.parameters()).device
    model.eval()
    with ieee_fp32(precision == "fp32"):
        grid = patch_grid(model, device)
        engines = _Engines(model, grid, settings)
        start, stop = eval_block(len(dataset), batch_size)
        path = _checkpoint_path(Path(partial_dir))
        done, unreadable = _resume(path, fingerprint, engines)
        first = min(stop, start + done * batch_size)
        total = math.ceil((stop - start) / batch_size)
        loader = DataLoader(Subset(dataset, range(first, stop)), batch_size=batch_size, shuffle=False,
                            num_workers=workers, collate_fn=collate)
        seconds = {"forward": 0.0, "sweep": 0.0, "pixel": 0.0, "wall": 0.0}
        t_start = time.perf_counter()
        bar = tqdm(loader, total=total, initial=done, desc=f"blackout {label}".strip(), disable=not (progress and w.main))
        batch_no = done
        for batch in bar:
            unreadable += batch.unreadable
            if len(batch.labels):
                _evaluate(model, batch, engines, settings, precision, device, seconds)
            batch_no += 1
            if batch_no % every == 0 or batch_no == total:
                state = {"fingerprint": fingerprint, "batches": batch_no, "unreadable": unreadable,
                         "engines": engines.state_dict()}
                atomic_write(path, lambda p: torch.save(state, p))
            fault_point("stream_batch")
            if on_batch is not None:
                on_batch(batch_no)
            n, top1 = engines.full.sums[0, 0].item(), engines.full.sums[0, 1].item()
            bar.set_postfix(top1=f"{top1 / max(n, 1):.3f}", unreadable=len(unreadable))
        seconds["wall"] = time.perf_counter() - t_start
    for _, e in engines.items():
        e.all_reduce()
    unreadable = gather_parts(unreadable)
    frame = pd.concat([e.frame() for _, e in engines.items() if e.rows], ignore_index=True)
    return StreamResult(frame, int(engines.full.sums[0, 0]), unreadable, w.size, grid, seconds, total - done)


def _evaluate(model: nn.Module, batch, engines: _Engines, settings: StreamSettings, precision: str,
              device: torch.device, seconds: dict) -> None:
    """One batch through the network, then through every engine."""
    y = batch.labels.to(device)
    t0 = time.perf_counter()
    f = features_fp32(model, normalize(batch.images.to(device)), precision)
    pooled = f.mean(dim=(2, 3))
    patch_logits = model.head(f)
    logits = model.fc(pooled)
    _sync(device)
    t1 = time.perf_counter()
    engines.full.add_logits(slice(0, 1), logits[None], y, torch.tensor([float(len(y))]))
    engines.patch.add(patch_logits, y, start=int(batch.indices[0]))
    engines.channel.add(pooled, y)
    _sync(device)
    t2 = time.perf_counter()
    for row, frac in enumerate(settings.pixel_fracs):
        keep = pixel_keep(batch.indices, frac)
        x = normalize(pixel_blackout(batch.images, keep).to(device))
        masked = model.fc(features_fp32(model, x, precision).mean(dim=(2, 3)))
        engines.pixel.add_logits(slice(row, row + 1), masked[None], y, keep.float().mean(dim=(1, 2)).sum()[None])
    _sync(device)
    seconds["forward"] += t1 - t0
    seconds["sweep"] += t2 - t1
    seconds["pixel"] += time.perf_counter() - t2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def configuration_count(settings: StreamSettings) -> dict:
    """How many configurations each engine of a pass evaluates."""
    patch = len(sweep_configs(settings.kinds, settings.drop_fracs, range(settings.seeds))) * len(settings.aggregations)
    return {"patch": patch, "channel": len(channel_configs(settings.channel_settings(), range(settings.seeds))),
            "pixel": len(settings.pixel_fracs)}


def drop_fractions(values: Sequence[float]) -> tuple[float, ...]:
    """Drop fractions as a sorted tuple of floats in [0, 1), refusing others with a readable error."""
    out = tuple(sorted({float(v) for v in values}))
    bad = [v for v in out if not 0.0 <= v < 1.0]
    if bad:
        raise UserError(f"Drop fractions must lie in [0, 1) (at least one patch kept); got {bad}.")
    return out
