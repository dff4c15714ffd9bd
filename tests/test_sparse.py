"""Sparse patch logits (compute only the kept patches) and `bench sparse`."""
from __future__ import annotations

import pytest
import torch

from bagnet_lib.blackout import masks
from bagnet_lib.blackout.sparse import kept_index, kept_patch_logits, patch_logits_at
from bagnet_lib.nets.models import bagnet, resnet50

BAGNETS = ("bagnet9", "bagnet17", "bagnet33")
H, W = 75, 101  # non-square, and not a multiple of the stride


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: on a shared 2-core machine multi-threaded passes stall at random (minutes, not seconds)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _trained_bn_model(name: str, seed: int = 0, num_classes: int = 7):
    """A small BagNet whose BatchNorms hold non-trivial running statistics, in eval mode."""
    torch.manual_seed(seed)
    model = bagnet(name, num_classes=num_classes, width=0.125)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model.patch_logits(torch.randn(3, 3, 60, 70) * 1.5 + 0.3)
    bn = model.layer1[0].bn1
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    return model.eval()


@pytest.fixture(scope="module", params=BAGNETS)
def model(request):
    return _trained_bn_model(request.param)


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(1))


def _check_equal(dense, sparse, keep):
    keep = keep.expand(dense.shape[0], *keep.shape[-2:])
    sel = keep.unsqueeze(1).expand_as(dense)
    torch.testing.assert_close(sparse[sel], dense[sel], rtol=1e-4, atol=1e-4)
    assert torch.isnan(sparse[~sel]).all()


def test_shared_mask_equals_dense(model, x):
    grid = model.geometry.grid_size(H, W)
    keep = masks.random(*grid, drop_frac=0.6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        dense = model.patch_logits(x)
        sparse = patch_logits_at(model, x, keep, batch_size=5)  # several chunks, the last one partial
    assert sparse.shape == dense.shape == (2, 7, *grid)
    _check_equal(dense, sparse, keep)


def test_per_image_mask_equals_dense(model, x):
    grid = model.geometry.grid_size(H, W)
    keep = masks.random(*grid, drop_frac=0.5, generator=torch.Generator().manual_seed(3), n=2)
    keep[1, 0, 0] = keep[1, -1, -1] = True  # the corners: the windows at the image's edges
    with torch.no_grad():
        dense = model.patch_logits(x)
        sparse = patch_logits_at(model, x, keep)
    _check_equal(dense, sparse, keep)
    # and the NaN-mean over kept patches is the blacked-out image logit
    for n in range(2):
        expected = dense[n][:, keep[n]].mean(dim=1)
        torch.testing.assert_close(sparse[n].nanmean(dim=(1, 2)), expected, rtol=1e-4, atol=1e-4)


def test_values_index_format(model, x):
    grid = model.geometry.grid_size(H, W)
    keep = masks.random(*grid, drop_frac=0.7, generator=torch.Generator().manual_seed(4), n=2)
    with torch.no_grad():
        dense = model.patch_logits(x)
        values, index = kept_patch_logits(model, x, keep, batch_size=3)
    assert index.shape == (int(keep.sum()), 3) and index.dtype == torch.int64
    assert values.shape == (int(keep.sum()), 7)
    assert torch.equal(index, keep.nonzero())
    torch.testing.assert_close(values, dense[index[:, 0], :, index[:, 1], index[:, 2]], rtol=1e-4, atol=1e-4)


def test_train_mode_is_restored_and_eval_used():
    model = _trained_bn_model("bagnet17").train()
    xx = torch.randn(1, 3, 49, 41)
    keep = torch.ones(model.geometry.grid_size(49, 41), dtype=torch.bool)
    with torch.no_grad():
        sparse = patch_logits_at(model, xx, keep)
        assert model.training  # restored
        dense = model.eval().patch_logits(xx)
    torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=1e-4)


def test_nothing_kept_and_everything_kept():
    model = _trained_bn_model("bagnet9")
    xx = torch.randn(1, 3, 40, 48)
    grid = model.geometry.grid_size(40, 48)
    with torch.no_grad():
        none = patch_logits_at(model, xx, torch.zeros(grid, dtype=torch.bool))
        values, index = kept_patch_logits(model, xx, torch.zeros(grid, dtype=torch.bool))
        full = patch_logits_at(model, xx, torch.ones(grid, dtype=torch.bool), fill=0.0)
        dense = model.patch_logits(xx)
    assert none.shape == (1, 7, *grid) and torch.isnan(none).all()
    assert values.shape == (0, 7) and index.shape == (0, 3)
    torch.testing.assert_close(full, dense, rtol=1e-4, atol=1e-4)


def test_only_kept_windows_are_computed():
    """Changing pixels outside every kept window leaves the kept logits unchanged."""
    model = _trained_bn_model("bagnet33")
    xx = torch.randn(1, 3, 64, 64)  # grid 4×4
    keep = torch.zeros(4, 4, dtype=torch.bool)
    keep[0, 0] = True  # window rows/cols 0..32
    yy = xx.clone()
    yy[..., 40:, :] = 100.0
    yy[..., :, 40:] = -100.0
    with torch.no_grad():
        a = patch_logits_at(model, xx, keep)
        b = patch_logits_at(model, yy, keep)
    torch.testing.assert_close(a[:, :, 0, 0], b[:, :, 0, 0])
    assert torch.isnan(a[:, :, 1:, :]).all() and torch.isnan(a[:, :, :, 1:]).all()


