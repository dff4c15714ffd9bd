"""The frontier's pieces: the cost model against FlopCounterMode, the anytime rule against a slow loop, Pareto."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bagnet_lib.blackout.frontier import anytime, cost_model, count_flops, dense_flops, pareto_front
from bagnet_lib.blackout.sparse import patch_logits_at
from bagnet_lib.nets.models import bagnet, resnet50

SIZE = 64  # bagnet33: a 4×4 grid of 33 px windows at stride 8


@pytest.mark.parametrize("name", ["bagnet33", "bagnet9"])
def test_cost_model_matches_flop_counter_on_real_tensors(name):
    torch.manual_seed(0)
    model = bagnet(name, num_classes=5, width=0.125).eval()
    cm = cost_model(model, SIZE)
    x = torch.randn(1, 3, SIZE, SIZE)
    h, w = model.geometry.grid_size(SIZE, SIZE)
    assert cm.n_patches == h * w
    with torch.no_grad():
        assert cm.dense == count_flops(lambda: model.patch_logits(x))
        gen = torch.Generator().manual_seed(1)
        for kept in (1, 3, h * w // 2, h * w):
            keep = torch.zeros(h * w, dtype=torch.bool)
            keep[torch.randperm(h * w, generator=gen)[:kept]] = True
            sparse = count_flops(lambda: patch_logits_at(model, x, keep.view(h, w)))
            assert sparse == kept * cm.per_patch  # each kept patch is one rf×rf crop
            assert cm.cost(kept) == min(cm.dense, sparse)
    if name == "bagnet9":  # windows overlap by 1 px: computing patches alone is cheaper at any fraction
        assert cm.break_even >= 1
    else:
        assert cm.break_even < 1


def test_dense_flops_of_resnet_and_bagnet_at_two_sizes():
    r = resnet50(num_classes=5, width=0.125)
    assert dense_flops(r, 64) < dense_flops(r, 96)
    b = bagnet("bagnet33", num_classes=5, width=0.125)
    assert dense_flops(b, SIZE) == pytest.approx(cost_model(b, SIZE).dense, rel=0.01)  # + the pooled head only
    with pytest.raises(ValueError, match="BagNet"):
        cost_model(r, 64)


def _slow_anytime(pl: torch.Tensor, order: torch.Tensor, chunk: int, threshold: float):
    n, k, h, w = pl.shape
    preds, used = [], []
    for i in range(n):
        flat = pl[i].reshape(k, -1).double()[:, order[i] if order.dim() == 2 else order]
        seen = 0
        while True:
            seen = min(seen + chunk, h * w)
            mean = flat[:, :seen].mean(dim=1)
            top = mean.sort(descending=True).values
            if top[0] - top[1] >= threshold or seen == h * w:
                break
        preds.append(int(mean.argmax()))
        used.append(seen)
    return torch.tensor(preds), torch.tensor(used)


@pytest.mark.parametrize("threshold,chunk,per_image", [(0.0, 1, False), (0.5, 3, False), (1.5, 4, True),
                                                        (float("inf"), 5, True)])
def test_anytime_equals_a_slow_per_image_loop(threshold, chunk, per_image):
    gen = torch.Generator().manual_seed(0)
    pl = torch.randn(12, 5, 4, 5, generator=gen)
    order = (torch.stack([torch.randperm(20, generator=gen) for _ in range(12)]) if per_image
             else torch.randperm(20, generator=gen))
    pred, used = anytime(pl, order, chunk, threshold)
    slow_pred, slow_used = _slow_anytime(pl, order, chunk, threshold)
    assert torch.equal(pred, slow_pred) and torch.equal(used, slow_used)
    if threshold == float("inf"):  # never confident enough: every patch, the dense prediction
        assert (used == 20).all() and torch.equal(pred, pl.mean(dim=(2, 3)).argmax(1))


def test_pareto_front_is_non_dominated_and_complete():
    rng = np.random.default_rng(0)
    cost, acc = rng.random(200), rng.random(200)
    front = pareto_front(cost, acc)
    for i in np.flatnonzero(front):  # nothing beats a front point
        assert not np.any((cost <= cost[i]) & (acc >= acc[i]) & ((cost < cost[i]) | (acc > acc[i])))
    for i in np.flatnonzero(~front):  # every other point is beaten by some point
        assert np.any((cost <= cost[i]) & (acc >= acc[i]) & ((cost < cost[i]) | (acc > acc[i])))
    assert pareto_front([1, 1], [0.5, 0.5]).all()  # equal points do not dominate each other


def test_frontier_points_on_a_tiny_cache():
    from bagnet_lib.blackout.frontier import (
        COLUMNS,
        downscaled_points,
        frontier_points,
        per_image_correct,
        verify_sparse,
    )
    from bagnet_lib.blackout.sweep import cache_logits

    torch.manual_seed(0)
    model = bagnet("bagnet33", num_classes=5, width=0.125).eval()
    images = torch.randint(0, 255, (10, 3, SIZE, SIZE), dtype=torch.uint8)
    labels = torch.randint(0, 5, (10,))
    cache = cache_logits(model, images, labels, progress=False)
    cm = cost_model(model, SIZE)
    points = frontier_points(cache, cm, "bagnet33", seeds=range(3), keep_fracs=(0.25, 1.0),
                             thresholds=(float("inf"),))
    correct = per_image_correct(points)
    assert all(set(pt) == set(COLUMNS) for pt in points) and len(correct) == len(points)
    assert all(abs(correct[i].mean() - pt["acc"]) < 1e-12 for i, pt in enumerate(points))
    by = {(pt["method"], pt["parameter"]): pt for pt in points}
    dense = by[("dense", 1.0)]
    assert by[("kept patches, random", 1.0)]["acc"] == dense["acc"]  # keeping everything is the dense model
    assert by[("kept patches, random", 0.25)]["gflops_per_image"] == pytest.approx(4 * cm.per_patch / 1e9)
    never = by[("anytime (stop when confident)", float("inf"))]  # never confident: every patch, one by one
    assert never["acc"] == dense["acc"] and never["gflops_per_image"] == pytest.approx(16 * cm.per_patch / 1e9)
    assert verify_sparse(model, images, cache) < 1e-4
    small = downscaled_points(model, "bagnet33", images, labels, scales=(0.75, 1.0))
    per_image_correct(small)
    assert [pt["parameter"] for pt in small] == [48, 64] and small[0]["gflops_per_image"] < small[1]["gflops_per_image"]
    assert [pt["method"] for pt in small] == ["fewer pixels (dense)", "dense"]


def test_the_frontier_figure_labels_every_point_with_its_setting():
    import pandas as pd

    from bagnet_lib.figures.plots import frontier_label, plot_frontier

    assert frontier_label("kept patches, random", 0.05) == "5%" and frontier_label("dense", 1.0) == ""
    assert frontier_label("anytime (stop when confident)", 0.25) == "≥0.25"
    assert frontier_label("fewer pixels (dense)", "112") == "112px"
    assert frontier_label("kept patches, strided sub-grid", "every 3") == "n=3"
    rows = [("bagnet33", "dense", 1.0, 2.0, 0.76), ("bagnet33", "kept patches, random", 0.05, 0.7, 0.66),
            ("bagnet33", "kept patches, random", 0.5, 2.0, 0.74), ("bagnet33", "anytime (stop when confident)", 1.0, 5.0, 0.75),
            ("resnet50", "fewer pixels (dense)", "112", 0.15, 0.82), ("resnet50", "dense", 224, 0.55, 0.83)]
    points = pd.DataFrame(rows, columns=["model", "method", "parameter", "gflops_per_image", "acc"])
    points = points.assign(acc_ci_low=points["acc"] - 0.03, acc_ci_high=points["acc"] + 0.03, n_images=426,
                           pareto=[False, False, False, False, True, True])
    ax = plot_frontier(points).axes[0]
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == sorted(["5%", "50%", "≥1", "112px", "BagNet-33", "ResNet-50"])  # dense stars: the network's name
    handles = dict(zip(*reversed(ax.get_legend_handles_labels())))
    random = handles["BagNet-33: kept patches, random (label: % of patches kept)"]
    pixels = handles["ResNet-50: fewer pixels (dense) (label: test image size)"]
    assert random.get_marker() != pixels.get_marker()  # the marker says the network, the colour the method
    assert random.get_color() != pixels.get_color()
    legend = [t.get_text() for t in ax.figure.legends[0].texts]
    assert "BagNet-33: kept patches, random (label: % of patches kept)" in legend
    boxes = [t.get_window_extent() for t in ax.texts]  # placed so that no two labels overlap
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
