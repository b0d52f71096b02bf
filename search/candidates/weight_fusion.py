"""Champions made in weight space after the search: soups, a checkpoint average and merges.

Each costs what one composite costs at inference (it *is* one composite, of a trial's structure):

- **Soups** (Wortsman et al. 2022). The candidate trials are grouped by structure
  (``trainables.weight_merge.structure_difference``); in each group of two or more, the *greedy
  soup* takes the trials best first and keeps a trial's weights in the running average only if
  validation is not worse with them, so it never scores below its first trial; the *uniform soup*
  averages the whole group, for reference. With ``weight_fusion.ingredients: N``, N more runs of the
  best trial's plan at other learning rates (same start) join its group first, as in the paper's recipe.
- **Checkpoint average.** The best trial's weights after each of its last epochs, averaged by the
  same greedy rule (best epoch first), as AutoGluon's multimodal predictor averages its best
  checkpoints by default.
- **Merges.** The best trial's task vectors (weights minus the start: the pretrained weights, or
  the seed's initial ones) merged with those of every candidate that trained some of the same
  weights from the same start (``trainables.weight_merge.shared_start``): a trial of the same
  structure gives all its weights, a trial of another structure that fine-tunes one of the best
  trial's members gives that member's. Each weight is merged by ``linear``, ``ties`` and ``dare``
  over the trials that trained it; the best trial's fusion head stays its own unless same-structure
  trials join. The coefficients (one per trial, normalised to sum to one, as greedy selection's
  weights) and the density are searched by Optuna's CMA-ES on validation, in memory, without
  retraining, starting from equal weights and from the best trial alone, for ``merge_trials``
  evaluations or until ``PATIENCE`` in a row find nothing better. Its evaluations read validation,
  or a stratified sample of ``TUNING_ROWS`` of its rows when it has more (with the whole split a
  merge never scores below the best trial on validation); the merge found is scored on the whole
  split like every candidate, so a merge that the sample flattered is not chosen.

Everything is scored on the search's first objective on validation, in memory; the test split is
read once per result, for the comparison table.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import ray

from search.candidates.candidate import Candidate, Pool, composite_of, register_maker
from search.candidates.refit import start_refits
from search.candidates.trials import Trial
from search.names import WEIGHT_FUSION_FILE
from search.spec.objectives import Goal
from search.spec.schema import WeightFusion
from trainables.checkpoint import TrialCheckpoint
from trainables.composite import CompositeModel, load_trained_state
from trainables.data import Dataset, stratified_folds
from trainables.feature_cache import CachedMember
from trainables.metrics import metric_named
from trainables.training import (
    Runtime,
    SplitFeed,
    TrialPlan,
    build_model,
    cached_rows,
    complete_features,
    frozen_features,
    predict_feed,
)
from trainables.weight_merge import (
    State,
    add_vector,
    average,
    check_same_structure,
    merge_vectors,
    parameter_names,
    shared_start,
    simplex,
    start_state,
    structure_difference,
    task_vector,
)

SOUP = "soup"  # the makers' names
GREEDY_SOUP = "greedy soup"
UNIFORM_SOUP = "uniform soup"
CHECKPOINT_AVERAGE = "checkpoint average"
MERGE = "merge"  # labels: "<method> merge"


@dataclass
class Variant:
    """One composite made after the search: its structure (``plan``), trained weights and predictions."""

    label: str
    kind: str  # the maker's name
    plan: TrialPlan
    state: State
    val: np.ndarray  # validation probabilities
    test: np.ndarray
    base: str  # the trial whose structure it has
    details: dict[str, Any] = field(default_factory=dict)  # how it was made (ingredients, weights, density...)

    @property
    def is_a_trial(self) -> bool:
        """Whether it is in fact one trial's weights (not a candidate of its own): a soup or merge
        that weighs one trial alone, a checkpoint average that kept one epoch."""
        return one_trial({"structure_of": self.base, **self.details})

    def made_of(self) -> str:
        return made_of({"structure_of": self.base, **self.details})

    def model(self) -> CompositeModel:
        """The composite, every member real (frozen ones from their pretrained weights)."""
        return composite_of(self.plan, self.state)


WEIGHED = 0.005  # a coefficient below this is shown, and counted, as 0.00


def one_trial(entry: dict[str, Any]) -> bool:
    """Whether a variant's summary entry describes one trial's weights: one weighed ingredient, or one epoch."""
    if "ingredients" in entry:
        return sum(w >= WEIGHED for w in entry["ingredients"].values()) == 1
    return len(entry.get("epochs", [])) == 1


def made_of(entry: dict[str, Any]) -> str:
    """What a variant was made from, in words, from its entry in the summary (``WeightSpace.summary``)."""
    if "ingredients" in entry:
        weighed = [f"{w:.2f} x trial {t}" for t, w in entry["ingredients"].items() if w >= WEIGHED]
        rest = len(entry["ingredients"]) - len(weighed)
        return ", ".join(weighed) + (f" ({rest} more trial{'s' if rest > 1 else ''} at 0.00)" if rest else "")
    if "epochs" in entry:
        return f"trial {entry['structure_of']} after epochs {', '.join(map(str, entry['epochs']))}"
    if "statistics" in entry:
        return f"trial {entry['structure_of']} with batch-norm statistics of {entry['statistics']}"
    teacher = entry["teacher"]
    return f"trained on the predictions of trial{'s' if len(teacher) > 1 else ''} {', '.join(teacher)}"


TUNING = "tuning"  # the split a merge's coefficient search reads: a sample of validation
TUNING_ROWS = 512  # at most: each evaluation predicts it (members that train run on it again)
PATIENCE = 10  # a merge's search stops after this many evaluations without a better one (more than a CMA-ES generation)


def with_tuning_split(data: Dataset, features: dict[str, CachedMember]) -> tuple[str, Dataset, dict[str, CachedMember]]:
    """The split a merge's search reads, and ``data`` and ``features`` with it: validation itself when
    it has at most ``TUNING_ROWS`` rows, else ``TUNING``, a stratified sample of about that many of
    its rows (one of as many stratified folds as that takes)."""
    val = data.splits["val"]
    if len(val.labels) <= TUNING_ROWS:
        return "val", data, features
    index = np.flatnonzero(stratified_folds(val.labels, -(-len(val.labels) // TUNING_ROWS)).numpy() == 0)
    picks = {TUNING: ("val", index)}
    return TUNING, replace(data, splits={**data.splits, TUNING: val.picked(index)}), {n: replace(f, picks={**f.picks, **picks}) for n, f in features.items()}


class Scorer:
    """Predicts with trained states of one structure on a split, in memory; frozen members' features
    are read from the cache (or computed once per split) and kept."""

    def __init__(self, plan: TrialPlan, data: Dataset, features: dict[str, CachedMember], goal: Goal) -> None:
        self.plan, self.goal = plan, goal
        self.tuning, self.data, features = with_tuning_split(data, features)
        self.cached = frozen_features(plan, features)
        self.runtime = Runtime.for_plan(plan)
        self.model = self.runtime.place(build_model(plan, {name: f.width for name, f in self.cached.items()})).eval()
        self.features: dict[str, Any] = {}

    def feed(self, split: str) -> SplitFeed:
        """``split`` in order as the model reads it; frozen members' features computed once per split."""
        rows = self.data.splits[split]
        if split not in self.features:
            self.features[split] = complete_features(self.model, rows, cached_rows(self.cached, split), self.runtime)
        return SplitFeed(self.model, rows, self.features[split], self.runtime)

    def proba(self, state: State, split: str) -> np.ndarray:
        load_trained_state(self.model, state)
        return predict_feed(self.model, self.feed(split)).numpy()

    def score(self, proba: np.ndarray, split: str = "val") -> float:
        return metric_named(self.goal.metric).score(proba.astype(np.float64), self.data.splits[split].labels.numpy())

    def better_or_equal(self, value: float, than: float) -> bool:
        return not self.goal.direction.better(than, value)

    def variant(self, kind: str, label: str, state: State, base: str, details: dict[str, Any], val: np.ndarray | None = None) -> Variant:
        val = self.proba(state, "val") if val is None else val
        return Variant(label, kind, self.plan, state, val, self.proba(state, "test"), base, {**details, "val_score": self.score(val)})