def test_crop_shapes_seen_by_the_model():
    model = _trained_bn_model("bagnet17")
    seen = []
    handle = model.conv1.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    try:
        keep = torch.zeros(model.geometry.grid_size(H, W), dtype=torch.bool)
        keep.view(-1)[:11] = True
        with torch.no_grad():
            patch_logits_at(model, torch.randn(1, 3, H, W), keep, batch_size=4)
    finally:
        handle.remove()
    assert seen == [(4, 3, 17, 17), (4, 3, 17, 17), (3, 3, 17, 17)]


def test_resnet50_is_refused():
    model = resnet50(num_classes=3, width=0.125).eval()
    with pytest.raises(ValueError, match="geometry"):
        patch_logits_at(model, torch.randn(1, 3, 64, 64), torch.ones(8, 8, dtype=torch.bool))


def test_bad_masks_are_refused(x):
    model = _trained_bn_model("bagnet9")
    grid = model.geometry.grid_size(H, W)
    with pytest.raises(ValueError, match="shape"):
        patch_logits_at(model, x, torch.ones(grid[0] + 1, grid[1], dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        patch_logits_at(model, x, torch.ones(3, *grid, dtype=torch.bool))  # batch is 2
    with pytest.raises(ValueError, match="boolean"):
        patch_logits_at(model, x, torch.ones(grid))
    with pytest.raises(ValueError, match="receptive field"):
        patch_logits_at(model, torch.randn(1, 3, 8, 8), torch.ones(1, 1, dtype=torch.bool))
    assert kept_index(torch.ones(2, 2, dtype=torch.bool), 3, (2, 2)).shape == (12, 3)


def test_meta_flop_count_equals_real_count():
    from bagnet_lib.bench.sparse import dense_and_sparse_flops

    model = _trained_bn_model("bagnet33")
    xx = torch.randn(1, 3, 72, 80)
    keep = masks.random(*model.geometry.grid_size(72, 80), drop_frac=0.5, generator=torch.Generator().manual_seed(0))
    meta = dense_and_sparse_flops(model, xx, keep, device="meta")
    real = dense_and_sparse_flops(model, xx, keep, device=None)
    assert meta == real and meta[0] > 0 and meta[1] > 0


def test_break_even_interpolation():
    from bagnet_lib.bench.sparse import break_even

    assert break_even([0.1, 0.5], [0.5, 1.5])[0] == pytest.approx(0.3)
    be, note = break_even([0.1, 1.0], [0.2, 0.9])
    assert be is None and "cheaper" in note
    be, note = break_even([0.1, 1.0], [1.2, 3.0])
    assert be is None and "smallest" in note


@pytest.fixture(scope="module")
def quick_result():
    from bagnet_lib.bench import sparse as bench

    return bench.run(quick=True)


@pytest.mark.slow
def test_bench_quick_structure(quick_result):
    import json

    r = quick_result
    json.dumps(r)  # JSON-ready
    for key in ("image_size", "width", "grid", "torch_threads", "models", "keep_fracs"):
        assert key in r
    assert set(r["models"]) == set(BAGNETS)
    for name, m in r["models"].items():
        assert m["max_abs_diff"] < 1e-4, name
        pts = m["points"]
        assert [p["keep_frac"] for p in pts] == sorted(p["keep_frac"] for p in pts)
        for p in pts:
            assert set(p) == {"keep_frac", "kept", "sparse_flops", "dense_flops", "sparse_s", "dense_s"}
            assert p["sparse_s"] > 0 and p["dense_s"] > 0
        assert len({p["dense_flops"] for p in pts}) == 1
        flops = [p["sparse_flops"] for p in pts]
        assert all(a < b for a, b in zip(flops, flops[1:]))
        assert pts[-1]["kept"] == m["grid"][0] * m["grid"][1]
        assert set(m["break_even_keep_frac"]) == {"flops", "time"}
        assert isinstance(m["expected_vs_measured"], str) and m["expected_vs_measured"]
    # FLOPs per kept patch grow with the receptive field (more overlap recomputed)
    ratio = {n: m["flops_per_patch_ratio"] for n, m in r["models"].items()}
    assert ratio["bagnet9"] < ratio["bagnet17"] < ratio["bagnet33"]
    assert ratio["bagnet9"] < 1.0 < ratio["bagnet33"]


@pytest.mark.slow
def test_bench_quick_table_and_plot(quick_result, tmp_path):
    from bagnet_lib.bench import sparse as bench

    text = bench.format_table(quick_result)
    assert "bagnet33" in text and "break-even" in text
    out = tmp_path / "sparse.png"
    fig = bench.plot_sparse(quick_result, out)
    assert out.exists() and out.stat().st_size > 1000
    assert len(fig.axes) == 2
    # the command writes the figure beside its JSON
    import json

    from bagnet_lib.cli import main

    (tmp_path / "in.json").write_text(json.dumps(quick_result))
    assert main(["bench", "sparse", "--from-json", str(tmp_path / "in.json"), "--json", str(tmp_path / "out.json")]) == 0
    assert (tmp_path / "out.png").stat().st_size > 1000
