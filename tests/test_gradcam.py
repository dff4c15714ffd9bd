"""Grad-CAM: a hand-computed case, the GAP + linear identity on real models, and no side effects."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bagnet_lib.nets.gradcam import grad_cam, upsample
from bagnet_lib.nets.models import bagnet33, build_model, resnet50


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: intra-op threads only cost time (badly so on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Tiny(nn.Module):
    """layer4 = a fixed 1×1 convolution (so A is known exactly), then fc over the spatial mean."""

    def __init__(self, inplace_after: bool = False):
        super().__init__()
        self.layer4 = nn.Conv2d(3, 4, kernel_size=1, bias=False)
        self.fc = nn.Linear(4, 3)
        self.inplace_after = inplace_after
        with torch.no_grad():
            self.layer4.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, -1, 0.5]])[..., None, None])
            self.fc.weight.copy_(torch.tensor([[1.0, -2, 0.5, 0], [0, 1, 1, -1], [-1, 0, 2, 3]]))
            self.fc.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))

    def forward(self, x):
        a = self.layer4(x)
        if self.inplace_after:
            a = torch.relu_(a)  # an in-place op on the hooked output must still work
        return self.fc(a.mean(dim=(2, 3)))


def test_hand_computed_tiny_model():
    torch.manual_seed(0)
    model = Tiny()
    x = torch.randn(2, 3, 3, 5)
    W = model.fc.weight.detach()
    A = torch.einsum("oc,nchw->nohw", model.layer4.weight.detach()[..., 0, 0], x)  # layer4 by hand
    hw = A.shape[-2] * A.shape[-1]
    logits = (A.mean(dim=(2, 3)) @ W.T) + model.fc.bias.detach()
    for target in (torch.tensor([2, 0]), None):
        k = logits.argmax(dim=1) if target is None else target
        expected = torch.relu((W[k][:, :, None, None] * A).sum(dim=1) / hw)
        cam = grad_cam(model, x, target)
        assert cam.shape == (2, 3, 5)
        torch.testing.assert_close(cam, expected, rtol=1e-6, atol=1e-7)
    assert not cam.requires_grad
    # an int target applies to every image
    torch.testing.assert_close(grad_cam(model, x, 1), torch.relu((W[1][None, :, None, None] * A).sum(1) / hw))


def test_inplace_op_after_the_hooked_layer():
    torch.manual_seed(1)
    model = Tiny(inplace_after=True)
    x = torch.randn(1, 3, 4, 4)
    A = torch.einsum("oc,nchw->nohw", model.layer4.weight.detach()[..., 0, 0], x)
    W = model.fc.weight.detach()
    # ∂y/∂A_c(h, w) = W[k, c]·1[A_c(h, w) > 0] / (H'W'); α_c is its spatial mean
    alpha = (W[0][None, :, None, None] * (A > 0).float() / 16).mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(grad_cam(model, x, 0), torch.relu((alpha * A).sum(dim=1)))


@pytest.mark.parametrize("make,size", [(lambda: bagnet33(num_classes=5, width=0.125), (57, 65)),
                                       (lambda: resnet50(num_classes=5, width=0.125), (64, 96))])
def test_gap_linear_identity(make, size):
    """Grad-CAM of layer4 = ReLU(patch_logit_k − b_k) / (H'W') for a GAP + linear head."""
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(3, 3, *size)
    with torch.no_grad():
        patch = model.patch_logits(x)
        preds = model(x).argmax(dim=1)
    hw = patch.shape[-2] * patch.shape[-1]
    bias = model.fc.bias.detach()
    for target in (torch.tensor([0, 3, 4]), None):
        k = preds if target is None else target
        expected = torch.relu(patch[torch.arange(3), k] - bias[k][:, None, None]) / hw
        cam = grad_cam(model, x, target)
        assert cam.shape == patch.shape[:1] + patch.shape[2:]
        assert expected.max() > 0
        torch.testing.assert_close(cam, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def _state(model):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])


def test_frozen_model_flags_mode_and_hooks_restored():
    torch.manual_seed(0)
    model = build_model("bagnet33", 5, feature_extract=True, width=0.125)  # all frozen but fc
    for p in model.fc.parameters():
        p.requires_grad_(False)  # fully frozen
    model.layer1.train()
    model.layer2.eval()  # mixed modes must come back exactly
    model.train()
    model.layer3[0].eval()
    before = _state(model)
    x = torch.randn(2, 3, 41, 49)
    with torch.no_grad():  # works even when the caller disabled autograd
        cam = grad_cam(model, x)
    assert cam.shape == (2, 2, 3) and torch.isfinite(cam).all()
    assert _state(model) == before
    assert all(p.grad is None for p in model.parameters())  # no weight gradients computed
    assert len(model.layer4._forward_hooks) == 0
    # the same result as eval mode (grad_cam runs the model in eval mode)
    model_eval = build_model("bagnet33", 5, width=0.125)
    model_eval.load_state_dict(model.state_dict())
    torch.testing.assert_close(cam, grad_cam(model_eval.eval(), x))

    # partially frozen (feature extraction): flags restored as they were
    model.fc.weight.requires_grad_(True)
    before = _state(model)
    grad_cam(model, x, torch.tensor([1, 2]))
    assert _state(model) == before and model.fc.weight.grad is None

    # an error inside (wrong number of targets) still removes the hook and restores everything
    with pytest.raises(ValueError, match="target"):
        grad_cam(model, x, torch.tensor([0, 1, 2]))
    assert len(model.layer4._forward_hooks) == 0
    assert _state(model) == before
    with pytest.raises(AttributeError):
        grad_cam(model, x, layer="layer9")
    assert _state(model) == before


def test_upsample_scales_each_map_to_unit_range():
    cam = torch.zeros(3, 2, 3)
    cam[0] = torch.tensor([[0.0, 1, 2], [3, 4, 5]])
    cam[2, 1, 1] = 1e-3
    up = upsample(cam, (8, 12))
    assert up.shape == (3, 8, 12)
    assert up.min() >= 0 and torch.allclose(up.amax(dim=(1, 2)), torch.tensor([1.0, 0.0, 1.0]))
    assert (up[1] == 0).all()  # an all-zero map stays zero
    assert up[0, -1, -1] == 1 and up[0, 0, 0] == 0  # bilinear keeps the corners' order
    assert upsample(cam[0], (4, 6)).shape == (4, 6)
