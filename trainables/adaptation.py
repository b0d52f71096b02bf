"""Domain adaptation terms: what a trial adds to its loss so that the fused features of source and
target rows look alike.

Each term is registered by name and sees the fused features (``FusionOutput.fused``) of a source
batch and of a target batch (target rows need no label). ``coral`` and ``mmd`` are skada's
(``deepcoral_loss``: Deep CORAL's covariance distance; ``dan_loss``: DAN's multi-kernel MMD with
Gaussian kernels spread around the median distance); ``dann`` trains a small domain classifier on
the fused features through skada's ``GradientReversalLayer``, so the features learn to fool it.
skada's own ``DomainClassifier`` ends in a softmax over one output (always 1), so the classifier
here is written out: one hidden layer and a logit, trained with binary cross-entropy.

An ``Adapter`` holds the term and (``dann``) its classifier: it trains with the model but is not
part of it, so a champion made with adaptation has the shape of one made without.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.registry import Registry

NONE = "none"
DOMAIN_HIDDEN = 64  # the domain classifier's hidden units

Term = Callable[[Tensor, Tensor, "Adapter"], Tensor]
ADAPTATIONS: Registry[Term] = Registry("adaptation")


@ADAPTATIONS.register("coral")
def coral(source: Tensor, target: Tensor, adapter: "Adapter") -> Tensor:
    """Deep CORAL: the squared Frobenius distance of the two covariances, over 4 d²."""
    from skada.deep.losses import deepcoral_loss

    return deepcoral_loss(source, target)


@ADAPTATIONS.register("mmd")
def mmd(source: Tensor, target: Tensor, adapter: "Adapter") -> Tensor:
    """Multi-kernel maximum mean discrepancy (DAN)."""
    from skada.deep.losses import dan_loss

    return dan_loss(source, target)


@ADAPTATIONS.register("dann", facts={"classifier": True})
def dann(source: Tensor, target: Tensor, adapter: "Adapter") -> Tensor:
    """Domain-adversarial: the domain classifier's cross-entropy, its gradient reversed into the features."""
    from skada.deep.modules import GradientReversalLayer

    features = GradientReversalLayer.apply(torch.cat([source, target]), 1.0)
    domains = torch.cat([torch.zeros(len(source)), torch.ones(len(target))]).to(features.device)
    return F.binary_cross_entropy_with_logits(adapter.domain(features).squeeze(-1), domains)


class Adapter(nn.Module):
    """One trial's adaptation: the term ``method`` weighted by ``weight``, and the domain classifier
    ``dann`` trains (for the others it has no parameters)."""

    def __init__(self, method: str, weight: float, width: int) -> None:
        super().__init__()
        self.term = ADAPTATIONS.get(method).factory
        self.weight = weight
        self.domain = (
            nn.Sequential(nn.Linear(width, DOMAIN_HIDDEN), nn.ReLU(), nn.Linear(DOMAIN_HIDDEN, 1))
            if (ADAPTATIONS.get(method).facts or {}).get("classifier")
            else nn.Identity()
        )

    def forward(self, source: Tensor, target: Tensor) -> Tensor:
        """The weighted term for one source batch's fused features and one target batch's."""
        return self.weight * self.term(source.float(), target.float(), self)


def adaptation_names() -> list[str]:
    """What ``hyperparameters.adaptation`` may name."""
    return [NONE, *ADAPTATIONS.names()]
