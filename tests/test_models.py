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


def _plain_strided_copy(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with every SubsampledConv2d replaced by the plain strided nn.Conv2d it stands for (same weights)."""
    import copy

    from bagnet_lib.nets.models import SubsampledConv2d

    plain = copy.deepcopy(model)
    for parent in list(plain.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, SubsampledConv2d):
                conv = torch.nn.Conv2d(child.in_channels, child.out_channels, 1, stride=child.stride, bias=False)
                conv.weight = child.weight
                setattr(parent, child_name, conv)
    return plain


@pytest.mark.parametrize("size", [(9, 9), (10, 7)])
def test_a_subsampled_conv_is_the_strided_1x1_conv(size):
    """Every other pixel, then a stride-1 1×1 conv: the same outputs and the same weight gradient."""
    from bagnet_lib.nets.models import SubsampledConv2d

    torch.manual_seed(0)
    conv = SubsampledConv2d(8, 16, stride=2)
    x = torch.randn(3, 8, *size)
    ours = conv(x)
    ours.square().sum().backward()
    w = conv.weight.detach().clone().requires_grad_()
    ref = torch.nn.functional.conv2d(x, w, stride=2)
    ref.square().sum().backward()
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv.weight.grad, w.grad, rtol=1e-4, atol=1e-4)
    assert list(conv.state_dict()) == ["weight"]


@pytest.mark.parametrize("name", BAGNETS + ("resnet50",))
def test_the_shortcut_rewrite_changes_no_output_and_no_key(name):
    """Each strided 1×1 conv (BagNet shortcuts; BagNet-9/17's 1×1 conv2 in their last stages) is rewritten;
    swapping the plain strided conv back in gives the same state_dict and, channels-last too, the same logits."""
    from bagnet_lib.nets.models import SubsampledConv2d

    torch.manual_seed(0)
    model = build_model(name, 5, width=0.125).eval()
    strided = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)
               and m.stride != (1, 1)]
    assert strided and all(isinstance(m, SubsampledConv2d) for m in strided)
    plain = _plain_strided_copy(model)
    assert [(k, v.shape) for k, v in plain.state_dict().items()] == [(k, v.shape) for k, v in model.state_dict().items()]
    x = torch.randn(2, 3, 75, 69)  # odd sizes: the crashing case of oneDNN #6035 had an odd-sized output
    with torch.no_grad():
        ref = plain(x)
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4)
        cl = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(cl(x.contiguous(memory_format=torch.channels_last)), ref, rtol=1e-4, atol=1e-4)


def test_narrow_bagnets_train_channels_last_without_the_onednn_crash():
    """oneDNN #6035: the weight gradient of a strided 1×1 conv on channels-last input with few input channels
    corrupted the heap. The rewritten conv and a channels-last bf16 step of every narrow BagNet, in a child
    process so that a crash fails this test instead of killing pytest."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import torch, torch.nn.functional as F
        from bagnet_lib.nets.models import SubsampledConv2d, build_model
        cl = torch.channels_last
        conv = SubsampledConv2d(8, 32, stride=2).to(memory_format=cl)
        for _ in range(5):  # the case that crashed every time as F.conv2d(x, w, stride=2)
            conv(torch.randn(3, 8, 46, 46).contiguous(memory_format=cl)).sum().backward()
        for name in ("bagnet9", "bagnet17", "bagnet33"):
            torch.manual_seed(0)
            m = build_model(name, 5, width=0.125).to(memory_format=cl).train()
            x = torch.randn(4, 3, 69, 69).contiguous(memory_format=cl)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = m(x)
            F.cross_entropy(out.float(), torch.arange(4) % 5).backward()
            assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-2000:])


def _walk(model: torch.nn.Module, size: int, skip_shortcuts: bool = True) -> tuple[int, int, int]:
    """Notebook 03's receptive-field walk: (window, jump, positions per side) from the main path's layers in order."""
    window, jump, side = 1, 1, size
    for name, layer in model.named_modules():
        if ("downsample" in name and skip_shortcuts) or not isinstance(layer, (torch.nn.Conv2d, torch.nn.MaxPool2d)):
            continue
        k, s, pad = (v if isinstance(v, int) else v[0] for v in (layer.kernel_size, layer.stride, layer.padding))
        window += (k - 1) * jump
        jump *= s
        side = (side + 2 * pad - k) // s + 1
    return window, jump, side


@pytest.mark.parametrize("name", BAGNETS)
def test_the_geometry_is_what_the_layers_add_up_to(name):
    """Window and stride follow from the layer list (r += (k−1)·j, j *= s, shortcuts beside the main path), and the
    grid from the unpadded layers' sizes: `PatchGeometry` and `patch_logits` agree at every size tried."""
    model = bagnet(name, num_classes=3, width=0.125).eval()
    for size in (64, 97, 224):
        window, jump, side = _walk(model, size)
        assert (window, jump) == (model.geometry.size, model.geometry.stride)
        assert (side, side) == model.geometry.grid_size(size, size)
        if size < 224:  # the shape check is cheap at the smaller sizes
            with torch.no_grad():
                assert model.patch_logits(torch.zeros(1, 3, size, size)).shape[-2:] == (side, side)
    # counting the strided shortcuts too would count each stage's stride twice
    assert _walk(model, 224, skip_shortcuts=False)[1] == model.geometry.stride ** 2
