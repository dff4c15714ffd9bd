"""Intervals: one method per question, named wherever a number is shown.

Introduced in notebook 02 (a model's accuracy) and used by the write-up (notebook 05):

- `bootstrap_ci`: percentile bootstrap over *test images* (`scipy.stats.bootstrap`) of the mean of
  per-image values: a model's accuracy or loss, and every paired difference (pass the per-image
  differences: masked − full, BagNet − ResNet). With 426 test images an accuracy of 0.88 is only
  known to about ±0.03, whatever the number of masks averaged.
- `t_interval`: Student-t interval of a mean over a few repeated runs (training seeds, pixel-blackout
  seeds): with n = 3 the 95 % quantile is 4.30, not the normal 1.96.
- `spread`: where 95 % of the values lie (2.5th to 97.5th percentile), e.g. of accuracy over random
  masks: a description of the masks, not an interval of a mean.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import stats as _scipy_stats

LEVEL = 0.95
N_RESAMPLES = 2000


def bootstrap_ci(values: Sequence[float] | np.ndarray, level: float = LEVEL, n_resamples: int = N_RESAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-image `values` (resampling images)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return (float("nan"), float("nan"))
    if np.all(v == v[0]):  # every resample has the same mean (scipy would warn about a degenerate sample)
        return (float(v[0]), float(v[0]))
    res = _scipy_stats.bootstrap((v,), np.mean, n_resamples=n_resamples, confidence_level=level,
                                 method="percentile", vectorized=True, random_state=np.random.default_rng(seed))
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def bootstrap_statistic_ci(n: int, statistic, level: float = LEVEL, n_resamples: int = 1000,
                           seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of any `statistic(indices)` of `n` test images (resampling images).

    `statistic` receives an integer index array (a resample of range(n)) and returns a number, e.g. a
    curve fitted to the resampled images' per-image values (see `verdicts.claim_d`).
    """
    res = _scipy_stats.bootstrap((np.arange(n),), lambda idx: statistic(idx.astype(int)), n_resamples=n_resamples,
                                 confidence_level=level, method="percentile", vectorized=False,
                                 random_state=np.random.default_rng(seed))
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def t_interval(values: Sequence[float] | np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Student-t interval of the mean of a few runs; a single run gives (value, value)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return (float("nan"), float("nan"))
    mean = float(v.mean())
    if v.size < 2:
        return (mean, mean)
    half = float(_scipy_stats.t.ppf(0.5 + level / 2, df=v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return (mean - half, mean + half)


def spread(values: Sequence[float] | np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central `level` range of `values` (e.g. accuracy over random masks): percentiles, not a CI."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return (float("nan"), float("nan"))
    alpha = (1 - level) / 2
    return (float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha)))
