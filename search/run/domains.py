"""What a search on data with domains records besides its test table: the fused features of source
and target rows projected to 2-D (the first two principal components of both domains together) for
the best trial without adaptation and the best trial, the picture of what adaptation did to them
(``search.look.plots`` draws it from the record), with the gap between the domains' means in the
fused space, in units of the rows' spread around them."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from search.candidates.candidate import Candidate
from search.candidates.champion import Choice
from search.candidates.trials import BEST_TRIAL, UNADAPTED
from trainables.data import ADAPT, Dataset
from trainables.feature_cache import CachedMember
from trainables.training import fused_split

PROJECTED_ROWS = 300  # of each domain, per model, at most
PANELS = (UNADAPTED, BEST_TRIAL)  # before and after adaptation, when the best trial adapted


def domain_gap(source: torch.Tensor, target: torch.Tensor) -> float:
    """The distance between the domains' mean features over the rows' root-mean-square distance to their own domain's mean."""
    spread = torch.cat([source - source.mean(0), target - target.mean(0)]).pow(2).sum(1).mean().sqrt()
    return float((source.mean(0) - target.mean(0)).norm() / spread.clamp_min(1e-12))


def projection(candidate: Candidate, data: Dataset, features: dict[str, CachedMember], seed: int) -> dict[str, Any]:
    """``candidate``'s fused features of source test rows and of target rows (test and unlabelled), projected."""
    assert data.domains is not None
    model, plan = candidate.build(), candidate.plans[0]
    test = fused_split(model, plan, data, "test", features)
    mask = torch.from_numpy(data.domains.test_target)
    parts = [test[mask]] + ([fused_split(model, plan, data, ADAPT, features)] if ADAPT in data.splits else [])
    source, target = test[~mask], torch.cat(parts)
    rng = np.random.default_rng(seed)
    source, target = (rows[torch.from_numpy(np.sort(rng.permutation(len(rows))[:PROJECTED_ROWS]))] for rows in (source, target))
    both = torch.cat([source, target]).double()
    centred = both - both.mean(0)
    axes = torch.linalg.svd(centred, full_matrices=False).Vh[:2]
    points = (centred @ axes.T).tolist()
    return {
        "label": candidate.label, "adaptation": plan.adaptation, "fusion": candidate.fusion,
        "gap": domain_gap(source.double(), target.double()), "source": points[: len(source)], "target": points[len(source):],
    }


def domain_projections(choice: Choice, data: Dataset, features: dict[str, CachedMember], seed: int) -> list[dict[str, Any]]:
    """The projections of the best trial without adaptation and of the best trial (the best trial
    alone when it did not adapt)."""
    rows = {c.label: c for c in choice.rows if c.label in PANELS}
    return [projection(rows[label], data, features, seed) for label in PANELS if label in rows]
