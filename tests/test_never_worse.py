"""Never worse than a member alone: the fusion weights a trial learns, on a generated set where
one member reads the signal and the other pure noise."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from benchmarks.generated import signal_and_noise, signal_and_noise_spec
from trainables.composite import CompositeDescription, MemberDescription
from trainables.data import load_dataset
from trainables.sources import SourceOptions
from trainables.training import TrialPlan, fit


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = signal_and_noise(tmp_path_factory.mktemp("generated") / "signal_and_noise.npz")
    return load_dataset("npz", SourceOptions(path=path), 0.2, 0.2, seed=0)


def weighted_plan(data, epochs: int) -> TrialPlan:
    members = [
        MemberDescription("signal", "mlp", "signal", {"hidden": 32, "layers": 1}),
        MemberDescription("noise", "mlp", "noise", {"hidden": 32, "layers": 1}),
    ]
    operator = {"pool": "linear", "weight": [0.5, 0.5]}  # the search's sample: equal weights
    description = CompositeDescription(members, "weighted", operator, data.num_classes, data.class_names, data.inputs)
    return TrialPlan(description, lr=3e-3, weight_decay=0.0, epochs=epochs, batch_size=64, seed=0)


def test_weighted_fusion_drives_a_pure_noise_member_below_a_tenth_within_a_few_epochs(data):
    seen = []
    model = fit(weighted_plan(data, epochs=4), data, on_epoch=lambda epoch, metrics, m, *_: seen.append(m.fusion.weights.detach().clone()))
    first, last = seen[0], seen[-1]
    assert last[1] < 0.1, f"the noise member still weighs {last[1]:.3f} after 4 epochs (after the first: {first[1]:.3f})"
    assert torch.all(torch.diff(torch.stack(seen)[:, 1]) < 0), "its weight falls every epoch"
    assert torch.isclose(model.fusion.weights.sum(), torch.tensor(1.0))


def test_weights_saved_before_they_were_learned_still_load(data):
    model = fit(weighted_plan(data, epochs=1), data)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("fusion.logits")}
    state["fusion.weights"] = torch.tensor([0.8, 0.2])  # the buffer an older version saved
    model.load_state_dict(state, strict=True)
    assert torch.allclose(model.fusion.weights, torch.tensor([0.8, 0.2]), atol=1e-6)


def test_coverage_tries_each_member_alone_then_each_subset_with_the_operators_in_turn():
    from search.run.space import coverage, describe_coverage, structures
    from search.spec.schema import FusionSpec, MemberSpec

    members = [MemberSpec(name=n, kind="mlp", input="flat") for n in ("a", "b", "c")]
    fused = FusionSpec(operators={"weighted": {}, "concat_mlp": {}}, min_members=2)
    first = coverage(members, fused)
    assert [s.words() for s in first] == [
        "a alone", "b alone", "c alone", "a+b via concat_mlp", "a+c via weighted", "b+c via concat_mlp", "a+b+c via weighted",
    ]
    assert len(structures(members, fused)) == 3 + 4 * 2
    line = describe_coverage(first, 11, budget=5)
    assert line.endswith("not tried, for a budget of 5: b+c via concat_mlp, a+b+c via weighted")
    kept_out = FusionSpec(operators={"weighted": {}}, min_members=2, members_alone=False)
    assert all(s.operator is not None for s in coverage(members, kept_out))
    singles = FusionSpec(operators={"weighted": {}, "concat_mlp": {}}, min_members=1)
    first = coverage(members, singles)  # a single member via weighted is that member alone
    assert [s.words() for s in first[:3]] == ["a via concat_mlp", "b alone", "c via concat_mlp"] and len(first) == 7


def parent_of(spec_path):
    from mlflow.tracking import MlflowClient

    from search.spec.schema import load_spec

    spec = load_spec(spec_path)
    client = MlflowClient(spec.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(spec.name).experiment_id], filter_string="tags.`fusion_search.role` = 'search'")
    return client, runs[0]


@pytest.mark.slow
def test_out_of_fold_predictions_come_from_models_that_did_not_train_on_the_row(data):
    """Each training row predicted by a refit on the other folds (real Ray tasks): the member that
    reads noise fits its training rows far better than it predicts them out of fold; the one that
    reads the signal predicts them well either way."""
    from types import SimpleNamespace

    import ray

    from search.candidates.candidate import Pool
    from search.candidates.out_of_fold import out_of_fold
    from search.run.space import ALONE
    from search.spec.objectives import Goal, Objectives
    from search.spec.schema import Resources
    from trainables.metrics import quality_metrics
    from trainables.training import predict_split

    plan = replace(weighted_plan(data, epochs=10), lr=0.01, batch_size=32)
    alone = {name: replace(plan, composite=replace(plan.composite, members=[m], operator_params=dict(ALONE)))
             for name, m in zip(("signal", "noise"), plan.composite.members, strict=True)}
    pool = Pool(Objectives((Goal("val_log_loss", "min"),)), 0, Resources(cpu=1), data, {}, [], [], {}, [], None)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        proba = out_of_fold(pool, [SimpleNamespace(plan=p) for p in alone.values()], folds=3)
    finally:
        ray.shutdown()
    labels = data.splits["train"].labels
    assert proba.shape == (2, len(labels), data.num_classes)
    np.testing.assert_allclose(proba.sum(axis=2), 1.0, atol=1e-4)  # every row predicted once
    oof = {name: quality_metrics(torch.from_numpy(p), labels, "train") for name, p in zip(alone, proba, strict=True)}
    noise_in_sample = quality_metrics(predict_split(fit(alone["noise"], data), alone["noise"], data, "train", None), labels, "train")
    chance = 1.0 / data.num_classes
    assert oof["signal"]["train_accuracy"] > 0.75, "the signal carries to rows a model did not see"
    assert abs(oof["noise"]["train_accuracy"] - chance) < 0.1, "noise does not"
    assert noise_in_sample["train_accuracy"] > oof["noise"]["train_accuracy"] + 0.1, "though a model fits the noise of the rows it trained on"


@pytest.mark.slow
def test_a_member_alone_that_beats_every_fusion_is_a_candidate_the_champion_matches(tmp_path):
    """One member reads the signal, the other noise; fused trials need both (min_members: 2). The
    member alone is a trial and a candidate, and the champion is at least as good on validation,
    with the ensemble's weights fitted on out-of-fold predictions of train (``ensemble.cv``)."""
    import mlflow

    from tests.conftest import run_search_in

    path = signal_and_noise(tmp_path / "data" / "signal_and_noise.npz", rows=500, noise_width=256)
    spec = {**signal_and_noise_spec(path), "ensemble": {"cv": 3}}
    client, parent = parent_of(run_search_in(tmp_path, spec))
    root = parent.info.artifact_uri
    stored = mlflow.artifacts.load_dict(f"{root}/candidates.json")
    alone = next(c for c in stored["candidates"] if c["candidate"] in ("signal alone", "best trial") and "alone" in c["fusion"] and "signal" in c["fusion"])
    champion = next(c for c in stored["candidates"] if c["champion"])
    assert champion["best_val_log_loss"] <= alone["best_val_log_loss"] + 1e-12, "never worse than a member alone on validation"
    concatenated = [c for c in stored["candidates"] if c["kind"] == "trial" and "via concat_mlp" in c["fusion"]]
    assert concatenated and all(c["best_val_log_loss"] > alone["best_val_log_loss"] for c in concatenated), "the data: concatenating noise hurts"
    marks = stored["marks"]
    assert marks["signal alone"] in ("yes", "champion", "= best trial"), "the member alone is a row, and a candidate"
    table = mlflow.artifacts.load_dict(f"{root}/test_table.json")
    assert {"signal alone", "noise alone", "best trial", "champion"} <= set(table)
    coverage = mlflow.artifacts.load_dict(f"{root}/coverage.json")
    assert {"signal alone", "noise alone"} <= set(coverage["tried"])
    assert mlflow.artifacts.load_dict(f"{root}/ensemble.json")["fitted_on"] == "out-of-fold predictions of train, 3 folds"