@dataclass
class Group:
    """Trials of one structure, best first, with their best-epoch weights."""

    trials: list[Trial]
    states: list[State]


def group_by_structure(candidates: list[Trial]) -> tuple[list[Group], dict[str, str]]:
    """Trials (best first) in groups of one structure, and, for each trial outside the best
    trial's group, why it cannot be averaged with the best trial."""
    groups: list[Group] = []
    for candidate in candidates:
        plan, state = candidate.plan, candidate.checkpoint.best_state()
        home = next((g for g in groups if structure_difference(g.trials[0].plan, g.states[0], plan, state) is None), None)
        if home is None:
            groups.append(Group([candidate], [state]))
        else:
            home.trials.append(candidate)
            home.states.append(state)
    head = groups[0]
    apart = {
        c.trial_id: structure_difference(head.trials[0].plan, head.states[0], c.plan, s) or ""
        for g in groups[1:] for c, s in zip(g.trials, g.states, strict=True)
    }
    return groups, apart


def greedy_average(states: list[State], first_val: np.ndarray, scorer: Scorer) -> tuple[list[int], State, np.ndarray]:
    """Wortsman et al.'s greedy rule over ``states`` (best first; ``first_val``: the first one's
    validation probabilities): each joins the running average only if validation is not worse with
    it. Returns the indices kept, their average and its validation probabilities."""
    kept, soup, val = [0], states[0], first_val
    score = scorer.score(val)
    for i in range(1, len(states)):
        trying = average([states[j] for j in [*kept, i]])
        proba = scorer.proba(trying, "val")
        value = scorer.score(proba)
        if scorer.better_or_equal(value, score):
            kept, soup, val, score = [*kept, i], trying, proba, value
    return kept, soup, val


