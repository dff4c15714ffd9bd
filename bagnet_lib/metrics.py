"""The paper's metrics (accuracy, average cross-entropy) plus what it left out: intervals and per-class views.

Introduced in notebook 02. Intervals come from `stats` (a percentile bootstrap over test images: with
426 test images, an accuracy of 0.88 is only known to about ±0.03).
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


def evaluate_logits(logits: Tensor, labels: Tensor, classes: Sequence[str], seed: int = 0) -> dict:
    """Accuracy and cross-entropy with bootstrap intervals, confusion matrix and per-class report."""
    from sklearn.metrics import classification_report, confusion_matrix

    from .stats import bootstrap_ci

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
