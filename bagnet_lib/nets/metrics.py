"""Scores and their intervals: the paper's metrics (accuracy, average cross-entropy) plus what it left out.

Introduced in notebook 02 (a model's accuracy) and used by every later notebook and the write-up (05).
The paper's two scores, per image (`correct`, `nll`) and averaged (`accuracy`, `cross_entropy`), and one
interval method per question, named wherever a number is shown:

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
import torch
from scipy import stats as _scipy_stats
from torch import Tensor

LEVEL = 0.95
N_RESAMPLES = 2000



def correct(logits: Tensor, labels: Tensor) -> Tensor:
    """Per image: is the argmax logit the label? logits [..., N, K], labels [N] → bool [..., N]."""
    return logits.argmax(dim=-1) == labels


def nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Per image: cross-entropy −log softmax(logits)[label] (natural log, computed in float64), [..., N]."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    return -logp.gather(-1, labels.expand(*logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Fraction of images whose argmax logit is the label."""
    return float(correct(logits, labels).float().mean())


def cross_entropy(logits: Tensor, labels: Tensor) -> float:
    """Average cross-entropy −(1/n) Σ log softmax(logits)[label] (natural log), as in the paper."""
    return float(nll(logits, labels).mean())


def evaluate_logits(logits: Tensor, labels: Tensor, classes: Sequence[str], seed: int = 0) -> dict:
    """Accuracy and cross-entropy with bootstrap intervals, confusion matrix and per-class report."""
    from sklearn.metrics import classification_report, confusion_matrix

    logits, labels = logits.float().cpu(), labels.cpu()
    pred = logits.argmax(dim=1)
    right = correct(logits, labels).numpy().astype(np.float64)
    loss = nll(logits, labels).numpy()
    ids = list(range(len(classes)))
    return {
        "n": int(labels.numel()),
        "acc": float(right.mean()),
        "loss": float(loss.mean()),
        "acc_ci": list(bootstrap_ci(right, seed=seed)),
        "loss_ci": list(bootstrap_ci(loss, seed=seed)),
        "confusion": confusion_matrix(labels.numpy(), pred.numpy(), labels=ids).tolist(),
        "per_class": classification_report(labels.numpy(), pred.numpy(), labels=ids, target_names=list(classes),
                                           output_dict=True, zero_division=0),
    }



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
