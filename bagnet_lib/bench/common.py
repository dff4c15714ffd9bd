"""What the benchmarks share."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, batches: Iterable[Tensor]) -> nn.Module:
    """Give every BatchNorm running statistics from `batches` (cumulative average), then eval.

    Without this a random-init network in eval mode normalises with mean 0 / variance 1, activations
    grow layer by layer and the logits are in the hundreds, a scale no trained model has (and one at
    which float32 rounding alone moves the cross-entropy by ~1e-5).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for x in batches:
        model(x)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    return model.eval()
