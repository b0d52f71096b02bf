"""The ``adabn`` maker: the best trial with the batch-norm statistics of its members that trained
re-estimated on the target rows (AdaBN, Li et al. 2016, "Revisiting Batch Normalization For
Practical Domain Adaptation"). No weight changes: each BatchNorm layer's running mean and
variance are replaced by the target rows' (the ``adapt`` split, no label read), so the layers
normalise what the target domain looks like. A candidate like any other: the champion rule
keeps it only when validation says so. Made for data with domains (``data.domains``) whose best
trial has a member that trained with batch norm; nothing otherwise."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from search.candidates.candidate import Candidate, Pool, register_maker
from search.candidates.weight_fusion import Scorer, scorer_of, variant_candidate
from trainables.composite import load_trained_state, trained_state
from trainables.data import ADAPT
from trainables.weight_merge import State

ADABN = "adabn"


def target_statistics(scorer: Scorer, state: State) -> State | None:
    """``state`` with the running statistics of every batch norm in a member that trained measured
    afresh on the ``adapt`` rows (a cumulative average over one pass); None when there is none."""
    model = scorer.model
    load_trained_state(model, state)
    norms = [m for member in model.members if not member.frozen for m in member.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return None
    feed = scorer.feed(ADAPT)
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the batches
        norm.train()
    with torch.no_grad():
        for batch in feed.epoch():
            model(batch)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.eval()
    return trained_state(model)


@register_maker(ADABN)
def make_adabn(pool: Pool, _: Any) -> list[Candidate]:
    """The best trial with its batch-norm statistics taken from the target rows."""
    if ADAPT not in pool.data.splits:
        return []
    base = pool.trials[0]
    scorer = scorer_of(pool, base)
    state = target_statistics(scorer, base.checkpoint.best_state())
    if state is None:
        print(f"adabn: trial {base.trial_id} has no batch norm in a member that trains: nothing to re-estimate", flush=True)
        return []
    variant = scorer.variant(ADABN, ADABN, state, base.trial_id, {"statistics": "the target rows"})
    print(f"adabn of trial {base.trial_id}, batch-norm statistics from {len(pool.data.splits[ADAPT])} target rows: {pool.objectives.first.metric} {variant.details['val_score']:.4f}", flush=True)
    return [variant_candidate(pool, variant, base)]
