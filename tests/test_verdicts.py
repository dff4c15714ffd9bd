"""Every verdict branch just inside and just outside its threshold, on hand-made per-image data; the (d) nulls on
simulated bags, where they must hold."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bagnet_lib.blackout.channels import channel_scores
from bagnet_lib.blackout.nulls import bag_members, channel_members, subsampling_null
from bagnet_lib.blackout.sweep import LogitCache
from bagnet_lib.nets.metrics import correct, nll
from bagnet_lib.writeup import verdicts as V

N = 400


def _correct(acc: float, n: int = N, offset: int = 0) -> np.ndarray:
    """n per-image outcomes with accuracy exactly `acc` (the first round(acc·n) images right, rotated by `offset`)."""
    v = np.zeros(n, bool)
    v[: int(round(acc * n))] = True
    return np.roll(v, offset)


def _keys(v: dict) -> set:
    return set(v)


def test_every_verdict_has_the_same_fields():
    v = V.claim_a(_correct(0.8), _correct(0.8), pretrained=True)
    assert _keys(v) == {"claim", "reading", "verdict", "evidence", "caveat", "numbers"}
    assert v["reading"] == "model"


# ----------------------------------------------------------------------------------- (a)
def test_a_from_scratch_is_not_tested_in_the_papers_setting_whatever_the_numbers():
    v = V.claim_a(_correct(0.8), _correct(0.8), pretrained=False)
    assert v["verdict"] == "not tested in the paper's setting" and "from scratch" in v["evidence"]
    assert v["numbers"]["diff"] == 0 and "pretrained" in v["caveat"]


def test_a_comparable_inside_and_outside_the_margin():
    resnet = _correct(0.80)
    same = V.claim_a(resnet, resnet.copy(), pretrained=True)  # difference 0, interval [0, 0]
    assert same["verdict"] == "supported"
    # BagNet wrong on 30 % more of the images: far outside ±0.05
    worse = V.claim_a(resnet, _correct(0.50), pretrained=True)
    assert worse["verdict"] == "not supported" and worse["numbers"]["ci"][1] < -V.COMPARABLE_MARGIN
    # a difference of −0.05 exactly: its interval straddles −0.05, so neither within nor outside
    edge = V.claim_a(resnet, _correct(0.75), pretrained=True)
    assert edge["verdict"] == "inconclusive" and edge["numbers"]["ci"][0] < -V.COMPARABLE_MARGIN < edge["numbers"]["ci"][1]


# ----------------------------------------------------------------------------------- (b)
@pytest.mark.parametrize("reading", ["patch", "channel"])
def test_b_inside_and_just_outside_the_band_of_random_masks(reading):
    random_half = np.linspace(0.70, 0.74, 41)  # 95 % of the masks in [0.701, 0.739]
    lo, hi = np.quantile(random_half, [0.025, 0.975])
    assert V.claim_b({"alt": lo + 1e-6}, random_half, reading)["verdict"] == "supported"
    assert V.claim_b({"alt": hi - 1e-6}, random_half, reading)["verdict"] == "supported"
    assert V.claim_b({"alt": lo - 1e-6}, random_half, reading)["verdict"] == "not supported"
    assert V.claim_b({"a": 0.72, "b": hi + 1e-6}, random_half, reading)["verdict"] == "not supported"  # every mask
    assert V.claim_b({"alt": 0.72}, random_half, reading)["reading"] == reading


# ----------------------------------------------------------------------------------- (c)
def test_c_supported_when_the_paired_interval_stays_above_minus_one_point():
    full = _correct(0.80)
    masks = np.stack([full.copy() for _ in range(30)])  # identical predictions: difference 0 [0, 0]
    v = V.claim_c(full, masks, "patch")
    assert v["verdict"] == "supported" and v["numbers"]["ci"] == [0.0, 0.0] and v["numbers"]["masks_losing_more"] == 0


def test_c_not_supported_when_the_whole_interval_is_below():
    full = _correct(0.80)
    masks = np.stack([_correct(0.70) for _ in range(30)])  # 10 points worse on every mask
    v = V.claim_c(full, masks, "channel")
    assert v["verdict"] == "not supported" and v["numbers"]["ci"][1] < -V.NO_LOSS_MARGIN
    assert v["numbers"]["masks_losing_more"] == 30 and v["reading"] == "channel"


def test_c_inconclusive_when_the_interval_straddles_the_margin():
    full = _correct(0.80)
    # each mask flips 4 right images to wrong (−0.01 exactly): the mean is at the margin, the interval around it
    masks = np.stack([full & ~np.isin(np.arange(N), np.arange(4 * m, 4 * m + 4)) for m in range(30)])
    v = V.claim_c(full, masks, "patch")
    assert v["numbers"]["diff"] == pytest.approx(-0.01)
    assert v["verdict"] == "inconclusive" and v["numbers"]["ci"][0] < -V.NO_LOSS_MARGIN < v["numbers"]["ci"][1]


def test_c_just_inside_the_margin_with_tight_evidence():
    full = _correct(0.80)
    lost = np.zeros(N, bool)
    lost[:1] = True  # the same image of 400 lost under every mask: −0.0025, interval within [−0.01, 0]
    masks = np.stack([full & ~lost for _ in range(30)])
    v = V.claim_c(full, masks, "patch")
    assert v["verdict"] == "supported" and -V.NO_LOSS_MARGIN <= v["numbers"]["ci"][0] < 0


def test_c_states_its_tolerance_and_gives_the_verdict_over_seeds_beside_this_seeds():
    full, masks = _correct(0.80), np.stack([_correct(0.80, offset=o) for o in range(5)])
    v = V.claim_c(full, masks, "patch", seed_changes={0: 0.0, 1: -0.02, 2: 0.008})
    assert "at most 1 point lost" in v["claim"] and v["verdict"] == "supported"
    assert v["numbers"]["seed_verdict"] == "inconclusive"  # t interval over 3 seeds reaches below −0.01
    assert "over 3 training seeds (seed 0: +0.000, seed 1: -0.020, seed 2: +0.008)" in v["evidence"]
    tight = V.claim_c(full, masks, "patch", seed_changes={0: 0.0, 1: -0.001, 2: 0.001})
    assert tight["numbers"]["seed_verdict"] == "supported"


def test_the_channel_reading_names_its_channel_count_and_how_the_network_was_trained():
    full, masks = _correct(0.80), np.stack([_correct(0.70, offset=o) for o in range(5)])
    v = V.claim_c(full, masks, "channel", channels=512, pretrained=False)
    assert "the 512 feature channels of a network trained from scratch" in v["caveat"]
    assert "the 2,048 channels of an ImageNet-pretrained BagNet-33" in v["caveat"] and "0.8827 against 0.8821" in v["caveat"]


# ----------------------------------------------------------------------------------- (d)
FRACS = np.round(np.arange(0.05, 0.96, 0.05), 2)


def _per_image(curve: np.ndarray, noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return curve[:, None] + rng.normal(0, noise, size=(len(curve), N))


def _bags(n: int = 400, k: int = 5, h: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Simulated BagNet outputs: per image a class-evidence mean plus exchangeable patch noise of its own scale
    (some images' patches agree, others' do not), [N, K, h, h] and labels [N]."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=gen)
    mean = 0.6 * torch.randn(n, k, generator=gen)
    mean[torch.arange(n), labels] += 1.0
    scale = 0.5 + 4 * torch.rand(n, 1, 1, 1, generator=gen)
    return mean[:, :, None, None] + scale * torch.randn(n, k, h, h, generator=gen), labels


def _observed(patch_logits: torch.Tensor, labels: torch.Tensor, fracs, aggregation: str, masks: int = 150):
    """Per-image P(right) and mean cross-entropy over `masks` random masks per fraction, by brute force [F, N]."""
    flat = patch_logits.double().flatten(2)
    p = flat.shape[2]
    gen = torch.Generator().manual_seed(123)
    right, loss = [], []
    for f in fracs:
        kept = p - round(f * p)
        logits = torch.stack([flat[:, :, torch.randperm(p, generator=gen)[:kept]].sum(2) for _ in range(masks)])
        logits = logits / (kept if aggregation == "mean" else p)
        right.append(correct(logits, labels).double().mean(0).numpy())
        loss.append(nll(logits, labels).mean(0).numpy())
    return np.array(right), np.array(loss)


@pytest.mark.parametrize("aggregation", ["mean", "zero"])
def test_the_subsampling_null_holds_on_simulated_bags(aggregation):
    """Random masks over exchangeable patch logits: accuracy and loss at every fraction are what the null says."""
    bags, labels = _bags()
    fracs = [0.25, 0.5, 0.75, 0.9]
    null_right, null_loss = subsampling_null(bag_members(bags), labels, fracs, aggregation=aggregation)
    obs_right, obs_loss = _observed(bags, labels, fracs, aggregation)
    full = correct(bags.double().mean(dim=(2, 3)), labels).double().numpy()
    drop_obs, drop_null = (full - obs_right).mean(1), (full - null_right).mean(1)
    assert drop_obs[-1] > 0.05  # the accuracy really falls: the check is not between two flat lines
    assert np.abs(drop_obs - drop_null).max() < 0.01
    assert np.abs(obs_loss.mean(1) - null_loss.mean(1)).max() < 0.02 * obs_loss.mean(1).max()


def test_the_accuracy_null_is_no_single_power_law_of_f_over_1_minus_f():
    """Why the accuracy null is computed image by image: on simulated bags neither c·x nor a·√x (x = f/(1−f)) fits
    the accuracy drop as well as the null does (the loss, by contrast, follows c·x)."""
    bags, labels = _bags()
    right, loss = subsampling_null(bag_members(bags), labels, FRACS)
    flat = bags.double().mean(dim=(2, 3))
    drop = (correct(flat, labels).double().numpy() - right).mean(1)
    x = FRACS / (1 - FRACS)
    for basis in (x, np.sqrt(x)):
        fitted = (basis @ drop) / (basis @ basis) * basis
        assert 1 - ((drop - fitted) ** 2).sum() / ((drop - drop.mean()) ** 2).sum() < 0.99
    assert V.averaging_null_fit(FRACS, loss.mean(1) - nll(flat, labels).numpy().mean())["r2"] > 0.99


def test_the_channel_null_holds_for_gaussian_channel_contributions():
    """Zeroed fc.weight columns (the paper's code) on features whose contributions are near Gaussian: the channel
    masks' accuracy is what the null of a shrunk random subset says."""
    gen = torch.Generator().manual_seed(1)
    n, k, c = 400, 5, 256
    labels = torch.randint(0, k, (n,), generator=gen)
    weight = torch.randn(k, c, generator=gen) * 0.1
    features = torch.randn(n, c, generator=gen).abs() + 0.5 * weight[labels].clamp(min=0) * 10
    bias = torch.zeros(k)
    cache = LogitCache(torch.zeros(n, k, 1, 1), labels, features, weight, bias)
    fracs = [0.25, 0.5, 0.75]
    obs_right, _ = channel_scores(cache, "random", fracs, range(150))
    null_right, _ = subsampling_null(channel_members(features, weight), labels, fracs, bias=bias, aggregation="zero")
    assert np.abs(obs_right.double().mean((1, 2)).numpy() - null_right.mean(1)).max() < 0.015


def test_d_loss_fit_recovers_the_constant_and_finds_no_curvature_under_the_null():
    x = FRACS / (1 - FRACS)
    fit = V.averaging_null_fit(FRACS, 0.02 * x)
    assert fit["c"] == pytest.approx(0.02) and fit["q"] == pytest.approx(0, abs=1e-12) and fit["r2"] == pytest.approx(1)
    kinked = 0.02 * x + np.where(FRACS > 0.5, 0.3 * (FRACS - 0.5) * 10, 0.0)  # a real kink at 50 %
    q_ci = V._bootstrap_fit(FRACS, _per_image(kinked, noise=0.05))["q_ci"]
    assert not (q_ci[0] <= 0 <= q_ci[1])


def test_d_fully_explained_when_the_curve_is_its_null():
    x = FRACS / (1 - FRACS)
    null = np.repeat((0.02 * x)[:, None], N, axis=1)
    v = V.claim_d(FRACS, _per_image(0.02 * x, noise=0.02), null, "patch", "loss", temperature_share=0.25,
                  loss_fit=V._bootstrap_fit(FRACS, null))
    assert v["verdict"] == "supported, and fully explained by averaging fewer patches" and v["measure"] == "loss"
    assert v["claim"] == V.D_CLAIMS["loss"] and "25% of its loss increase" in v["evidence"]
    assert [r["drop_frac"] for r in v["numbers"]["at"]] == [0.25, 0.5, 0.75]


def test_d_beyond_averaging_when_the_curve_leaves_its_null_by_more_than_the_tolerance():
    x = FRACS / (1 - FRACS)
    null = np.repeat((0.01 * x)[:, None], N, axis=1)
    observed = _per_image(0.01 * x + 2 * V.NULL_TOLERANCE["accuracy"], noise=0.05)
    v = V.claim_d(FRACS, observed, null, "channel", "accuracy")
    assert v["verdict"] == "supported, and beyond averaging fewer channels" and v["claim"] == V.D_CLAIMS["accuracy"]
    wide = V.claim_d(FRACS, _per_image(0.01 * x + 0.01, noise=0.4), null, "patch", "accuracy")
    assert wide["verdict"].startswith("supported; whether averaging fewer patches explains all of it is inconclusive")


def test_d_not_supported_when_nothing_changes():
    flat = _per_image(np.zeros(len(FRACS)), noise=0.05)
    v = V.claim_d(FRACS, flat, flat, "patch", "loss")
    assert v["verdict"].startswith("not supported: the loss does not change measurably")


# ----------------------------------------------------------------------------------- (e)
COSTS = {"bagnet_gflops": 2.0, "resnet_gflops": 0.5, "bagnet_epoch_s": 80.0, "resnet_epoch_s": 18.0}


def _pt(method: str, gflops: float, acc: float) -> dict:
    return {"model": "bagnet33", "method": method, "parameter": 1, "gflops_per_image": gflops, "acc": acc}


def test_e_supported_when_fewer_patches_match_a_dearer_baseline_and_nothing_cheaper_does():
    points = [_pt("dense", 2.0, 0.80), _pt("fewer pixels (dense)", 0.5, 0.60), _pt("kept patches, random", 1.0, 0.80)]
    correct = {0: _correct(0.80), 1: _correct(0.60), 2: _correct(0.80)}
    v = V.claim_e(points, correct, COSTS)
    assert v["reading"] == "compute" and v["verdict"] == "supported" and v["numbers"]["ratio"] == pytest.approx(2.0)
    assert "80 vs 18 s per training epoch" in v["evidence"]


def test_e_not_supported_when_a_cheaper_baseline_is_as_accurate():
    points = [_pt("dense", 2.0, 0.80), _pt("fewer pixels (dense)", 0.5, 0.80), _pt("kept patches, random", 1.0, 0.80)]
    correct = {0: _correct(0.80), 1: _correct(0.80), 2: _correct(0.80)}
    assert V.claim_e(points, correct, COSTS)["verdict"] == "not supported"
    # … and when the cheap configuration loses accuracy against every dearer baseline
    points[1] = _pt("fewer pixels (dense)", 0.5, 0.30)
    correct = {0: _correct(0.80), 1: _correct(0.30), 2: _correct(0.70)}
    assert V.claim_e(points, correct, COSTS)["verdict"] == "not supported"


def test_e_within_the_bagnet_compares_with_its_own_fewer_pixels_only():
    """ResNet-50 on fewer pixels beats the kept patches, the BagNet's own small images do not: the two readings differ."""
    points = [_pt("dense", 2.0, 0.80), _pt("fewer pixels (dense)", 0.5, 0.60), _pt("kept patches, random", 1.0, 0.80),
              {**_pt("fewer pixels (dense)", 0.3, 0.80), "model": "resnet50", "parameter": 112}]
    correct_ = {0: _correct(0.80), 1: _correct(0.60), 2: _correct(0.80), 3: _correct(0.80)}
    within = V.claim_e(points, correct_, COSTS, within=True)
    every = V.claim_e(points, correct_, COSTS)
    assert within["verdict"] == "supported" and within["reading"] == "compute, BagNet-33 only"
    assert every["verdict"] == "not supported" and "ResNet-50 fewer pixels (dense) (112)" in every["evidence"]
    assert "against BagNet-33 itself" in within["claim"] and "ResNet-50 included" in every["claim"]


def test_e_within_names_each_method_against_the_bagnets_own_smaller_images():
    points = [_pt("dense", 2.0, 0.80), {**_pt("fewer pixels (dense)", 1.0, 0.78), "parameter": 168},
              {**_pt("kept patches, strided sub-grid", 1.6, 0.72), "parameter": "every 2"},
              {**_pt("kept patches, random", 1.4, 0.70), "parameter": 0.1}]
    correct_ = {0: _correct(0.80), 1: _correct(0.78), 2: _correct(0.72), 3: _correct(0.70)}
    v = V.claim_e(points, correct_, COSTS, within=True)
    assert v["verdict"] == "not supported"
    assert ("kept patches, strided sub-grid: at best 0.720 at 1.600 GFLOPs (every 2), against BagNet-33 fewer pixels "
            "(dense) (168): 0.780 at 1.000") in v["evidence"]