def refuse_mixed(group: Group) -> None:
    """Raise ``ValueError`` with the reason when the group's trials do not share one structure."""
    check_same_structure([c.plan for c in group.trials], group.states, [f"trial {c.trial_id}" for c in group.trials])


def greedy_soup(group: Group, scorer: Scorer) -> Variant:
    """The greedy soup of a group: never below its first (best) trial on validation."""
    refuse_mixed(group)
    kept, soup, val = greedy_average(group.states, group.trials[0].val, scorer)
    trials = [group.trials[i].trial_id for i in kept]
    details = {"ingredients": {t: 1.0 / len(trials) for t in trials}, "tried": [c.trial_id for c in group.trials], "first_score": scorer.score(group.trials[0].val)}
    return scorer.variant(SOUP, GREEDY_SOUP, soup, trials[0], details, val)


def uniform_soup(group: Group, scorer: Scorer) -> Variant:
    refuse_mixed(group)
    trials = [c.trial_id for c in group.trials]
    return scorer.variant(SOUP, UNIFORM_SOUP, average(group.states), trials[0], {"ingredients": {t: 1.0 / len(trials) for t in trials}})


def checkpoint_average(trial: Trial, last: int, scorer: Scorer) -> Variant | None:
    """The trial's weights after its ``last`` epochs, averaged by the greedy rule (best epoch on
    validation first, so never below it); None with fewer than two checkpoints kept."""
    kept = [(c, m) for c, m in trial.history if c.exists()]  # the latest alone once the search has tidied up
    saved = sorted(((m.get("epoch", 0), m, c) for c, m in kept), key=lambda item: item[0])[-last:]
    if len(saved) < 2:
        return None
    saved.sort(key=lambda item: scorer.goal.direction.best_first(item[1].get(scorer.goal.metric)))
    states = [checkpoint.latest_state() for _, _, checkpoint in saved]
    kept_epochs, soup, val = greedy_average(states, scorer.proba(states[0], "val"), scorer)
    epochs = [int(saved[i][0]) for i in kept_epochs]
    return scorer.variant(CHECKPOINT_AVERAGE, CHECKPOINT_AVERAGE, soup, trial.trial_id, {"epochs": epochs, "tried": [int(e) for e, _, _ in saved]}, val)


@dataclass
class Donor:
    """A candidate that trained some of the best trial's weights from the same start (``shared_start``)."""

    trial: Trial
    state: State
    keys: dict[str, str]  # the best trial's key -> this trial's

    def shares(self, base: TrialPlan, everything: int) -> str:
        """What it shares with the best trial, in words."""
        if len(self.keys) == everything:
            return "all its weights"
        names = {m.name for i, m in enumerate(base.composite.members) if any(k.startswith(f"members.{i}.") for k in self.keys)}
        return "member " + ", ".join(sorted(names))


def donors_of(base: Trial, base_state: State, others: list[tuple[Trial, State]]) -> list[Donor]:
    """The candidates that share trained weights with ``base``, in the order given."""
    found = [Donor(c, s, shared_start(base.plan, base_state, c.plan, s)) for c, s in others]
    return [d for d in found if d.keys]


