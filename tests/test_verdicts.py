"""Every verdict branch just inside and just outside its threshold, on hand-made per-image data; the (d) null fit."""
from __future__ import annotations

import numpy as np
import pytest

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


# ----------------------------------------------------------------------------------- (d)
FRACS = np.round(np.arange(0.05, 0.96, 0.05), 2)


def _per_image(curve: np.ndarray, noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return curve[:, None] + rng.normal(0, noise, size=(len(curve), N))


def test_d_fit_recovers_the_constant_and_finds_no_curvature_under_the_null():
    x = FRACS / (1 - FRACS)
    fit = V.averaging_null_fit(FRACS, 0.02 * x)
    assert fit["c"] == pytest.approx(0.02) and fit["q"] == pytest.approx(0, abs=1e-12) and fit["r2"] == pytest.approx(1)
    per_image = _per_image(0.02 * x, noise=0.05)
    zero = np.repeat((0.04 * x)[:, None], N, axis=1)  # `zero` loses twice as much; the temperature gives a quarter
    v = V.claim_d(FRACS, per_image, zero, 0.01 * x, per_image / 10)
    c, c_ci, q_ci = v["numbers"]["mean_fit"]["c"], v["numbers"]["mean_fit"]["c_ci"], v["numbers"]["mean_fit"]["q_ci"]
    assert c_ci[0] < 0.02 < c_ci[1] and c == pytest.approx(0.02, rel=0.05)
    assert q_ci[0] <= 0 <= q_ci[1]
    assert v["verdict"] == "supported, and fully explained by averaging fewer patches"
    assert v["numbers"]["zero_temperature_share_at_half"] == pytest.approx(0.25, rel=0.05)


def test_d_reports_residual_curvature_for_a_kinked_curve():
    x = FRACS / (1 - FRACS)
    kinked = 0.02 * x + np.where(FRACS > 0.5, 0.3 * (FRACS - 0.5) * 10, 0.0)  # a real kink at 50 %
    v = V.claim_d(FRACS, _per_image(kinked, noise=0.05), _per_image(kinked, 0.05, 1), 0.01 * x,
                  _per_image(0.01 * x, 0.05))
    q_ci = v["numbers"]["mean_fit"]["q_ci"]
    assert not (q_ci[0] <= 0 <= q_ci[1])
    assert v["verdict"].startswith("supported, and beyond averaging fewer patches")


def test_d_not_supported_when_the_loss_does_not_rise():
    flat = _per_image(np.zeros(len(FRACS)), noise=0.05)
    v = V.claim_d(FRACS, flat, flat, np.zeros(len(FRACS)), flat)
    assert v["verdict"].startswith("not supported") and v["numbers"]["mean_fit"]["c_ci"][0] <= 0
    assert "nothing for the (1 − f) temperature" in v["evidence"] or "%" in v["evidence"]


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


def test_d_a_small_significant_curvature_is_almost_fully_explained():
    x = FRACS / (1 - FRACS)
    curve = 0.02 * x - 0.00005 * x**2  # R² of the null alone stays above 0.99, yet q is clearly negative
    v = V.claim_d(FRACS, _per_image(curve, noise=0.001), _per_image(curve, 0.001, 1), 0.01 * x,
                  _per_image(0.01 * x, 0.001))
    fit = v["numbers"]["mean_fit"]
    assert fit["q_ci"][1] < 0 and fit["r2"] >= V.NULL_R2
    assert v["verdict"].startswith("supported, and almost fully explained")
