"""The networks: official BagNet layout, torchvision's ResNet-50, patch logits and their geometry."""
from __future__ import annotations

import json

import pytest
import torch
import torchvision

from bagnet_lib.errors import UserError
from bagnet_lib.nets.models import PatchGeometry, bagnet, bagnet33, build_model, resnet50
from tests.conftest import SPEC

BAGNETS = ("bagnet9", "bagnet17", "bagnet33")


@pytest.mark.parametrize("name", BAGNETS)
def test_state_dict_layout_equals_the_official_bagnet(name):
    if not SPEC.is_file():
        pytest.skip(f"the official layout spec is not here ({SPEC})")
    spec = json.loads(SPEC.read_text())["models"][name]
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in bagnet(name).state_dict().items()]
    assert ours == spec  # same keys, same order, same shapes and dtypes


def test_resnet50_is_torchvision_resnet50():
    """Same keys and shapes as torchvision's resnet50, and the same outputs with its weights loaded."""
    torch.manual_seed(0)
    tv = torchvision.models.resnet50().eval()
    ours = resnet50().eval()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in tv.state_dict().items()]
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,grid", [("bagnet9", 27), ("bagnet17", 26), ("bagnet33", 24)])
def test_patch_grid_at_224(name, grid):
    model = bagnet(name, num_classes=5, width=0.125).eval()
    with torch.no_grad():
        out = model.patch_logits(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 5, grid, grid)
    assert model.geometry.grid_size(224, 224) == (grid, grid)


@pytest.mark.parametrize("name", BAGNETS + ("resnet50",))
def test_forward_is_the_mean_of_patch_logits(name):
    torch.manual_seed(0)
    model = build_model(name, 5, width=0.25).eval()
    x = torch.randn(2, 3, 80, 112)  # non-square on purpose: the official BagNet code breaks here
    with torch.no_grad():
        torch.testing.assert_close(model.patch_logits(x).mean(dim=(2, 3)), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,rf", [("bagnet9", 9), ("bagnet17", 17), ("bagnet33", 33)])
def test_a_window_crop_gives_the_logit_at_its_position(name, rf):
    """The logit at (i, j) depends only on rows/cols 8i … 8i+rf-1: cropping that window reproduces it."""
    torch.manual_seed(0)
    model = bagnet(name, num_classes=5, width=0.25)
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics, then evaluate
        for _ in range(3):
            model(torch.randn(4, 3, 64, 64))
    model.eval()
    assert model.geometry == PatchGeometry(size=rf, stride=8)
    x = torch.randn(1, 3, 72, 104)
    with torch.no_grad():
        full = model.patch_logits(x)
        h, w = full.shape[-2:]
        assert (h, w) == model.geometry.grid_size(72, 104)
        for i, j in [(0, 0), (h - 1, w - 1), (h // 2, w // 3)]:
            rows, cols = model.geometry.window(i, j)
            crop = model.patch_logits(x[:, :, rows, cols])
            assert crop.shape[-2:] == (1, 1)
            torch.testing.assert_close(crop[0, :, 0, 0], full[0, :, i, j], rtol=1e-4, atol=1e-4)


def test_changing_a_pixel_outside_the_window_leaves_the_logit_alone():
    torch.manual_seed(0)
    model = bagnet33(num_classes=3, width=0.125).eval()
    x = torch.randn(1, 3, 64, 64)
    y = x.clone()
    y[:, :, 40:, 40:] += 5.0  # outside the window of logit (0, 0), rows/cols 0…32
    with torch.no_grad():
        a, b = model.patch_logits(x), model.patch_logits(y)
    torch.testing.assert_close(a[..., 0, 0], b[..., 0, 0])
    assert not torch.allclose(a[..., -1, -1], b[..., -1, -1])


def test_feature_extract_freezes_all_but_fc():
    model = build_model("bagnet33", 5, feature_extract=True, width=0.125)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    assert model.fc.out_features == 5
    assert {n for n, p in build_model("resnet50", 5, width=0.125).named_parameters() if not p.requires_grad} == set()


def test_width_scales_every_stage_and_the_head():
    model = build_model("bagnet33", 5, width=0.25)
    assert model.conv1.out_channels == 16 and model.fc.in_features == 512


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match="resnet50, bagnet9, bagnet17, bagnet33"):
        build_model("vgg16", 5)


def test_zero_init_residual_makes_every_block_start_as_its_shortcut():
    torch.manual_seed(0)
    model = build_model("bagnet33", 5, width=0.125, zero_init_residual=True).eval()
    blocks = [m for m in model.modules() if type(m).__name__ == "Bottleneck"]
    assert len(blocks) == 16 and all(torch.count_nonzero(b.bn3.weight) == 0 for b in blocks)
    block = model.layer3[1]  # no downsample: the block is relu(x) at initialisation
    x = torch.randn(2, block.conv1.in_channels, 6, 6)
    torch.testing.assert_close(block(x), torch.relu(x))
    default = build_model("bagnet33", 5, width=0.125)
    assert all(torch.all(b.bn3.weight == 1) for b in default.modules() if type(b).__name__ == "Bottleneck")
