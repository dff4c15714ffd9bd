"""Several processes, one job: `torchrun` + `torch.distributed`, and the few rules this project adds.

Introduced in docs/distributed.md. `torchrun --nproc_per_node=N -m bagnet_lib train …` starts N processes
(ranks) with RANK, WORLD_SIZE, LOCAL_RANK and a rendezvous in their environment; `init_distributed` joins that
process group: NCCL with one GPU per local rank on CUDA, gloo on CPU, with a timeout (BAGNET_DIST_TIMEOUT
seconds, default 600) so that a collective whose peer died fails instead of waiting forever. Without torchrun
nothing here does anything: `world()` is rank 0 of 1.

The rules, each a function below:

- **Training** (`train.train_model`): a global batch (`data.tensors.epoch_order`) is split across ranks by
  `data.tensors.rank_share`; DistributedDataParallel averages the gradients.
- **Evaluation** (`eval_block`, `gather_parts`): the images are cut into whole evaluation batches, each rank
  computes one contiguous block of them, and the parts are gathered in rank order: every image once, in
  order, no padding duplicates, and each batch exactly the batch one process computes.
- **Rank 0 writes**; the others read what it wrote after `main_first` or `barrier`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from bagnet_lib.errors import UserError

TIMEOUT_ENV = "BAGNET_DIST_TIMEOUT"
TRACE_ENV = "BAGNET_TRACE_BATCHES"
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place in the job: rank `rank` of `size`, its GPU index `local_rank`, the backend."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = "none"  # "none" (one process, no process group), "gloo" or "nccl"

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True inside a process that torchrun (or any env:// launcher) started."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def world() -> World:
    """The current process group, or rank 0 of 1 when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_backend())


def timeout() -> timedelta:
    """The process group's timeout: BAGNET_DIST_TIMEOUT seconds (default 600)."""
    raw = os.environ.get(TIMEOUT_ENV, "600")
    try:
        return timedelta(seconds=float(raw))
    except ValueError:
        raise UserError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds; set it to e.g. 600.") from None


def init_distributed(device: str | None = None) -> World:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on CPU); `world()` when not under torchrun.

    `device` is "cpu", "cuda" or None (CUDA when there is a GPU). NCCL needs one GPU per local rank: asking
    for CUDA without enough GPUs is a `UserError` raised by every rank before any process group exists.
    """
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return world()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    use_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if use_cuda:
        gpus = torch.cuda.device_count()
        if gpus < local_size:
            raise UserError(f"NCCL needs one GPU per process: torchrun started {local_size} processes on this node "
                            f"but it has {gpus} GPU{'s' * (gpus != 1)}. Use --nproc_per_node={gpus} (or fewer), "
                            "or train on the CPU with --device cpu (gloo).")
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout())
    return world()


def close_distributed() -> None:
    """Leave the process group (at the end of a command run by torchrun)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if world().backend == "nccl" else torch.device("cpu")


def barrier() -> None:
    """Wait until every rank is here (after rank 0 wrote a file the others read)."""
    if world().size > 1:
        dist.barrier()


def broadcast(obj: T) -> T:
    """Rank 0's `obj` on every rank (pickled)."""
    if world().size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_device())
    return box[0]


def all_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sums over the ranks (float64): an epoch's loss sum, correct count and images seen."""
    if world().size == 1:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def main_first(step: Callable[[], T]) -> T:
    """Run `step` on rank 0 first (it may write files), then on the other ranks (they find them written).

    A `UserError` on rank 0 (a run directory made with another profile, missing data) is raised on every
    rank with the same message, so the job ends at once; the CLI prints it from rank 0 only.
    """
    if world().size == 1:
        return step()
    if world().main:
        try:
            result = step()
        except UserError as exc:
            broadcast(str(exc))
            raise
        broadcast(None)
        return result
    error = broadcast(None)
    if error is not None:
        raise UserError(error)
    return step()


def eval_block(n: int, batch_size: int, w: World | None = None) -> tuple[int, int]:
    """This rank's images [start, stop) of an evaluation pass over `n` images: a contiguous block of whole
    batches of `batch_size` (ranks get ⌊B/W⌋ or ⌈B/W⌉ of the B batches; a rank may get none)."""
    w = w or world()
    batches = -(-n // batch_size)
    lo, hi = batches * w.rank // w.size, batches * (w.rank + 1) // w.size
    return min(n, lo * batch_size), min(n, hi * batch_size)


def gather_parts(parts: list[Any]) -> list[Any]:
    """Every rank's list of parts, concatenated in rank order, on every rank (CPU tensors are pickled as is)."""
    if world().size == 1:
        return parts
    boxes: list[list[Any] | None] = [None] * world().size
    dist.all_gather_object(boxes, parts)
    return [part for box in boxes for part in box]


def gather_cat(parts: list[Tensor]) -> Tensor:
    """`gather_parts`, then one tensor: the result one process gets from the same batches."""
    return torch.cat(gather_parts(parts))


def trace_batch(epoch: int, step: int, indices: Sequence[int]) -> None:
    """With BAGNET_TRACE_BATCHES=<dir>, append this rank's images of one step to <dir>/rank<r>.jsonl.

    For the tests: they compare the images each global step saw at different world sizes. A no-op otherwise.
    """
    out = os.environ.get(TRACE_ENV)
    if not out:
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    line = json.dumps({"epoch": epoch, "step": step, "rank": world().rank, "indices": list(indices)})
    with open(Path(out) / f"rank{world().rank}.jsonl", "a") as fh:
        fh.write(line + "\n")
