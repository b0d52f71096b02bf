"""The Optuna samplers a spec can name (``sampler:``), each built from the search's seed, its trial
budget and, when the spec has constraints, Optuna's ``constraints_func``. TPE is the default; every
one of them handles one objective or several."""

from __future__ import annotations

from typing import Callable, Sequence

import optuna
from optuna.trial import FrozenTrial

ConstraintsFunc = Callable[[FrozenTrial], Sequence[float]]
SamplerFactory = Callable[[int, int, ConstraintsFunc | None], optuna.samplers.BaseSampler]


def tpe(seed: int, trials: int, constraints: ConstraintsFunc | None) -> optuna.samplers.BaseSampler:
    """Multivariate TPE (MOTPE with several objectives) after a few random trials."""
    return optuna.samplers.TPESampler(
        seed=seed,
        n_startup_trials=max(2, min(10, trials // 3)),
        multivariate=True,
        group=True,
        constraints_func=constraints,
    )


def nsga2(seed: int, trials: int, constraints: ConstraintsFunc | None) -> optuna.samplers.BaseSampler:
    """NSGA-II with generations of a quarter of the budget (4 to 50 trials), so a search sees several."""
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, trials // 4)), constraints_func=constraints)


def random(seed: int, trials: int, constraints: ConstraintsFunc | None) -> optuna.samplers.BaseSampler:
    """Independent uniform sampling (constraints then only matter when the champion is picked)."""
    return optuna.samplers.RandomSampler(seed=seed)


SAMPLERS: dict[str, SamplerFactory] = {"tpe": tpe, "nsga2": nsga2, "random": random}
DEFAULT_SAMPLER = "tpe"
