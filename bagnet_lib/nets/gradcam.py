"""Grad-CAM (Selvaraju et al. 2017): where a CNN's last feature map supports a class.

For a class score y_k and a feature map A [C, H', W'] of the layer `layer`, Grad-CAM weighs each
channel by the spatial mean of its gradient, α_c = mean_{h,w} ∂y_k/∂A_c(h, w), and keeps the positive
part of the weighted sum: ReLU(Σ_c α_c A_c), a map on the H'×W' grid of that layer.

For the models here (global average pooling then a linear layer) ∂y_k/∂A_c(h, w) = W[k, c] / (H'W')
everywhere, so the Grad-CAM of `layer4` is exactly ReLU(patch_logit_k − b_k) / (H'W'): for a BagNet,
Grad-CAM and the patch-logit heat map are the same picture up to the bias and the ReLU. The tests
check this identity.

The gradient is taken with respect to the activation only (the hooked output is replaced by a
detached copy that requires grad), so this works on frozen models, computes no weight gradients and
leaves every parameter's `.grad` untouched. The model is run in eval mode (BatchNorm with running
statistics, no running-stat updates); its modes and `requires_grad` flags are restored afterwards.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["grad_cam", "upsample"]


def grad_cam(model: nn.Module, images: Tensor, target: Tensor | int | Sequence[int] | None = None,
             layer: str = "layer4") -> Tensor:
    """Grad-CAM maps [N, H', W'] of `layer` for class `target` (default: the predicted class).

    `images` is a normalised float batch [N, 3, H, W] on the model's device. The maps are neither
    normalised nor upsampled (see `upsample`). The model's train/eval modes and its parameters'
    `requires_grad` flags are restored on return, and the hooks are removed even on error.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be a batch [N, 3, H, W], got shape {tuple(images.shape)}")
    module = model.get_submodule(layer)  # AttributeError names the missing layer
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    store: dict[str, Tensor] = {}

    def keep_output(_module: nn.Module, _inputs, output: Tensor) -> Tensor:
        if not isinstance(output, Tensor):
            raise TypeError(f"grad_cam needs layer {layer!r} to output a tensor, got {type(output).__name__}")
        act = output.detach().requires_grad_(True)  # gradients w.r.t. the activation, not the weights
        act.register_hook(lambda grad: store.__setitem__("grad", grad))
        store["act"] = act
        return act.clone()  # replaces the layer's output downstream (a clone: in-place ops stay legal)

    handle = module.register_forward_hook(keep_output)
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)  # no weight gradients are needed (and none are accumulated)
        with torch.enable_grad():
            logits = model(images.detach())
            if "act" not in store:
                raise RuntimeError(f"layer {layer!r} was not called by the model's forward pass")
            if logits.dim() != 2:
                raise ValueError(f"grad_cam needs class scores [N, K], the model returned {tuple(logits.shape)}")
            n = logits.shape[0]
            if target is None:
                target_t = logits.detach().argmax(dim=1)
            else:
                target_t = torch.as_tensor(target, dtype=torch.long, device=logits.device)
                target_t = target_t.expand(n) if target_t.dim() == 0 else target_t.reshape(-1)
                if target_t.shape[0] != n:
                    raise ValueError(f"target has {target_t.shape[0]} entries for {n} images")
            # The images are independent (eval mode), so the gradient of the sum w.r.t. A[n] is ∂y_n/∂A[n].
            score = logits.gather(1, target_t[:, None]).sum()
            torch.autograd.grad(score, store["act"])  # fills store["grad"] through the tensor hook
        act, grad = store["act"].detach(), store["grad"].detach()
        alpha = grad.mean(dim=(2, 3), keepdim=True)  # [N, C, 1, 1]
        return torch.relu((alpha * act).sum(dim=1))
    finally:
        handle.remove()
        for m, training in modes:
            m.training = training  # per module: `train()` would recurse and overwrite children
        for p, requires_grad in flags:
            p.requires_grad_(requires_grad)


def upsample(cam: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of maps [N, h, w] (or one map [h, w]) to `size`, each scaled to [0, 1].

    Negative values are clipped to 0 (Grad-CAM maps are non-negative by construction) and each map is
    divided by its maximum, so 1 marks the strongest evidence and an all-zero map stays zero.
    """
    single = cam.dim() == 2
    maps = cam[None] if single else cam
    if maps.dim() != 3:
        raise ValueError(f"cam must be [N, h, w] or [h, w], got shape {tuple(cam.shape)}")
    up = F.interpolate(maps.detach().float()[:, None], size=tuple(size), mode="bilinear",
                       align_corners=False)[:, 0].clamp_min(0)
    peak = up.amax(dim=(1, 2), keepdim=True)
    up = torch.where(peak > 0, up / peak.clamp_min(torch.finfo(up.dtype).tiny), torch.zeros_like(up))
    return up[0] if single else up
