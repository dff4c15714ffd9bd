"""`torch.compile` where it pays, eager where it cannot work: the training step and the evaluation passes.

Introduced in notebook 02 (`Profile.compile`) and docs/performance.md. `CompiledOrEager` compiles a module
on its first call and falls back to eager execution, saying why once, where compilation fails (no C++ compiler,
an unsupported CPU or Python). `compiled_evaluation` is a block inside which `precision.features_fp32` runs a
network's backbone compiled by inductor with *freezing*: its weights and BatchNorm statistics folded into the
generated code as constants, which is exact only while they do not change, so the block wraps evaluation
passes of a trained network and never training or adaptation.
"""
from __future__ import annotations

import time
import weakref
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class CompiledOrEager(nn.Module):
    """`module` run through `torch.compile`, or eagerly where compilation cannot work: the first call compiles;
    if that fails, this says why once and runs `module` itself from then on. Compilation traces with fake
    tensors, so a failed first call has changed nothing (no BatchNorm statistics, no weights) and the same batch
    is simply run eagerly.

    `compile_s` is the first call's duration (compilation included); `fallback` the reason, if any. `what` names
    the pass in the messages ("train", "evaluation"); `options` are inductor's (`{"freezing": True}`).
    """

    def __init__(self, module: nn.Module, verbose: bool = True, what: str = "train", options: dict | None = None):
        super().__init__()
        self.module = module
        self._compiled = torch.compile(module, options=options)
        self.verbose, self.what = verbose, what
        self.compile_s: float | None = None
        self.fallback: str | None = None

    def forward(self, *args, **kwargs):
        if self.compile_s is not None:
            return (self.module if self.fallback else self._compiled)(*args, **kwargs)
        t0 = time.perf_counter()
        try:
            out = self._compiled(*args, **kwargs)
        except Exception as exc:  # the compiler's many failure types; a true model error recurs eagerly below
            self.fallback = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
            if self.verbose:
                doing = "training" if self.what == "train" else f"running the {self.what}"
                print(f"[{self.what}] torch.compile is not available here ({self.fallback}); {doing} eagerly.")
            out = self.module(*args, **kwargs)
        self.compile_s = time.perf_counter() - t0
        if self.verbose and not self.fallback:
            print(f"[{self.what}] torch.compile: the first {'step' if self.what == 'train' else 'batch'} took "
                  f"{self.compile_s:.0f} s (compilation included)")
        return out


class _Backbone(nn.Module):
    """`model.features` as a module of its own (what `compiled_evaluation` compiles)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.features(x)


_COMPILED: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, CompiledOrEager]]" = weakref.WeakKeyDictionary()
_ACTIVE: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()  # model → verbose


def _state_version(model: nn.Module) -> tuple:
    """Identifies the weights and statistics a frozen compilation folded in: each tensor's identity and its
    in-place version counter (bumped by an optimizer step, `load_state_dict`, a BatchNorm update)."""
    return tuple((id(t), t._version) for t in (*model.parameters(), *model.buffers()))


def evaluation_backbone(model: nn.Module) -> CompiledOrEager | None:
    """The compiled backbone `features_fp32` uses for `model` inside `compiled_evaluation`, else None."""
    if model not in _ACTIVE:
        return None
    version = _state_version(model)
    kept = _COMPILED.get(model)
    if kept is None or kept[0] != version:  # first use, or the weights changed since: compile again
        kept = (version, CompiledOrEager(_Backbone(model), _ACTIVE[model], what="evaluation",
                                         options={"freezing": True}))
        _COMPILED[model] = kept
    return kept[1]


@contextmanager
def compiled_evaluation(model: nn.Module, enabled: bool = True, verbose: bool = False) -> Iterator[None]:
    """Inside the block, every `features_fp32(model, …)` (validation, test predictions, the logit cache, pixel
    blackout) runs `model.features` compiled with freezing (`torch.no_grad` passes only: a pass with gradients
    runs eagerly). Its logits differ from eager ones by rounding (inductor fuses and orders operations otherwise;
    tests/test_compiled.py bounds the difference). The compilation is kept for the model's later blocks and made
    again when its weights or statistics have changed (`_state_version`). Each batch shape compiles once (a
    partial last batch too). `enabled=False` is a plain block."""
    if not enabled:
        yield
        return
    _ACTIVE[model] = verbose
    try:
        yield
    finally:
        _ACTIVE.pop(model, None)
