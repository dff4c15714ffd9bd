"""The paper's metrics (accuracy, average cross-entropy) plus what it left out: intervals and per-class views.

Introduced in notebook 02. Intervals come from `stats` (a percentile bootstrap over test images: with
426 test images, an accuracy of 0.88 is only known to about ±0.03).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor


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

    from .stats import bootstrap_ci

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
