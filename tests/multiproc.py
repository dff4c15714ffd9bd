"""Two ranks in a gloo process group (torch.multiprocessing, a `file://` rendezvous: no ports), and one process.

Shared by the tests of the distributed pieces: `two_ranks_and_one(tmp_path, compute)` runs `compute(rank,
world_size)` in 2 spawned ranks and in this process as rank 0 of 1, each with one intra-op thread (as torchrun
gives each of several ranks on a machine; fp32 rounding depends on the thread count). `compute` must be a
module-level function, so that the spawned processes can import it.
"""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _in_group(rank: int, world_size: int, rendezvous: Path, out: Path, compute) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=120))
    torch.save(compute(rank, world_size), out / f"rank{rank}.pt")
    dist.destroy_process_group()


def two_ranks_and_one(tmp_path: Path, compute) -> tuple[list, object]:
    """The ranks' results (rank order) and the one-process result of `compute`."""
    mp.spawn(_in_group, args=(2, tmp_path / "rendezvous", tmp_path, compute), nprocs=2, join=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = compute(0, 1)
    finally:
        torch.set_num_threads(threads)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)], one
