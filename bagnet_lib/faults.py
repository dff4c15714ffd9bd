"""Fault injection at named points: a test arms one point and the process kills itself there with SIGKILL.

Introduced for the reliability tests (tests/test_reliability_runs.py). A crash that lands "somewhere
in the middle" of a run is simulated deterministically instead of by sleeping and hoping: the code
calls `fault_point(name)` at every gap between two writes, and `BAGNET_FAULT="<name>#<k>"` makes the
k-th call with that name (k = 1 when `#k` is left out) send SIGKILL to its own process. Under torchrun,
`"<name>#<k>@<rank>"` arms it in that rank only (the environment's RANK), so one process of a distributed job
dies and the others do not. Nothing else changes: with BAGNET_FAULT unset a fault point is one dictionary look-up.

The named points (see `train.train_model`, `blackout.imagenet.stream_blackout` and `io.atomic_write`):

- `after_batch` — after an optimizer step (the k-th step of this process);
- `mid_write:<file name>` — while `<file name>` is being written atomically: its temporary file holds
  only the first half of the bytes, and the target has not been replaced;
- `after_best`, `after_last`, `after_epoch` — after an epoch's best checkpoint, its training
  checkpoint (`<name>_last.pt`) and its history row (`<name>_history.csv`) reached the disk;
- `stream_batch` — after a batch of the streaming ImageNet pass (and its partial sums, when due).
"""
from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

ENV = "BAGNET_FAULT"
_hits: Counter[str] = Counter()


def armed(name: str) -> bool:
    """True when this call of point `name` is the one BAGNET_FAULT names (counts the call)."""
    spec = os.environ.get(ENV)
    if not spec:
        return False
    spec, _, rank = spec.partition("@")
    point, _, nth = spec.partition("#")
    if point != name or (rank and rank != os.environ.get("RANK", "0")):
        return False
    _hits[name] += 1
    return _hits[name] == (int(nth) if nth else 1)


def kill_self() -> None:
    """SIGKILL this process: no `finally`, no `atexit`, no flushing: what a power cut or the OOM killer does."""
    os.kill(os.getpid(), signal.SIGKILL)


def fault_point(name: str) -> None:
    """Kill the process here if BAGNET_FAULT names this call of point `name`."""
    if armed(name):
        kill_self()


def fault_mid_write(tmp: Path, target: Path) -> None:
    """At point `mid_write:<target name>`: cut the finished temporary file to half its bytes, then kill."""
    if armed(f"mid_write:{target.name}"):
        size = tmp.stat().st_size
        with open(tmp, "r+b") as fh:
            fh.truncate(size // 2)
        kill_self()
