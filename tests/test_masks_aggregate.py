"""Masks (exact counts, patterns, seeds) and aggregations (definitions, invariants, errors)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bagnet_lib.blackout import masks
from bagnet_lib.blackout.aggregate import AGGREGATIONS, aggregate


def test_checkerboard_and_raster_differ_on_even_width():
    cb = masks.alternating(4, 4, "checkerboard")
    rs = masks.alternating(4, 4, "raster")
    assert cb.tolist()[0] == [True, False, True, False] and cb.tolist()[1] == [False, True, False, True]
    # flattened-index parity on an even-width grid keeps whole columns: stripes, not a checkerboard
    assert rs.tolist() == [[True, False, True, False]] * 4
    assert int(cb.sum()) == int(rs.sum()) == 8
    # on an odd-width grid raster parity *is* a checkerboard
    assert torch.equal(masks.alternating(5, 5, "raster"), masks.alternating(5, 5, "checkerboard"))


@pytest.mark.parametrize("frac,dropped", [(0.0, 0), (0.25, 144), (0.5, 288), (0.75, 432), (1.0, 576)])
def test_random_drops_exactly(frac, dropped):
    m = masks.random(24, 24, frac, torch.Generator().manual_seed(0))
    assert m.shape == (24, 24) and int((~m).sum()) == dropped


def test_random_is_reproducible_by_seed_and_varies_across_seeds():
    a = masks.make_mask("random", 10, 10, 0.5, seed=3)
    assert torch.equal(a, masks.make_mask("random", 10, 10, 0.5, seed=3))
    assert not torch.equal(a, masks.make_mask("random", 10, 10, 0.5, seed=4))
    per_image = masks.make_mask("random", 10, 10, 0.5, seed=3, per_image=6)
    assert per_image.shape == (6, 10, 10) and (per_image.flatten(1).sum(1) == 50).all()
    assert len({tuple(m.flatten().tolist()) for m in per_image}) == 6


def test_center_keeps_the_middle_and_border_the_rim():
    c = masks.center(6, 6, 1 - 4 / 36)
    assert c.nonzero().tolist() == [[2, 2], [2, 3], [3, 2], [3, 3]]
    b = masks.border(6, 6, 0.5)
    assert int(b.sum()) == 18 and bool(b[0, 0]) and not bool(b[2, 2])


def test_block_drops_one_contiguous_square():
    m = masks.block(12, 12, 0.25, torch.Generator().manual_seed(1))
    rows, cols = (~m).nonzero(as_tuple=True)
    side = int(round((0.25 * 144) ** 0.5))
    assert int((~m).sum()) == side * side
    assert rows.max() - rows.min() + 1 == side and cols.max() - cols.min() + 1 == side


def test_topk_keeps_the_most_confident_patches_of_the_predicted_class():
    x = torch.zeros(1, 2, 2, 2)
    x[0, 1] = torch.tensor([[4.0, 1.0], [3.0, 2.0]])  # class 1 is predicted
    assert masks.topk(x, 0.5, "most")[0].tolist() == [[True, False], [True, False]]
    assert masks.topk(x, 0.5, "least")[0].tolist() == [[False, True], [False, True]]


def _logits(n=7, k=5, h=6, w=5, seed=0):
    return torch.randn(n, k, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", ["mean", "zero", "median", "trimmed_mean", "logsumexp", "clipped", "center_weighted", "max"])
def test_aggregations_match_a_numpy_reference(method):
    x = _logits()
    keep = masks.random(6, 5, 0.4, torch.Generator().manual_seed(2))
    out = aggregate(x, keep, method)
    flat = x.numpy().reshape(7, 5, 30)
    kept = flat[:, :, keep.numpy().reshape(30)]
    if method == "mean":
        ref = kept.mean(2)
    elif method == "zero":
        ref = kept.sum(2) / 30
    elif method == "median":
        ref = np.median(kept, axis=2)
    elif method == "trimmed_mean":
        c = kept.shape[2]
        cut = int(np.floor(c * 0.1))
        ref = np.sort(kept, axis=2)[:, :, cut:c - cut].mean(2)
    elif method == "logsumexp":
        ref = np.log(np.exp(kept).sum(2)) - np.log(kept.shape[2])
    elif method == "clipped":
        ref = np.tanh(0.05 * kept - 1).mean(2)
    elif method == "max":
        ref = kept.max(2)
    else:
        i = (np.arange(6) - 2.5) / 6
        j = (np.arange(5) - 2.0) / 5
        wts = np.exp(-(i[:, None] ** 2 + j[None, :] ** 2) / (2 * 0.25**2)).reshape(30)[keep.numpy().reshape(30)]
        ref = (kept * wts).sum(2) / wts.sum()
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5)


def test_mean_with_everything_kept_is_the_unmasked_mean():
    x = _logits()
    torch.testing.assert_close(aggregate(x, None, "mean"), x.mean(dim=(2, 3)))
    torch.testing.assert_close(aggregate(x, torch.ones(6, 5, dtype=torch.bool), "mean"), x.mean(dim=(2, 3)))


def test_zero_and_mean_agree_on_the_prediction_but_not_on_the_loss():
    x = _logits(n=50, seed=3) * 3
    labels = torch.randint(0, 5, (50,), generator=torch.Generator().manual_seed(0))
    keep = masks.random(6, 5, 0.5, torch.Generator().manual_seed(0))
    mean, zero = aggregate(x, keep, "mean"), aggregate(x, keep, "zero")
    assert torch.equal(mean.argmax(1), zero.argmax(1))
    torch.testing.assert_close(zero, mean * 0.5)  # kept/total = 15/30
    assert abs(F.cross_entropy(mean, labels).item() - F.cross_entropy(zero, labels).item()) > 0.05


def test_per_image_masks():
    x = _logits(n=3)
    keep = masks.random(6, 5, 0.5, torch.Generator().manual_seed(0), n=3)
    out = aggregate(x, keep, "mean")
    for i in range(3):
        torch.testing.assert_close(out[i], x[i][:, keep[i]].mean(1))


@pytest.mark.parametrize("method", AGGREGATIONS)
def test_a_mask_that_keeps_nothing_raises(method):
    with pytest.raises(ValueError, match="keeps no patch"):
        aggregate(_logits(), torch.zeros(6, 5, dtype=torch.bool), method)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="drop_frac"):
        masks.random(4, 4, 1.5)
    with pytest.raises(ValueError, match="does not fit"):
        aggregate(_logits(), torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(_logits(), None, "mode")
    with pytest.raises(ValueError, match="unknown mask kind"):
        masks.make_mask("spiral", 4, 4)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), frac=st.floats(0, 1), seed=st.integers(0, 2**31 - 1),
       method=st.sampled_from(AGGREGATIONS))
def test_property_exact_counts_and_finite_aggregates(h, w, frac, seed, method):
    keep = masks.random(h, w, frac, torch.Generator().manual_seed(seed))
    assert int((~keep).sum()) == masks.n_dropped(h, w, frac)
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 20
    if keep.any():
        out = aggregate(x, keep, method)
        assert out.shape == (2, 3) and torch.isfinite(out).all()
    else:
        with pytest.raises(ValueError):
            aggregate(x, keep, method)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 10), w=st.integers(1, 10), n=st.integers(1, 4), seed=st.integers(0, 2**31 - 1),
       kind=st.sampled_from(["random", "center", "border", "block", "topk", "bottomk"]),
       method=st.sampled_from(AGGREGATIONS))
def test_property_all_kept_is_the_plain_aggregate_and_nothing_kept_raises(h, w, n, seed, kind, method):
    x = torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))
    keep_all = masks.make_mask(kind, h, w, 0.0, seed, patch_logits=x)
    assert bool(keep_all.all())  # drop_frac 0 keeps every patch, whatever the kind
    torch.testing.assert_close(aggregate(x, keep_all, method), aggregate(x, None, method))
    if method == "mean":
        torch.testing.assert_close(aggregate(x, keep_all, method), x.mean(dim=(2, 3)))
    keep_none = masks.make_mask(kind, h, w, 1.0, seed, patch_logits=x)
    if kind != "block" or min(h, w) ** 2 == h * w:  # a square block cannot cover a non-square grid
        assert not bool(keep_none.any())
        with pytest.raises(ValueError, match="keeps no patch"):
            aggregate(x, keep_none, method)


def test_the_definitions_table_has_one_row_per_aggregation_with_the_code_defaults_filled_in():
    import inspect

    from bagnet_lib.blackout.aggregate import DEFINITIONS, definitions

    table = definitions()
    assert list(table.index) == list(AGGREGATIONS) and set(DEFINITIONS) == set(AGGREGATIONS)
    assert table.notna().all().all() and (table.map(len) > 10).all().all()
    text = " ".join(table.to_numpy().ravel())
    assert "{" + "trim}" not in text and "{" + "sigma}" not in text and "+ -" not in text  # every placeholder filled
    defaults = {k: v.default for k, v in inspect.signature(aggregate).parameters.items() if v.default is not v.empty
                and k in ("trim", "clip_a", "sigma")}
    assert f"floor({defaults['trim']:g}·|S|)" in table.loc["trimmed_mean"].iloc[0]
    assert f"tanh({defaults['clip_a']:g}·x_p" in table.loc["clipped"].iloc[1]
    assert f"{defaults['sigma']:g}²" in table.loc["center_weighted"].iloc[1]
