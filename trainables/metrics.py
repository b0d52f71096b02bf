"""Classification metrics computed from predicted probabilities (as scikit-learn does)."""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-15


def log_loss(proba: Tensor, labels: Tensor) -> float:
    """Mean negative log-likelihood of the true class, probabilities clipped at 1e-15."""
    picked = proba.gather(1, labels.view(-1, 1)).squeeze(1).double().clamp(EPS, 1.0)
    return float(-torch.log(picked).mean())


def accuracy(proba: Tensor, labels: Tensor) -> float:
    return float((proba.argmax(dim=1) == labels).double().mean())


def classification_metrics(proba: Tensor, labels: Tensor, prefix: str) -> dict[str, float]:
    """``{prefix}_accuracy`` and ``{prefix}_log_loss``."""
    return {f"{prefix}_accuracy": accuracy(proba, labels), f"{prefix}_log_loss": log_loss(proba, labels)}