def stop_without_progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Stop ``study`` once ``PATIENCE`` evaluations in a row found nothing better than its best."""
    if trial.number - study.best_trial.number >= PATIENCE:
        study.stop()


def search_merge(method: str, base: Trial, base_state: State, donors: list[Donor], scorer: Scorer, trials: int, seed: int) -> Variant:
    """The best trial's weights merged by ``method`` with what its donors trained from the same
    start (each weight over the trials that trained it), the coefficients (and density) those CMA-ES
    finds best on the scorer's tuning split. Equal weights are tried first, then the best trial alone."""
    start = start_state(scorer.plan)
    vectors = [task_vector(start, base_state), *(task_vector(start, d.state, d.keys) for d in donors)]
    names = [f"w{i}" for i in range(len(vectors))]
    parameters = parameter_names(scorer.model)

    def merged(params: dict[str, float]) -> State:
        coefficients = [params[n] for n in names]
        return add_vector(start, merge_vectors(method, vectors, coefficients, params.get("density", 1.0), seed, parameters))

    def objective(trial: optuna.Trial) -> float:
        params = {n: trial.suggest_float(n, 0.0, 1.0) for n in names}
        if method != "linear":
            params["density"] = trial.suggest_float("density", 0.1, 1.0)
        value = scorer.score(scorer.proba(merged(params), scorer.tuning), scorer.tuning)
        return scorer.goal.direction.worst if math.isnan(value) else value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    study = optuna.create_study(direction=scorer.goal.direction.optuna, sampler=sampler)
    density = {} if method == "linear" else {"density": 0.5}
    study.enqueue_trial({**{n: 1.0 for n in names}, **density})  # equal weights
    study.enqueue_trial({**{n: float(n == names[0]) for n in names}, **({} if method == "linear" else {"density": 1.0})})  # the best trial alone
    study.optimize(objective, n_trials=trials, callbacks=[stop_without_progress])
    params = study.best_params
    weights = simplex([params[n] for n in names])
    trial_ids = [base.trial_id, *(d.trial.trial_id for d in donors)]
    details = {
        "method": method,
        "ingredients": dict(zip(trial_ids, weights, strict=True)),
        "shares": {d.trial.trial_id: d.shares(scorer.plan, len(base_state)) for d in donors},
        "density": params.get("density", 1.0),
        "evaluations": len(study.trials),
    }
    return scorer.variant(MERGE, f"{method} {MERGE}", merged(params), base.trial_id, details)


def ingredient_rates(lr: float, count: int, seed: int) -> list[float]:
    """``count`` learning rates around ``lr``: log-uniform within a factor of two either side, seeded."""
    rng = np.random.default_rng(seed)
    return [float(lr * 2.0 ** u) for u in rng.uniform(-1.0, 1.0, count)]


def train_ingredients(pool: Pool, count: int, folder: Path) -> list[Trial]:
    """``count`` more fine-tunings of the best trial's plan from the same start, each at another
    learning rate around its own (Wortsman et al.'s soups average such runs), as Ray tasks with a
    trial's resources; each a trial whose checkpoint is under ``folder``."""
    base = pool.trials[0]
    plan, goal = base.plan, pool.objectives.first
    rates = ingredient_rates(plan.lr, count, pool.seed)
    print(f"soup ingredients: {len(rates)} more runs of trial {base.trial_id}'s plan at lr {', '.join(f'{r:.2g}' for r in rates)} (lr {plan.lr:.2g})", flush=True)
    plans = [replace(plan, lr=rate) for rate in rates]
    futures = start_refits(pool.resources, goal, plans, pool.data, pool.features, ("val", "test"))
    made = []
    for i, (rate, ingredient, future) in enumerate(zip(rates, plans, futures, strict=True), start=1):
        state, proba = ray.get(future)
        val, test = proba["val"], proba["test"]
        value = metric_named(goal.metric).score(val.astype(np.float64), pool.data.splits["val"].labels.numpy())
        name = f"{base.trial_id}+{i}"
        checkpoint = TrialCheckpoint.write_best(folder / name, state)
        made.append(Trial(name, ingredient, {"trial_id": name, goal.key: value, "lr": rate}, checkpoint, (), val, test))
    return made


def report(variant: Variant, what: str, goal: Goal) -> None:
    print(f"  {what}: {goal.metric} {variant.details['val_score']:.4f}", flush=True)


@dataclass
class WeightSpace:
    """The candidate trials by structure (the best trial's group first, its extra ingredients in it),
    and why trials were left out of the best trial's group."""

    groups: list[Group]
    apart: dict[str, str]  # trial id -> why it differs from the best trial's structure
    extra: list[Trial]  # the extra runs of the best trial's plan
    pool: Pool

    def scorer(self, trial: Trial) -> Scorer:
        return scorer_of(self.pool, trial)

    def candidate(self, variant: Variant) -> Candidate:
        base = next(t for g in self.groups for t in g.trials if t.trial_id == variant.base)
        return variant_candidate(self.pool, variant, base)


def scorer_of(pool: Pool, trial: Trial) -> Scorer:
    """The scorer of a trial's structure: one stand-in model and one pass of uncached frozen members per structure."""
    return pool.once(f"scorer of {trial.trial_id}", lambda: Scorer(trial.plan, pool.data, pool.features, pool.objectives.first))


