"""Numerical precision: bf16 where this machine computes it fast, and fp32 that is really IEEE fp32.

Introduced in notebook 02 (training in bf16 on this CPU) and for the published weights (the ImageNet study,
docs/imagenet.md). Every forward pass of the project runs inside `precision_scope(device, precision)`:

- "bf16": `torch.autocast` to bf16 (`resolve_precision` falls back to fp32 where bf16 would be emulated);
- "fp32": autocast off *and* TF32 off (`ieee_fp32`). On CUDA, PyTorch lets cuDNN convolutions round their
  inputs to TF32 (10 mantissa bits) by default, and that costs the published weights accuracy: bagnetsv2's
  re-evaluation of the original BagNet-33 (https://github.com/berenslab/bagnetsv2) measured 66.70 % top-1 in
  fp32, 64.23 % with TF32 convolutions and 57.96 % in fp16 mixed precision. So "fp32" here means fp32.

`ieee_fp32` sets `torch.backends.cudnn.allow_tf32` and `torch.backends.cuda.matmul.allow_tf32` to False for
its block and restores both afterwards, even when the block raises. Training in fp32 (the `paper` profile)
holds it for the whole run, backward passes included.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor, nn

from bagnet_lib.errors import UserError
from bagnet_lib.nets.compiled import evaluation_backbone

PRECISIONS = ("bf16", "fp32")
# bagnetsv2's top-1 of the original BagNet-33 weights on ImageNet validation, by precision
BAGNETSV2_TOP1 = {"fp32": 66.70, "tf32": 64.23, "fp16": 57.96}
BAGNETSV2_URL = "https://github.com/berenslab/bagnetsv2"


def cpu_has_fast_bf16() -> bool:
    """True when this CPU multiplies bf16 natively (AVX-512 BF16 or AMX): there bf16 autocast roughly
    doubles the training speed; elsewhere bf16 is emulated and slower than fp32."""
    try:
        return bool(torch._C._cpu._is_avx512_bf16_supported() or torch._C._cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: read the flags the kernel reports
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a run really uses on `device`: "bf16" where it is fast there, else "fp32"."""
    if precision not in PRECISIONS:
        raise UserError(f"Unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    if precision == "bf16":
        if device.type == "cpu" and not cpu_has_fast_bf16():
            return "fp32"
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return "fp32"
    return precision


def tf32_flags() -> dict[str, bool]:
    """The two switches that let CUDA round fp32 to TF32: cuDNN convolutions and matrix products."""
    return {"cudnn.allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "cuda.matmul.allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32)}


@contextmanager
def ieee_fp32(enabled: bool = True) -> Iterator[None]:
    """TF32 off (cuDNN convolutions and CUDA matmuls) inside the block, the previous settings restored after."""
    if not enabled:
        yield
        return
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def precision_scope(device: torch.device, precision: str):
    """The context a forward pass runs in: bf16 autocast for "bf16", IEEE fp32 (`ieee_fp32`) for "fp32"."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return ieee_fp32() if precision == "fp32" else nullcontext()


def features_fp32(model: nn.Module, x: Tensor, precision: str) -> Tensor:
    """The last feature map of a normalised batch, computed in `precision`, returned in fp32.

    Every evaluation (validation, test predictions, the logit cache, pixel blackout, the ImageNet study)
    goes through this one function, so the full and the blacked-out cases are computed alike; the linear
    head then runs in fp32 on these features. Inside `compiled.compiled_evaluation(model)` a pass without
    gradients runs the compiled backbone.
    """
    backbone = evaluation_backbone(model) if not torch.is_grad_enabled() else None  # in `compiled_evaluation`
    with precision_scope(x.device, precision):
        return (backbone(x) if backbone is not None else model.features(x)).float()


def warn_reduced_precision(precision: str, what: str) -> None:
    """Warn that `what` (published weights) is evaluated in bf16, with the figures of what that can cost."""
    if precision != "fp32":
        warnings.warn(
            f"{what} evaluated in {precision}, not fp32: the accuracy is not comparable with the published one. "
            f"bagnetsv2 ({BAGNETSV2_URL}) measured the original BagNet-33 at {BAGNETSV2_TOP1['fp32']:.2f} % top-1 "
            f"in fp32, {BAGNETSV2_TOP1['tf32']:.2f} % with TF32 convolutions and {BAGNETSV2_TOP1['fp16']:.2f} % in "
            "fp16 mixed precision.", stacklevel=2)
