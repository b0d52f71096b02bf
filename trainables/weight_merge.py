"""Fusion in weight space: averaging and merging the trained weights of composites that share a start.

Two trials of a search have the *same structure* when their composites have the same members
(kind, input, parameters, training policy), the same pretrained weights, the same seed (so every
weight trained from scratch starts from the same values: the search gives all trials the spec's
seed), the same operator, and trained weights of the same names and shapes (operator widths).
Such trials start from one point and their weights can be combined:

- ``average``: a (weighted) element-wise average: a model soup (Wortsman et al. 2022);
- ``task_vectors``: each trial's weights minus the start (``start_state``): what fine-tuning changed;
- ``linear``, ``ties``, ``dare``: merges of task vectors with coefficients on the simplex:
  plain weighted sum; TIES (Yadav et al. 2023: keep each vector's largest ``density`` fraction
  of entries, elect a sign per entry by the weighted sum, average the entries that agree with it);
  DARE (Yu et al. 2024: drop entries at random with probability ``1 - density``, rescale the rest
  by ``1 / density``, then the weighted sum).

Only the weights training changes are combined (``trained_state``): frozen members are the
pretrained weights in every trial. TIES and DARE apply to parameters; buffers (BatchNorm's running
statistics, a weighted fusion's pooling weights) are statistics, not directions, and take the
weighted average in every merge (DARE's rescaling could make a running variance negative).
Entries that are not floating point (BatchNorm's batch count) are taken from the first state.
"""

from __future__ import annotations

from typing import Callable, Collection, Sequence

import torch
from torch import Tensor

from trainables.composite import trained_state
from trainables.training import TrialPlan, build_model

State = dict[str, Tensor]
MERGES = ("linear", "ties", "dare")


def member_signature(plan: TrialPlan) -> list[tuple[str, str, str, str, str]]:
    """What each member is and how it trains (learning-rate scale and augmentation aside)."""
    return [(m.name, m.kind, m.input, repr(sorted(m.params.items())), m.policy) for m in plan.composite.members]


def structure_difference(a: TrialPlan, state_a: State, b: TrialPlan, state_b: State) -> str | None:
    """Why the composites of ``a`` and ``b`` (with trained weights ``state_a``, ``state_b``) cannot be
    averaged, or None when they have the same structure."""
    if member_signature(a) != member_signature(b):
        described = [", ".join(f"{m[0]} ({m[4]})" for m in member_signature(p)) for p in (a, b)]
        return f"different members: {described[0]} against {described[1]}"
    if a.member_weights != b.member_weights:
        return "different pretrained weights"
    if a.seed != b.seed:
        return f"different starting weights (seed {a.seed} against {b.seed})"
    if a.composite.operator != b.composite.operator:
        return f"different fusion operators: {a.composite.operator} against {b.composite.operator}"
    if state_a.keys() != state_b.keys():
        only = sorted(state_a.keys() ^ state_b.keys())[0]
        return f"different trained weights: {only} is in one only"
    for key, value in state_a.items():
        if value.shape != state_b[key].shape:
            return f"different widths: {key} is {tuple(value.shape)} against {tuple(state_b[key].shape)}"
    return None


