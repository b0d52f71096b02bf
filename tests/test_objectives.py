"""``Objectives``: dominance, the front, the champion rules, constraints; the samplers a spec names;
ensemble selection under a cost budget; how an ensemble's cost is counted."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
import torch

from search.candidates.ensemble import greedy_selection
from search.spec.objectives import Bound, Goal, Objectives
from search.run.optuna_search import ConstraintSlack
from search.names import SLACK_ATTR
from search.spec.samplers import SAMPLERS
from trainables.composite import CompositeDescription, MemberDescription
from trainables.cost import artifact_mb, latency_parts, parameters_m, predictor_cost, timing_key
from trainables.data import InputDescription, Split
from trainables.ensemble_model import WeightedEnsemble
from trainables.training import TrialPlan, build_model

LOSS_AND_LATENCY = (Goal("val_log_loss", "min"), Goal("latency_ms_p95", "min"))


def point(loss: float, latency: float, accuracy: float = 0.9) -> dict[str, float]:
    return {"best_val_log_loss": loss, "latency_ms_p95": latency, "best_val_accuracy": accuracy}


POINTS = [point(0.20, 9.0), point(0.25, 2.0), point(0.30, 1.0), point(0.35, 3.0), point(0.22, 9.5), point(0.60, 0.9)]


def test_front_holds_the_points_nothing_beats_on_both():
    objectives = Objectives(LOSS_AND_LATENCY)
    assert objectives.front(POINTS) == [0, 1, 2, 5]
    assert objectives.dominates((0.25, 2.0), (0.35, 3.0)) and not objectives.dominates((0.25, 2.0), (0.25, 2.0))


def test_select_rules_pick_a_point_of_the_front():
    assert Objectives(LOSS_AND_LATENCY).choose(POINTS) == 0, "first: the best log-loss"
    assert Objectives(LOSS_AND_LATENCY, select="latency_ms_p95").choose(POINTS) == 5
    # Scaled over the front: (0.2, 9.0) -> (0, 0.99); (0.25, 2.0) -> (0.125, 0.136): the knee.
    assert Objectives(LOSS_AND_LATENCY, select="knee").choose(POINTS) == 1


def test_constraints_limit_the_candidates_and_say_what_is_missed():
    objectives = Objectives(LOSS_AND_LATENCY[:1], (Bound("latency_ms_p95", high=2.5), Bound("val_accuracy", low=0.8)))
    assert objectives.choose(POINTS) == 1, "the best log-loss among those within 2.5 ms"
    assert objectives.violations(point(0.1, 3.0, 0.5)) == [
        "latency_ms_p95 3 outside latency_ms_p95 <= 2.5", "val_accuracy 0.5 outside val_accuracy >= 0.8"
    ]
    assert objectives.slacks(point(0.1, 2.0, 0.9)) == pytest.approx([-0.5, -0.1])
    assert objectives.slacks({"best_val_log_loss": 0.1}) == [math.inf, math.inf], "not measured: not met"
    assert Objectives(LOSS_AND_LATENCY[:1], (Bound("latency_ms_p95", high=0.5),)).choose(POINTS) is None


def test_one_objective_keeps_the_earlier_candidate_on_a_tie():
    """The champion rule lists trials before the ensemble: an ensemble only as good stays out."""
    objectives = Objectives(LOSS_AND_LATENCY[:1])
    assert objectives.choose([point(0.3, 1.0), point(0.3, 5.0)]) == 0
    assert objectives.choose([point(0.3, 1.0), point(0.29, 5.0)]) == 1


def test_objectives_round_trip_through_json():
    objectives = Objectives(LOSS_AND_LATENCY, (Bound("params_m", high=50.0),), "knee")
    assert Objectives.from_json(objectives.to_json()) == objectives
    assert objectives.describe() == "val_log_loss (min), latency_ms_p95 (min); subject to params_m <= 50"


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_runs_a_constrained_two_objective_study(name):
    """The samplers as the driver builds them, on a real study: constraints reach them through the
    slack each trial stores."""
    sampler = SAMPLERS[name](0, 24, ConstraintSlack(1))
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    for _ in range(24):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.set_user_attr(SLACK_ATTR, [x - 0.8])  # x <= 0.8
        study.tell(trial, [x, (1 - x) ** 2])
    assert len(study.best_trials) >= 1
    feasible = [t for t in study.trials if t.params["x"] <= 0.8]
    assert feasible and all(t.system_attrs.get("constraints") is not None for t in study.trials) == (name != "random")


def test_greedy_selection_keeps_the_summed_cost_within_the_budget():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    proba = np.full((4, 200, 3), 0.1)
    for k, right in enumerate((0.8, 0.75, 0.7, 0.65)):  # each right on its own rows: mixing helps
        hit = rng.random(200) < right
        proba[k, np.arange(200), np.where(hit, labels, (labels + 1) % 3)] = 0.8
    free = greedy_selection(proba, labels, 20)
    costs = np.array([[3.0], [3.0], [1.0], [1.0]])
    held = greedy_selection(proba, labels, 20, costs=costs, budget=np.array([4.0]))
    assert free.size >= 3, "unbounded, selection mixes more trials"
    taken = held.weights > 0
    assert costs[taken].sum() <= 4.0 and held.size >= 2
    assert greedy_selection(proba, labels, 20, costs=costs, budget=np.array([100.0])).weights.tolist() == free.weights.tolist()


def composite(member_policy: str, seed: int) -> torch.nn.Module:
    description = CompositeDescription(
        members=[
            MemberDescription("cnn", "small_cnn", "image", {"channels": 8}, policy=member_policy),
            MemberDescription("mlp", "mlp", "flat", {"hidden": 16}),
        ],
        operator="weighted",
        operator_params={"weight": [0.5, 0.5], "pool": "linear"},
        num_classes=3,
        class_names=["a", "b", "c"],
        inputs={"image": InputDescription("tensor", [1, 8, 8]), "flat": InputDescription("tensor", [64])},
    )
    return build_model(TrialPlan(description, 0.01, 0.0, 1, 8, seed)).eval()


def test_an_ensemble_counts_a_shared_member_once_in_size_parameters_and_latency():
    """Two trials with the same frozen CNN (same seed, so the same weights; one module, as the driver
    builds them) and their own MLPs: the ensemble stores the CNN once and runs it once, then each
    MLP and each fusion head."""
    first, second = composite("frozen", 0), composite("frozen", 0)
    second.members[0] = first.members[0]
    with torch.no_grad():
        next(second.members[1].parameters()).add_(1.0)  # the second trial trained its MLP
    ensemble = WeightedEnsemble([first, second], [0.5, 0.5], ["a", "b"])
    cnn = sum(p.numel() for p in first.members[0].parameters()) / 1e6
    each = parameters_m(first)
    assert parameters_m(ensemble) == pytest.approx(2 * each - cnn)
    split = Split({"image": torch.rand(4, 1, 8, 8), "flat": torch.rand(4, 64)}, torch.zeros(4, dtype=torch.long))
    cnn, mlp = ({"latency_ms_p50": ms, "latency_ms_p95": 2 * ms, "latency_ms_batch": 4 * ms} for ms in (100.0, 10.0))
    known = {timing_key(m, 8): timed for m, timed in zip(first.description.members, (cnn, mlp), strict=True)}
    counted: set[int] = set()
    assert latency_parts(first, split, 8, known, counted)[1:] == [cnn, mlp], "after its head: each member, from what was timed"
    assert latency_parts(second, split, 8, known, counted)[1:] == [mlp], "the shared CNN counted once, the second MLP again"
    cost = predictor_cost(ensemble, split, 8, known)
    assert cost["latency_ms_p50"] >= 100.0 + 2 * 10.0 and cost["latency_ms_batch"] >= 4 * (100.0 + 2 * 10.0)
    assert artifact_mb(first) < cost["size_mb"] < 2 * artifact_mb(first)


def test_the_front_of_a_search_still_running_comes_from_its_trial_runs(tmp_path):
    """No ``candidates.json`` yet: ``trials --pareto`` computes the front from the trial runs,
    and the leaderboard says which trials meet the constraints."""
    from mlflow.tracking import MlflowClient

    from search.look.leaderboard import leaderboard, pareto_front
    from search.look.store_reader import StoreReader
    from search.names import OBJECTIVES_TAG, PARENT_TAG, ROLE

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("s")
    objectives = Objectives(LOSS_AND_LATENCY, (Bound("latency_ms_p95", high=5.0),))
    parent = client.create_run(experiment, tags={ROLE: "search", OBJECTIVES_TAG: objectives.to_json()}).info.run_id
    for trial, (loss, latency) in {"a": (0.2, 9.0), "b": (0.25, 2.0), "c": (0.3, 1.0), "d": (0.35, 3.0)}.items():
        run = client.create_run(experiment, tags={PARENT_TAG: parent, ROLE: "trial", "fusion_search.trial_id": trial}).info.run_id
        client.log_param(run, "members", "cnn")
        client.log_metric(run, "best_val_log_loss", loss)
        client.log_metric(run, "latency_ms_p95", latency)
    headers, rows, where = pareto_front(StoreReader(uri), "s")
    assert "the search has not finished" in where and headers[:2] == ["candidate", "fusion"]
    assert [r[0] for r in rows] == ["trial b", "trial c"], "a misses the budget; d is beaten by b"
    headers, rows = leaderboard(StoreReader(uri), "s")
    assert headers[-1] == "meets constraints" and [(r[0], r[-1]) for r in rows] == [("a", "no"), ("b", "yes"), ("c", "yes"), ("d", "yes")]


def test_trials_measure_their_cost_when_the_search_weighs_it(spec_dict):
    from pathlib import Path

    from search.spec.schema import parse_spec

    assert not parse_spec(spec_dict, Path(".")).measures_cost, "one objective: the feature cache's trials stay cheap"
    assert parse_spec({**spec_dict, "measure_cost": True}, Path(".")).measures_cost
    assert parse_spec({**spec_dict, "constraints": {"params_m": {"max": 1}}}, Path(".")).measures_cost
    two = [{"metric": "val_accuracy"}, {"metric": "size_mb"}]
    assert parse_spec({**spec_dict, "objective": two}, Path(".")).measures_cost