def variant_candidate(pool: Pool, variant: Variant, base: Trial) -> Candidate:
    """A variant as a candidate: scored, costed as ``base`` (whose structure it has), noted in the
    record's ``weight_fusion.json``; not eligible when it is one trial's weights."""
    cost = pool.costs.of(variant.plan, base.metrics, variant.model)
    made_of = {"structure_of": variant.base, **variant.details}
    pool.facts.setdefault(WEIGHT_FUSION_FILE, {"variants": []})["variants"].append({"label": variant.label, **made_of})
    fusion = f"{variant.label} ({variant.made_of()}; one composite: {base.fusion})"
    return Candidate(
        variant.label, variant.kind, {**pool.val_point(variant.val), **cost}, fusion, (variant.plan,), variant.model,
        variant.base, made_of, variant.test, eligible=not variant.is_a_trial,
    )


def weight_space(pool: Pool, settings: WeightFusion) -> WeightSpace:
    """The shared start of the weight-space makers (made once): the extra ingredients, if the spec
    asks, and the trials grouped by structure, the best trial first (the base of every variant)."""

    def make() -> WeightSpace:
        goal, trials = pool.objectives.first, pool.trials
        with tempfile.TemporaryDirectory() as folder:
            extra = train_ingredients(pool, settings.ingredients, Path(folder)) if settings.ingredients else []
            rest = sorted([*trials[1:], *extra], key=lambda t: goal.direction.best_first(t.metrics.get(goal.key)))
            groups, apart = group_by_structure([trials[0], *rest])
        sizes = [len(g.trials) for g in groups]
        print(f"weight space: {len(trials) + len(extra)} candidates in {len(groups)} structure(s) ({', '.join(map(str, sizes))})", flush=True)
        pool.facts.setdefault(WEIGHT_FUSION_FILE, {"variants": []}).update(
            groups=[[t.trial_id for t in g.trials] for g in groups],
            not_averaged_with_best_trial=apart,
            ingredients_trained=[{"trial": t.trial_id, "lr": t.metrics["lr"], "val_score": t.metrics[goal.key]} for t in extra],
        )
        return WeightSpace(groups, apart, extra, pool)

    return pool.once("weight space", make)


@register_maker(SOUP, section="weight_fusion")
def make_soups(pool: Pool, settings: WeightFusion) -> list[Candidate]:
    """The greedy and uniform soups of the group whose greedy soup scores best (every group of two or more is tried)."""
    if not settings.soups:
        return []
    space, goal = weight_space(pool, settings), pool.objectives.first
    soups = [(greedy_soup(g, space.scorer(g.trials[0])), g) for g in space.groups if len(g.trials) >= 2]
    if not soups:
        return []
    better = max if goal.direction.mode == "max" else min
    soup, group = better(soups, key=lambda s: s[0].details["val_score"])
    report(soup, f"greedy soup of {len(soup.details['ingredients'])} of {len(group.trials)} trials", goal)
    return [space.candidate(soup), space.candidate(uniform_soup(group, space.scorer(group.trials[0])))]


@register_maker(MERGE, section="weight_fusion")
def make_merges(pool: Pool, settings: WeightFusion) -> list[Candidate]:
    """The best trial merged with its donors by each method the spec names."""
    if not settings.merges:
        return []
    space = weight_space(pool, settings)
    base, base_state = space.groups[0].trials[0], space.groups[0].states[0]
    others = [(t, s) for g in space.groups for t, s in zip(g.trials, g.states, strict=True) if t is not base]
    donors = donors_of(base, base_state, others)
    made = []
    for method in settings.merges if donors else []:
        variant = search_merge(method, base, base_state, donors, space.scorer(base), settings.merge_trials, pool.seed)
        evaluations = variant.details["evaluations"]
        report(variant, f"{method} merge of trial {base.trial_id} with {len(donors)} trials that trained its weights ({evaluations} evaluations)", pool.objectives.first)
        made.append(space.candidate(variant))
    return made


@register_maker(CHECKPOINT_AVERAGE, section="weight_fusion")
def make_checkpoint_average(pool: Pool, settings: WeightFusion) -> list[Candidate]:
    """The best trial's checkpoint average over its last epochs."""
    if settings.checkpoint_average < 2:
        return []
    space = weight_space(pool, settings)
    base = pool.trials[0]
    variant = checkpoint_average(base, settings.checkpoint_average, space.scorer(base))
    if variant is None:
        return []
    report(variant, f"checkpoint average of trial {base.trial_id}, epochs {', '.join(map(str, variant.details['epochs']))}", pool.objectives.first)
    return [space.candidate(variant)]