@pytest.mark.slow
def test_ten_trials_try_every_subset_and_operator_of_three_members(tmp_path):
    import mlflow

    from tests.conftest import TINY_SPEC, run_search_in

    members = [*TINY_SPEC["members"], {"name": "mlp2", "kind": "mlp", "input": "flat", "params": {"hidden": 16, "layers": 1}}]
    spec = {**TINY_SPEC, "name": "cover", "members": members, "budget": {"num_samples": 10, "max_concurrent": 2},
            "hyperparameters": {**TINY_SPEC["hyperparameters"], "epochs": 1},
            "weight_fusion": {"soups": False, "merges": [], "checkpoint_average": 0}, "report": {"baselines": False}}
    client, parent = parent_of(run_search_in(tmp_path, spec))
    trials = client.search_runs([parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(trials) == 10
    subsets = {r.data.params["members"] for r in trials}
    operators = {r.data.params["operator"] for r in trials}
    assert subsets == {"cnn", "mlp", "mlp2", "cnn+mlp", "cnn+mlp2", "mlp+mlp2", "cnn+mlp+mlp2"}
    assert operators == {"weighted", "concat_mlp"}
    coverage = mlflow.artifacts.load_dict(f"{parent.info.artifact_uri}/coverage.json")
    assert len(coverage["structures"]) == 7 * 2 and len(coverage["tried"]) >= 7  # a single member via weighted is that member alone


def test_members_alone_are_tried_again_with_the_best_trials_settings(tmp_path):
    """Two thirds of the way through the budget, each member alone is queued again with the hyperparameters of
    the best finished trial (a real Optuna study behind Ray's searcher, fed results by hand)."""
    import optuna

    from search.run.optuna_search import PruneAwareOptunaSearch
    from search.run.preflight import load_data
    from search.run.space import alone_again, coverage, queued, space_for
    from search.spec.schema import parse_spec
    from tests.conftest import TINY_SPEC

    spec = parse_spec({**TINY_SPEC, "fusion": {**TINY_SPEC["fusion"], "min_members": 2}, "budget": {"num_samples": 8, "max_concurrent": 1}}, tmp_path)
    again = alone_again(spec)
    assert again is not None and again.after == 5, "after the 3 covering trials and one more, or two thirds of 8"
    searcher = PruneAwareOptunaSearch(space=space_for(spec, load_data(spec)), objectives=spec.objectives, search_run="r",
                                      alone_again=again, sampler=optuna.samplers.RandomSampler(seed=0))
    searcher.queue(queued(spec, coverage(spec.members, spec.fusion)))
    plans = []
    for i in range(5):
        plans.append(searcher.suggest(f"t{i}")["plan"])
        loss = 0.5 if i == 3 else 1.0  # the first trial the sampler picked is the best
        searcher.on_trial_complete(f"t{i}", {"training_iteration": 2, searcher.metric: loss, "epoch": 2, "planned_epochs": 2})
    assert [[m["name"] for m in p["composite"]["members"]] for p in plans[:3]] == [["cnn"], ["mlp"], ["cnn", "mlp"]]
    best_lr = plans[3]["lr"]
    assert best_lr != plans[0]["lr"], "the sampled trial left the spec's default learning rate"
    again_plans = [searcher.suggest(f"t{i}")["plan"] for i in (5, 6)]
    assert [[m["name"] for m in p["composite"]["members"]] for p in again_plans] == [["cnn"], ["mlp"]]
    assert all(p["lr"] == best_lr and p["composite"]["operator"] == "weighted" for p in again_plans)


def test_members_alone_are_not_tried_again_when_the_budget_has_no_room(tmp_path):
    from search.run.space import alone_again
    from search.spec.schema import parse_spec
    from tests.conftest import TINY_SPEC

    fused = {**TINY_SPEC["fusion"], "min_members": 2}
    assert alone_again(parse_spec({**TINY_SPEC, "fusion": fused, "budget": {"num_samples": 4}}, tmp_path)) is None, "3 covering trials, 1 left for 2 members"
    assert alone_again(parse_spec({**TINY_SPEC, "budget": {"num_samples": 8}}, tmp_path)) is None, "min_members 1: the sampler searches members alone itself"


def test_early_stopping_spares_a_member_alone():
    """ASHA stops a fused trial behind at its rung; a member alone, as far behind, runs all its epochs
    (real Ray Tune scheduler and trials)."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from search.run.scheduler import build_scheduler
    from search.spec.objectives import Goal
    from search.spec.schema import Scheduler

    def config(members: list[str], operator: str) -> dict:
        return {"plan": {"composite": {"members": [{"name": m} for m in members], "operator": operator}}}

    goal = Goal("val_log_loss", "min")
    scheduler = build_scheduler(Scheduler(type="asha", grace_period=1, reduction_factor=2), goal, max_epochs=4)
    configs = (config(["a", "b"], "concat_mlp"), config(["a", "b"], "weighted"), config(["b"], "weighted"))
    leader, fused, alone = (Trial("t", config=c, stub=True, trial_id=f"t{i}") for i, c in enumerate(configs))
    for trial in (leader, fused, alone):
        scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, leader, {"training_iteration": 1, goal.key: 0.5}) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, fused, {"training_iteration": 1, goal.key: 2.0}) == TrialScheduler.STOP
    assert scheduler.on_trial_result(None, alone, {"training_iteration": 1, goal.key: 2.0}) == TrialScheduler.CONTINUE
    scheduler.on_trial_complete(None, alone, {"training_iteration": 4, goal.key: 0.1})


def test_the_run_says_whether_the_champion_is_at_least_as_good_as_each_member_alone():
    from search.candidates.candidate import Candidate
    from search.candidates.champion import Choice, against_members
    from search.spec.objectives import Goal

    def plan(*members: str) -> TrialPlan:
        described = [MemberDescription(m, "mlp", "flat", {"hidden": 8}) for m in members]
        return TrialPlan(CompositeDescription(described, "weighted", {}, 2, ["a", "b"], {}), 0.01, 0.0, 1, 8, 0)

    def row(label: str, kind: str, value: float, *members: str) -> Candidate:
        return Candidate(label, kind, {"best_val_log_loss": value}, label, (plan(*members),), lambda: None, "t", test=np.zeros((2, 2)))

    rows = [row("best trial", "trial", 0.25, "cnn", "mlp"), row("cnn alone", "trial", 0.30, "cnn"), row("mlp alone", "trial", 0.50, "mlp"), row("ensemble", "ensemble", 0.20, "cnn", "mlp")]
    goal = Goal("val_log_loss", "min")
    line = against_members(Choice(rows, [True] * 4, [True] * 4, 3, {}), goal)
    assert line == "champion against the members alone (validation val_log_loss): 0.2000 against cnn alone 0.3000, mlp alone 0.5000: at least as good as every member alone"
    worse = [row("trial 2", "trial", 0.35, "cnn", "mlp"), *rows[1:3]]
    assert against_members(Choice(worse, [True] * 3, [True] * 3, 0, {}), goal).endswith(": worse than cnn alone")
    assert against_members(Choice(rows[:1], [True], [True], 0, {}), goal) is None, "no member was trained alone"
