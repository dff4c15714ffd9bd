"""Accuracy, cross-entropy and their intervals."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bagnet_lib.nets.metrics import accuracy, bootstrap_ci, cross_entropy, evaluate_logits, spread, t_interval


def test_accuracy_and_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    assert accuracy(logits, labels) == pytest.approx(2 / 3)
    expected = -(math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(math.e / (1 + math.e))
                 + math.log(1 / (math.exp(3) + 1))) / 3
    assert cross_entropy(logits, labels) == pytest.approx(expected, rel=1e-6)


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small = (rng.random(50) < 0.8).astype(float)
    large = (rng.random(5000) < 0.8).astype(float)
    lo, hi = bootstrap_ci(small)
    assert lo < small.mean() < hi
    lo2, hi2 = bootstrap_ci(large)
    assert (hi2 - lo2) < (hi - lo) / 5
    assert bootstrap_ci(small, seed=1) == bootstrap_ci(small, seed=1)


def test_t_interval_of_few_seeds_uses_the_t_quantile():
    v = [0.80, 0.82, 0.78]
    lo, hi = t_interval(v)
    half = 4.302652729911275 * np.std(v, ddof=1) / math.sqrt(3)  # t(0.975, df=2), not the normal 1.96
    assert (lo, hi) == pytest.approx((np.mean(v) - half, np.mean(v) + half), rel=1e-9)
    assert t_interval([0.5]) == (0.5, 0.5)


def test_bootstrap_of_a_constant_and_the_spread_of_masks():
    assert bootstrap_ci(np.ones(30)) == (1.0, 1.0)
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert spread(np.arange(101)) == pytest.approx((2.5, 97.5))


def test_evaluate_logits_reports_everything():
    logits = torch.eye(3)[[0, 1, 2, 2]] * 5
    labels = torch.tensor([0, 1, 2, 1])
    out = evaluate_logits(logits, labels, ["a", "b", "c"])
    assert out["acc"] == 0.75 and out["n"] == 4
    assert out["confusion"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert out["per_class"]["b"]["recall"] == 0.5
    assert out["acc_ci"][0] <= 0.75 <= out["acc_ci"][1]
