"""Every registered fusion operator: forward and backward with mismatched widths and one member."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from trainables.composite import class_weights, fusion_loss
from trainables.fusion import (
    OPERATORS,
    GatedMultimodalUnit,
    MixtureOfExperts,
    Stacking,
    fit_logistic,
    WeightedLateFusion,
    build_operator,
    normalise_weights,
    stratified_folds,
)

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
@pytest.mark.parametrize("outputs", [CLASSES, 1], ids=["classes", "a value"])
def test_forward_backward(name, widths, outputs):
    torch.manual_seed(0)
    op = build_operator(name, widths, outputs, dropout=0.1, params=default_params(name, len(widths)))
    features = [torch.randn(6, w, requires_grad=True) for w in widths]
    out = op(features)
    assert out.logits.shape == (6, outputs)
    assert torch.isfinite(out.logits).all()
    targets = torch.arange(6) % CLASSES if outputs > 1 else torch.randn(6)
    loss = fusion_loss(out, targets)
    loss.backward()
    for f in features:
        assert f.grad is not None and f.grad.abs().sum() > 0
    for pname, p in op.named_parameters():
        assert (p.grad is not None) == p.requires_grad, pname


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


def test_registry_has_the_whole_family():
    assert set(OPERATORS.names()) >= {"weighted", "concat_mlp", "gmu", "attention", "moe", "stacking"}


def test_gmu_gates_are_per_sample_and_per_unit():
    op = GatedMultimodalUnit([3, 5], CLASSES, hidden=4).eval()
    with torch.no_grad():
        op.gates.weight.zero_()
        op.gates.bias.copy_(torch.tensor([10.0] * 4 + [-10.0] * 4))  # open for member 0, shut for member 1
    a, b = torch.randn(2, 3), torch.randn(2, 5)
    assert torch.allclose(op([a, b]).logits, op([a, torch.randn(2, 5)]).logits, atol=1e-3)


def test_moe_is_a_gated_mixture_with_a_load_balancing_term():
    op = MixtureOfExperts([4, 6], CLASSES, balance=0.5).eval()
    features = [torch.randn(8, 4), torch.randn(8, 6)]
    out = op(features)
    gate = F.softmax(op.gate(torch.cat([n(f) for n, f in zip(op.norms, features, strict=True)], -1)), -1)
    probs = [F.softmax(h(f), -1) for h, f in zip(op.heads, features, strict=True)]
    mixture = gate[:, :1] * probs[0] + gate[:, 1:] * probs[1]
    assert torch.allclose(F.softmax(out.logits, -1), mixture, atol=1e-5)
    assert out.extra_loss is not None and 0.5 * 1.0 - 1e-6 <= float(out.extra_loss.detach()) <= 0.5 * 2.0 + 1e-6


def test_stacking_learns_from_out_of_fold_predictions():
    """Member 0 carries the label; member 1 is wide noise that its head fits perfectly in-sample.

    A meta-learner fitted on in-sample predictions would trust member 1; on out-of-fold
    predictions it learns that member 1 is worthless, so fresh data is still classified well.
    """

    def sample(seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        labels = torch.arange(240) % 3
        informative = F.one_hot(labels, 3).float() * 1.5 + torch.randn(240, 3, generator=generator)
        return [informative, torch.randn(240, 400, generator=generator)], labels

    op = Stacking([3, 400], 3, folds=3, l2=1e-4)
    features, labels = sample(0)
    op.refit(features, labels)
    noise_head = op.heads[1](features[1]).argmax(-1)
    assert (noise_head == labels).float().mean() > 0.95, "the noise member's head fits its training rows"
    fresh, fresh_labels = sample(1)
    with torch.no_grad():
        accuracy = (op(fresh).logits.argmax(-1) == fresh_labels).float().mean()
        alone = (op.heads[0](fresh[0]).argmax(-1) == fresh_labels).float().mean()
        in_sample = torch.cat([F.log_softmax(h(x), -1) for h, x in zip(op.heads, features, strict=True)], -1)
        weight, bias = fit_logistic(in_sample, labels, 3, 1e-4)
        stacked = torch.cat([F.log_softmax(h(x), -1) for h, x in zip(op.heads, fresh, strict=True)], -1)
        naive = ((stacked @ weight.T + bias).argmax(-1) == fresh_labels).float().mean()
    assert accuracy > naive + 0.2, "out-of-fold stacking beats an in-sample meta-learner"
    assert accuracy > alone - 0.08, "and stays close to the informative member alone"
    assert not op.meta.weight.requires_grad


def test_stratified_folds_balance_every_class():
    labels = torch.tensor([0] * 9 + [1] * 6)
    fold = stratified_folds(labels, 3)
    for k in range(3):
        assert (labels[fold == k] == 0).sum() == 3 and (labels[fold == k] == 1).sum() == 2


def test_class_weights_reach_the_logistic_fits_of_stacking():
    """A rare class that overlaps a common one: weighted by ``balanced`` class weights, the logistic
    fit predicts it for more of its own rows than unweighted."""
    torch.manual_seed(0)
    labels = torch.cat([torch.zeros(380, dtype=torch.long), torch.ones(20, dtype=torch.long)])
    x = torch.randn(400, 2) + labels[:, None] * 1.0
    rare = labels == 1
    recall = {}
    for policy in ("none", "balanced"):
        weight, bias = fit_logistic(x, labels, 2, 1e-4, class_weights(policy, labels, 2))
        recall[policy] = float(((x @ weight.T + bias).argmax(dim=1)[rare] == 1).float().mean())
    assert recall["balanced"] > recall["none"]