def check_same_structure(plans: Sequence[TrialPlan], states: Sequence[State], names: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the first pair of composites that do not share a structure."""
    for plan, state, name in zip(plans[1:], states[1:], names[1:], strict=True):
        reason = structure_difference(plans[0], states[0], plan, state)
        if reason is not None:
            raise ValueError(f"cannot average {names[0]} and {name}: {reason}")


def simplex(weights: Sequence[float]) -> list[float]:
    """Non-negative ``weights`` scaled to sum to one (all zero: equal weights)."""
    clipped = [max(0.0, float(w)) for w in weights]
    total = sum(clipped)
    return [w / total for w in clipped] if total > 0 else [1.0 / len(clipped)] * len(clipped)


def combine(states: Sequence[State], merge: Callable[[list[Tensor]], Tensor]) -> State:
    """``merge`` applied to each floating-point entry across ``states``; other entries from the first."""
    return {
        key: merge([s[key].float() for s in states]).to(value.dtype) if value.is_floating_point() else value.clone()
        for key, value in states[0].items()
    }


def average(states: Sequence[State], weights: Sequence[float] | None = None) -> State:
    """The element-wise average of ``states`` (weighted by ``weights``, normalised to sum to one)."""
    w = simplex(weights if weights is not None else [1.0] * len(states))
    return combine(states, lambda values: sum(wi * v for wi, v in zip(w, values, strict=True)))


def start_state(plan: TrialPlan) -> State:
    """The trained weights of ``plan``'s composite before training: pretrained members and the seed's initial values."""
    return trained_state(build_model(plan))


def task_vectors(start: State, states: Sequence[State]) -> list[State]:
    """Each state minus ``start`` (floating-point entries; others kept as they are)."""
    return [{k: v - start[k] if v.is_floating_point() else v for k, v in s.items()} for s in states]


def add_vector(start: State, vector: State) -> State:
    """``start`` moved by ``vector`` (a merged task vector)."""
    return {k: (v + vector[k]).to(v.dtype) if v.is_floating_point() else vector[k].clone() for k, v in start.items()}


def trim(vector: Tensor, density: float) -> Tensor:
    """``vector`` with all but its ``density`` fraction of largest-magnitude entries set to zero."""
    keep = max(1, int(round(density * vector.numel())))
    if keep >= vector.numel():
        return vector
    threshold = vector.abs().flatten().kthvalue(vector.numel() - keep + 1).values
    return torch.where(vector.abs() >= threshold, vector, torch.zeros_like(vector))


def ties_entry(values: list[Tensor], weights: list[float], density: float) -> Tensor:
    """TIES for one tensor: trim each vector, elect the sign of the weighted sum, and average (with the
    weights) only the trimmed entries that agree with it."""
    trimmed = torch.stack([w * trim(v, density) for v, w in zip(values, weights, strict=True)])
    sign = torch.sign(trimmed.sum(dim=0))
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    mass = torch.tensor(weights, dtype=trimmed.dtype).view(-1, *[1] * (trimmed.ndim - 1)) * agree
    return (trimmed * agree).sum(dim=0) / mass.sum(dim=0).clamp_min(1e-12)


def dare_entry(values: list[Tensor], weights: list[float], density: float, generator: torch.Generator) -> Tensor:
    """DARE for one tensor: keep each entry with probability ``density``, rescale the kept ones by
    ``1 / density``, and sum the vectors with the weights."""
    total = torch.zeros_like(values[0])
    for v, w in zip(values, weights, strict=True):
        keep = torch.rand(v.shape, generator=generator) < density
        total += w * torch.where(keep, v / density, torch.zeros_like(v))
    return total


def merge_vectors(
    method: str, vectors: Sequence[State], weights: Sequence[float], density: float = 1.0, seed: int = 0,
    parameters: Collection[str] | None = None,
) -> State:
    """Task ``vectors`` merged by ``method`` (``MERGES``) with ``weights`` normalised to sum to one;
    entries not named in ``parameters`` (buffers; None: every entry is a parameter) take the weighted average."""
    if method not in MERGES:
        raise ValueError(f"merge method must be one of {', '.join(MERGES)}, got {method!r}")
    if not 0.0 < density <= 1.0:
        raise ValueError(f"merge density must be in (0, 1], got {density}")
    w = simplex(weights)
    averaged = average(vectors, w)
    if method == "linear":
        return averaged
    if method == "ties":
        merged = combine(vectors, lambda values: ties_entry(values, w, density))
    else:
        generator = torch.Generator().manual_seed(seed)
        merged = combine(vectors, lambda values: dare_entry(values, w, density, generator))
    return {k: merged[k] if parameters is None or k in parameters else averaged[k] for k in merged}


def parameter_names(model: torch.nn.Module) -> set[str]:
    """The state keys of ``model`` that are parameters (not buffers)."""
    return {name for name, _ in model.named_parameters()}
