"""Fusion in weight space: averaging and merging the trained weights of composites that share a start.

Two trials of a search have the *same structure* when their composites have the same members
(kind, input, parameters, training policy), the same pretrained weights, the same seed (so every
weight trained from scratch starts from the same values: the search gives all trials the spec's
seed), the same operator, and trained weights of the same names and shapes (operator widths).
Such trials start from one point and their weights can be combined:

- ``average``: a (weighted) element-wise average: a model soup (Wortsman et al. 2022);
- ``task_vector``: a trial's weights minus the start (``start_state``): what fine-tuning changed;
- ``shared_start``: the weights two composites of different structures trained from one start (a
  member both fine-tune), which can be merged though their fusion operators cannot;
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

from typing import Collection, Mapping, Sequence

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


def average(states: Sequence[State], weights: Sequence[float] | None = None) -> State:
    """The element-wise average of ``states`` (weighted by ``weights``, normalised to sum to one);
    entries that are not floating point are the first state's."""
    w = simplex(weights if weights is not None else [1.0] * len(states))
    return {
        key: sum(wi * s[key].float() for wi, s in zip(w, states, strict=True)).to(value.dtype) if value.is_floating_point() else value.clone()
        for key, value in states[0].items()
    }


def start_state(plan: TrialPlan) -> State:
    """The trained weights of ``plan``'s composite before training: pretrained members and the seed's initial values."""
    return trained_state(build_model(plan))


def task_vector(start: State, state: State, keys: Mapping[str, str] | None = None) -> State:
    """``state`` minus ``start``, over ``keys`` (start's key -> state's key; None: every key of
    ``start``, named alike); entries that are not floating point as they are."""
    keys = keys if keys is not None else {key: key for key in start}
    return {k: state[theirs] - start[k] if start[k].is_floating_point() else state[theirs] for k, theirs in keys.items()}


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
    """Task ``vectors`` merged by ``method`` (``MERGES``), weighted by ``weights``.

    The first vector has every key; another may have some of them (the weights it trained from the
    same start: a member two composites share). Each key is merged over the vectors that have it,
    their weights normalised to sum to one; a key only the first has stays as it is. Keys not named
    in ``parameters`` (buffers; None: all are parameters) take the weighted average."""
    if method not in MERGES:
        raise ValueError(f"merge method must be one of {', '.join(MERGES)}, got {method!r}")
    if not 0.0 < density <= 1.0:
        raise ValueError(f"merge density must be in (0, 1], got {density}")
    generator = torch.Generator().manual_seed(seed)
    merged = {}
    for key, value in vectors[0].items():
        having = [(v[key].float(), w) for v, w in zip(vectors, weights, strict=True) if key in v]
        if len(having) == 1 or not value.is_floating_point():
            merged[key] = value.clone()
            continue
        values, w = [v for v, _ in having], simplex([w for _, w in having])
        how = method if parameters is None or key in parameters else "linear"
        if how == "linear":
            out = sum(wi * v for wi, v in zip(w, values, strict=True))
        elif how == "ties":
            out = ties_entry(values, w, density)
        else:
            out = dare_entry(values, w, density, generator)
        merged[key] = out.to(value.dtype)
    return merged


def shared_start(base: TrialPlan, base_state: State, other: TrialPlan, other_state: State) -> dict[str, str]:
    """Which of ``base``'s trained weights ``other`` trained from the same start, as base key ->
    other's key: all of them when the composites have the same structure; else the weights of each
    member both train (same kind, input, parameters, pretrained weights and seed), the fusion operator's not."""
    if structure_difference(base, base_state, other, other_state) is None:
        return {key: key for key in base_state}
    if base.seed != other.seed:
        return {}
    theirs = {m.name: (j, m) for j, m in enumerate(other.composite.members)}
    shared = {}
    for i, member in enumerate(base.composite.members):
        j, match = theirs.get(member.name, (None, None))
        if match is None or (match.kind, match.input, match.params) != (member.kind, member.input, member.params):
            continue
        if base.member_weights.get(member.name) != other.member_weights.get(member.name):
            continue
        prefix, their_prefix = f"members.{i}.", f"members.{j}."
        for key, value in base_state.items():
            mine = their_prefix + key.removeprefix(prefix)
            if key.startswith(prefix) and mine in other_state and other_state[mine].shape == value.shape:
                shared[key] = mine
    return shared


def parameter_names(model: torch.nn.Module) -> set[str]:
    """The state keys of ``model`` that are parameters (not buffers)."""
    return {name for name, _ in model.named_parameters()}
