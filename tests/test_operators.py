"""Every registered fusion operator: forward and backward with mismatched widths and one member."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from trainables.fusion import OPERATORS, WeightedLateFusion, build_operator, normalise_weights

CLASSES = 7


def default_params(name: str, members: int) -> dict:
    entry = OPERATORS.get(name)
    params = {}
    for key, space in entry.params.items():
        params[key] = space.choices[-1] if hasattr(space, "choices") else space.low
    for key, space in entry.per_member.items():
        params[key] = [space.low + i * 0.1 for i in range(members)]
    return params


@pytest.mark.parametrize("name", OPERATORS.names())
@pytest.mark.parametrize("widths", [[5, 17, 3], [11]], ids=["mismatched-widths", "one-member"])
def test_forward_backward(name, widths):
    torch.manual_seed(0)
    op = build_operator(name, widths, CLASSES, dropout=0.1, params=default_params(name, len(widths)))
    features = [torch.randn(6, w, requires_grad=True) for w in widths]
    out = op(features)
    assert out.logits.shape == (6, CLASSES)
    assert torch.isfinite(out.logits).all()
    loss = F.cross_entropy(out.logits, torch.arange(6) % CLASSES)
    loss.backward()
    for f in features:
        assert f.grad is not None and f.grad.abs().sum() > 0
    for pname, p in op.named_parameters():
        assert p.grad is not None, pname


@pytest.mark.parametrize("name", OPERATORS.names())
def test_dropping_a_member_changes_the_build_not_the_contract(name):
    """The same operator built for 3 members then for 2 (a member dropped) both give (B, C) logits."""
    for widths in ([4, 8, 16], [4, 16]):
        op = build_operator(name, widths, CLASSES, dropout=0.0, params=default_params(name, len(widths))).eval()
        assert op([torch.randn(2, w) for w in widths]).logits.shape == (2, CLASSES)


def test_linear_pool_is_the_weighted_mixture_of_member_probabilities():
    op = WeightedLateFusion([3, 3], CLASSES, weight=[3.0, 1.0], pool="linear").eval()
    features = [torch.randn(4, 3), torch.randn(4, 3)]
    out = op(features)
    p = [F.softmax(head(f), dim=-1) for head, f in zip(op.heads, features, strict=True)]
    assert torch.allclose(F.softmax(out.logits, dim=-1), 0.75 * p[0] + 0.25 * p[1], atol=1e-6)
    assert len(out.member_logits) == 2


def test_weights_are_normalised_and_checked():
    assert normalise_weights([2.0, 6.0]) == [0.25, 0.75]
    assert math.isclose(sum(normalise_weights([0.3, 0.3, 0.9])), 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        normalise_weights([1.0, -1.0])
    with pytest.raises(ValueError, match="all be zero"):
        normalise_weights([0.0, 0.0])
    with pytest.raises(ValueError, match="2 fusion weights for 3 members"):
        WeightedLateFusion([2, 2, 2], CLASSES, weight=[1.0, 1.0])
