"""Sweep engine vs a slow reference loop; channel masking vs the paper's code; pixel blackout; logit cache."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from bagnet_lib.blackout.aggregate import AGGREGATIONS, aggregate
from bagnet_lib.blackout.channels import channel_mask, channel_masked_logits, channel_sweep
from bagnet_lib.blackout.masks import MASK_KINDS, make_mask
from bagnet_lib.blackout.pixels import pixel_blackout, pixel_keep_map
from bagnet_lib.blackout.sweep import LogitCache, cache_logits, summarize_sweep, sweep
from bagnet_lib.data.tensors import normalize
from bagnet_lib.nets.models import bagnet33


@pytest.fixture(scope="module")
def cache() -> LogitCache:
    g = torch.Generator().manual_seed(0)
    return LogitCache(torch.randn(40, 5, 6, 7, generator=g) * 2, torch.randint(0, 5, (40,), generator=g),
                      torch.randn(40, 16, generator=g), torch.randn(5, 16, generator=g), torch.randn(5, generator=g))


@pytest.mark.parametrize("per_image", [False, True])
def test_sweep_equals_a_slow_reference_loop(cache, per_image):
    df = sweep(cache, MASK_KINDS, [0.25, 0.5, 0.75], range(3), AGGREGATIONS, per_image=per_image, chunk=7)
    n = len(cache.labels)
    assert set(df["kind"]) == set(MASK_KINDS) and set(df["aggregation"]) == set(AGGREGATIONS)
    # deterministic kinds once per fraction, alternating once, random/block once per seed
    assert len(df) == len(AGGREGATIONS) * (2 + 3 * 3 + 3 * 3 + 3 * 4)
    for r in df.itertuples():
        m = make_mask(r.kind, 6, 7, r.drop_frac, r.seed, patch_logits=cache.patch_logits,
                      per_image=n if per_image else None)
        logits = torch.stack([aggregate(cache.patch_logits[i:i + 1], m if m.dim() == 2 else m[i:i + 1],
                                        r.aggregation)[0] for i in range(n)])  # one image at a time
        assert r.acc == pytest.approx((logits.argmax(1) == cache.labels).float().mean().item(), abs=1e-6)
        assert r.loss == pytest.approx(F.cross_entropy(logits, cache.labels).item(), abs=1e-5)


def test_sweep_summary_counts_seeds(cache):
    df = sweep(cache, ["random", "checkerboard"], [0.5], range(5), ["mean"])
    s = summarize_sweep(df).set_index("kind")
    assert s.loc["random", "n_seeds"] == 5 and s.loc["checkerboard", "n_seeds"] == 1
    lo, hi = s.loc["random", "acc_spread"]  # where 95 % of the masks lie
    assert lo <= s.loc["random", "acc_mean"] <= hi
    accs = df[df["kind"] == "random"]["acc"]
    assert lo >= accs.min() and hi <= accs.max()
    lo_t, hi_t = s.loc["random", "acc_t_ci"]  # Student-t over the 5 masks
    assert lo_t <= s.loc["random", "acc_mean"] <= hi_t


@pytest.mark.parametrize("aggregation", ["mean", "zero", "median"])
def test_per_image_scores_are_the_sweep_image_by_image(cache, aggregation):
    from bagnet_lib.blackout.channels import channel_per_image, channel_sweep
    from bagnet_lib.blackout.sweep import per_image_scores

    fracs, seeds = [0.25, 0.75], range(4)
    correct, nll = per_image_scores(cache, "random", fracs, seeds, aggregation)
    assert correct.shape == nll.shape == (2, 4, len(cache.labels))
    df = sweep(cache, ["random"], fracs, seeds, [aggregation])
    for i, f in enumerate(fracs):
        rows = df[df["drop_frac"] == f].sort_values("seed")
        assert correct[i].float().mean(-1).tolist() == pytest.approx(rows["acc"].tolist(), abs=1e-6)
        assert nll[i].mean(-1).tolist() == pytest.approx(rows["loss"].tolist(), abs=1e-5)
    ch = channel_per_image(cache, "random", 0.5, seeds)
    ref = channel_sweep(cache, [("random", 0.5)], seeds)
    assert ch.float().mean(-1).tolist() == pytest.approx(ref["acc"].tolist(), abs=1e-6)


def test_channel_mask_is_what_the_papers_code_did():
    m = channel_mask(10, "alternating")
    assert m.tolist() == [1, 0] * 5
    r = channel_mask(2048, "random", 0.75, torch.Generator().manual_seed(0))
    assert int((r == 0).sum()) == 1536
    torch.manual_seed(0)
    model = bagnet33(num_classes=5, width=0.125).eval()
    x = torch.randint(0, 256, (3, 3, 48, 48), dtype=torch.uint8)
    cache = cache_logits(model, x, torch.zeros(3, dtype=torch.long), progress=False)
    mask = channel_mask(model.fc.in_features, "random", 0.5, torch.Generator().manual_seed(1))
    paper = copy.deepcopy(model)
    with torch.no_grad():
        paper.fc.weight.mul_(mask[None, :])  # the paper: fc.weight columns times a 0/1 vector
        expected = paper(normalize(x))
    torch.testing.assert_close(channel_masked_logits(cache, mask).float(), expected, rtol=1e-4, atol=1e-4)
    rows = channel_sweep(cache, [("alternating", 0.5), ("random", 0.25)], range(4))
    assert len(rows) == 5 and set(rows["kind"]) == {"channel_alternating", "channel_random"}


def test_cache_holds_patch_logits_whose_mean_is_the_forward_pass():
    torch.manual_seed(0)
    model = bagnet33(num_classes=4, width=0.125).eval()
    x = torch.randint(0, 256, (5, 3, 56, 64), dtype=torch.uint8)
    cache = cache_logits(model, x, torch.arange(5) % 4, batch_size=2, progress=False)
    assert cache.patch_logits.shape == (5, 4, 3, 4) and cache.features.shape == (5, model.fc.in_features)
    with torch.no_grad():
        torch.testing.assert_close(cache.patch_logits.mean(dim=(2, 3)), model(normalize(x)), rtol=1e-4, atol=1e-4)


def test_cache_round_trips_through_disk(cache, tmp_path):
    path = cache.save(tmp_path / "c.pt")
    back = LogitCache.load(path)
    assert torch.equal(back.patch_logits, cache.patch_logits) and back.grid == (6, 7)


def test_pixel_blackout_paints_exactly_the_dropped_tiles():
    img = torch.full((2, 3, 10, 12), 200, dtype=torch.uint8)
    keep = torch.tensor([[True, False, True], [True, True, False]])  # a 2×3 grid over 10×12 pixels
    out = pixel_blackout(img, keep)
    pix = pixel_keep_map(keep, 10, 12)
    assert pix.shape == (10, 12) and int((~pix).sum()) == 2 * 5 * 4
    assert (out[:, :, pix] == 200).all()
    assert out[0, :, 0, 4].tolist() == [124, 116, 104]  # the ImageNet mean colour
    assert out[0, :, 9, 11].tolist() == [124, 116, 104]


def test_summarize_sweep_never_pools_two_models(cache):
    """The study's frames carry a `model` column (pixel blackout runs both networks): one row per model, not a mix."""
    import pandas as pd

    a = sweep(cache, ["random"], [0.5], range(3), ["mean"]).assign(model="bagnet33")
    b = a.assign(model="resnet50", acc=a["acc"] * 0.5)  # a second network, worse at every seed
    s = summarize_sweep(pd.concat([a, b], ignore_index=True))
    assert list(s["model"]) == ["bagnet33", "resnet50"] and list(s["n_seeds"]) == [3, 3]
    assert s["acc_mean"].tolist() == pytest.approx([a["acc"].mean(), a["acc"].mean() * 0.5])
    # one model, or no model column at all: the same numbers as before (what study.blackout_summary relies on)
    alone = summarize_sweep(a)
    plain = summarize_sweep(a.drop(columns="model"))
    assert "model" not in plain.columns
    assert alone.drop(columns="model").to_dict("records") == plain.to_dict("records")


def test_first_correct_is_the_first_image_the_network_gets_right(cache):
    from bagnet_lib.blackout.sweep import first_correct

    right = (cache.patch_logits.mean(dim=(2, 3)).argmax(1) == cache.labels).tolist()
    assert first_correct(cache) == right.index(True) and right[first_correct(cache)]
    wrong = LogitCache(cache.patch_logits, (cache.patch_logits.mean(dim=(2, 3)).argmax(1) + 1) % 5, cache.features,
                       cache.fc_weight, cache.fc_bias)
    assert first_correct(wrong) is None
