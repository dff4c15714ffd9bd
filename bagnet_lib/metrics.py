"""The paper's metrics (accuracy, average cross-entropy) plus what it left out: intervals and per-class views.

Introduced in notebook 02. Intervals are percentile bootstraps over test images (95 % by default):
with 426 test images, an accuracy of 0.88 is only known to about ±0.03.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch.nn.functional as F
from torch import Tensor


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Fraction of images whose argmax logit is the label."""
    return float((logits.argmax(dim=-1) == labels).float().mean())


def cross_entropy(logits: Tensor, labels: Tensor) -> float:
    """Average cross-entropy −(1/n) Σ log softmax(logits)[label] (natural log), as in the paper."""
    return float(F.cross_entropy(logits.float(), labels))


def bootstrap_ci(values: np.ndarray | Tensor, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-image `values`."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Normal-approximation interval of the mean of repeated runs (e.g. random-mask seeds)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return (float(v.mean()), float(v.mean())) if v.size else (float("nan"), float("nan"))
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + level / 2)
    half = z * v.std(ddof=1) / np.sqrt(v.size)
    return (float(v.mean() - half), float(v.mean() + half))


def evaluate_logits(logits: Tensor, labels: Tensor, classes: Sequence[str], seed: int = 0) -> dict:
    """Accuracy and cross-entropy with bootstrap intervals, confusion matrix and per-class report."""
    from sklearn.metrics import classification_report, confusion_matrix

    logits, labels = logits.float().cpu(), labels.cpu()
    pred = logits.argmax(dim=1)
    correct = (pred == labels).numpy().astype(np.float64)
    nll = F.cross_entropy(logits, labels, reduction="none").numpy()
    ids = list(range(len(classes)))
    return {
        "n": int(labels.numel()),
        "acc": float(correct.mean()),
        "loss": float(nll.mean()),
        "acc_ci": list(bootstrap_ci(correct, seed=seed)),
        "loss_ci": list(bootstrap_ci(nll, seed=seed)),
        "confusion": confusion_matrix(labels.numpy(), pred.numpy(), labels=ids).tolist(),
        "per_class": classification_report(labels.numpy(), pred.numpy(), labels=ids, target_names=list(classes),
                                           output_dict=True, zero_division=0),
    }
