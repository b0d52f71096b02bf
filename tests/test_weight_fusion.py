"""Fusion in weight space: soups, TIES / DARE merges and the distillation targets, on real trained composites."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from search.candidates.distill import soft_targets
from search.candidates.trials import Trial
from search.spec.objectives import Goal
from search.spec.schema import parse_spec
from search.run.record import log_predictor
from search.candidates.weight_fusion import Group, Scorer, greedy_soup, one_trial, group_by_structure, uniform_soup
from trainables.composite import CompositeDescription, MemberDescription
from trainables.data import load_dataset
from trainables.sources import SourceOptions
from trainables.checkpoint import TrialCheckpoint
from trainables.training import BestWeights, TrialPlan, fit, predict_split
from trainables.weight_merge import average, merge_vectors, shared_start, start_state, structure_difference, task_vector
from tests.conftest import TINY_SPEC

GOAL = Goal("val_log_loss", "min")


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", SourceOptions(), 0.2, 0.2, seed=0)


def plan(data, lr: float, hidden: int = 32, seed: int = 7, operator: str = "concat_mlp") -> TrialPlan:
    members = [
        MemberDescription("mlp", "mlp", "flat", {"hidden": 32, "layers": 1}),
        MemberDescription("cnn", "small_cnn", "image", {"channels": 8}),
    ]
    params = {"hidden": hidden} if operator == "concat_mlp" else {"pool": "linear", "weight": [0.5, 0.5]}
    description = CompositeDescription(members, operator, params, 10, data.class_names, data.inputs)
    return TrialPlan(description, lr=lr, weight_decay=0.0, epochs=2, batch_size=64, seed=seed)


def trained(data, trial_plan: TrialPlan, trial_id: str, folder: Path) -> Trial:
    """A trial as the search leaves it: its best epoch's weights in a checkpoint, its predictions."""
    best = BestWeights("val_log_loss", "min")
    model = fit(trial_plan, data, on_epoch=lambda epoch, metrics, m, *_: best.update(epoch, metrics, m))
    model.load_state_dict(best.state, strict=False)
    checkpoint = TrialCheckpoint.write_best(folder / trial_id, best.state)
    val, test = (predict_split(model, trial_plan, data, split, None).numpy() for split in ("val", "test"))
    metrics = {"trial_id": trial_id, "best_val_log_loss": best.value}
    return Trial(trial_id, trial_plan, metrics, checkpoint, (), val, test)


@pytest.fixture(scope="module")
def trials(data, tmp_path_factory):
    """Three trials of one structure (learning rates apart, the last far too high) and one of another width."""
    folder = tmp_path_factory.mktemp("trials")
    same = [trained(data, plan(data, lr), f"t{i}", folder) for i, lr in enumerate([3e-3, 6e-3, 0.3])]
    other = trained(data, plan(data, 3e-3, hidden=64), "wide", folder)
    return sorted(same, key=lambda c: c.metrics["best_val_log_loss"]), other


def test_a_soup_of_two_trials_is_their_elementwise_average_and_loads_as_a_pyfunc(data, trials, tmp_path, monkeypatch):
    same, _ = trials
    groups, _ = group_by_structure(same[:2])
    assert len(groups) == 1 and len(groups[0].trials) == 2
    scorer = Scorer(same[0].plan, data, {}, GOAL)
    soup = uniform_soup(groups[0], scorer)
    first, second = groups[0].states
    for key, value in soup.state.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (first[key] + second[key]) / 2)
    model = soup.model()
    test = data.splits["test"]
    spec = parse_spec({**copy.deepcopy(TINY_SPEC), "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", spec.tracking_uri)  # first, so that teardown removes what set_tracking_uri sets
    mlflow.set_tracking_uri(spec.tracking_uri)
    client = MlflowClient(spec.tracking_uri)
    run = client.create_run(client.create_experiment("soups", artifact_location=(tmp_path / "artifacts").as_uri()))
    uri = log_predictor(spec, run.info.run_id, model, test, {}, "soup", register=False).uri
    served = mlflow.pyfunc.load_model(uri).predict({k: v.numpy() for k, v in test.inputs.items()})
    np.testing.assert_allclose(served, model.predict_raw(test.inputs).numpy(), atol=1e-5)
    np.testing.assert_allclose(served, soup.test, atol=1e-5)


def test_a_soup_over_different_structures_is_refused_with_a_reason(data, trials):
    same, wide = trials
    mixed = Group([same[0], wide], [same[0].checkpoint.best_state(), wide.checkpoint.best_state()])
    scorer = Scorer(same[0].plan, data, {}, GOAL)
    for soup in (uniform_soup, greedy_soup):
        with pytest.raises(ValueError, match=r"cannot average trial t\d and trial wide: different widths: fusion\.\S+ is \(32,?.*\) against \(64,?.*\)"):
            soup(mixed, scorer)
    groups, apart = group_by_structure([*same, wide])
    assert [len(g.trials) for g in groups] == [3, 1]
    assert apart["wide"].startswith("different widths")
    state = same[0].checkpoint.best_state()
    assert "different fusion operators" in structure_difference(plan(data, 1e-3), state, plan(data, 1e-3, operator="weighted"), state)
    assert "different starting weights (seed 7 against 8)" == structure_difference(plan(data, 1e-3), state, plan(data, 1e-3, seed=8), state)
    fewer = replace(plan(data, 1e-3), composite=replace(plan(data, 1e-3).composite, members=plan(data, 1e-3).composite.members[:1]))
    assert structure_difference(plan(data, 1e-3), state, fewer, state).startswith("different members: mlp (full), cnn (full) against mlp (full)")


def test_greedy_soup_never_scores_below_its_first_ingredient(data, trials):
    same, _ = trials
    groups, _ = group_by_structure(same)
    scorer = Scorer(same[0].plan, data, {}, GOAL)
    soup = greedy_soup(groups[0], scorer)
    first = scorer.score(same[0].val)
    assert soup.details["first_score"] == pytest.approx(first)
    assert soup.details["val_score"] <= first + 1e-12
    assert soup.details["tried"] == [c.trial_id for c in same]
    assert same[-1].trial_id not in soup.details["ingredients"], "the trial trained at lr 0.3 spoils the soup"
    assert scorer.score(scorer.proba(soup.state, "val")) == pytest.approx(soup.details["val_score"])


def reference_ties(vectors: list[np.ndarray], weights: list[float], density: float) -> np.ndarray:
    """TIES written out entry by entry: trim each vector to its top ``density`` by magnitude, elect the
    sign of the weighted sum, average the agreeing weighted entries over the agreeing weights."""
    w = np.array(weights) / sum(weights)
    trimmed = []
    for v in vectors:
        keep = max(1, int(round(density * v.size)))
        order = np.argsort(-np.abs(v).ravel(), kind="stable")[:keep]
        t = np.zeros(v.size)
        t[order] = v.ravel()[order]
        trimmed.append(t.reshape(v.shape))
    out = np.zeros(vectors[0].shape)
    for index in np.ndindex(out.shape):
        values = [wi * t[index] for wi, t in zip(w, trimmed)]
        sign = np.sign(sum(values))
        agreeing = [(value, wi) for value, wi in zip(values, w) if value != 0 and np.sign(value) == sign]
        out[index] = sum(v for v, _ in agreeing) / sum(wi for _, wi in agreeing) if agreeing else 0.0
    return out


def toy_task_vectors() -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two fine-tunings of one small linear member from one pretrained start: their task vectors."""
    torch.manual_seed(0)
    pretrained = torch.nn.Linear(6, 4)
    start = {k: v.detach().clone() for k, v in pretrained.state_dict().items()}
    tuned = []
    for scale in (0.5, 1.0):
        state = {k: v + scale * torch.randn_like(v) for k, v in start.items()}
        tuned.append({k: state[k] - start[k] for k in start})
    return start, tuned


def test_ties_matches_a_reference_written_out_entry_by_entry():
    _, vectors = toy_task_vectors()
    weights = [0.3, 0.7]
    merged = merge_vectors("ties", vectors, weights, density=0.5)
    for key in vectors[0]:
        expected = reference_ties([v[key].double().numpy() for v in vectors], weights, 0.5)
        np.testing.assert_allclose(merged[key].numpy(), expected, rtol=1e-5, atol=1e-6)
    full = merge_vectors("ties", vectors, [1.0, 1.0], density=1.0)
    agree = torch.sign(vectors[0]["weight"]) == torch.sign(vectors[1]["weight"])
    torch.testing.assert_close(full["weight"][agree], ((vectors[0]["weight"] + vectors[1]["weight"]) / 2)[agree])


def test_dare_matches_a_reference_with_the_same_random_drops():
    _, vectors = toy_task_vectors()
    weights, density, seed = [1.0, 3.0], 0.4, 11
    merged = merge_vectors("dare", vectors, weights, density=density, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    for key in vectors[0]:  # the drops are drawn key by key, vector by vector
        expected = np.zeros(vectors[0][key].shape)
        for v, w in zip(vectors, [0.25, 0.75]):
            keep = (torch.rand(v[key].shape, generator=generator) < density).numpy()
            expected += w * np.where(keep, v[key].numpy() / density, 0.0)
        np.testing.assert_allclose(merged[key].numpy(), expected, rtol=1e-5, atol=1e-6)
    kept = (merged["weight"] != 0).float().mean().item()
    assert 0.3 < kept < 0.8, "about 1 - (1 - density)^2 of the entries survive in one of the two"


def test_a_weight_is_merged_over_the_trials_that_trained_it():
    """A donor of another structure brings only the member it shares: the other weights stay the first's."""
    _, (first, second) = toy_task_vectors()
    partial = {"weight": second["weight"]}
    for method in ("linear", "ties", "dare"):
        merged = merge_vectors(method, [first, partial], [0.4, 0.6], density=0.5, seed=3)
        torch.testing.assert_close(merged["bias"], first["bias"])
    torch.testing.assert_close(merge_vectors("linear", [first, partial], [0.4, 0.6])["weight"], 0.4 * first["weight"] + 0.6 * second["weight"])


def test_members_shared_across_structures_are_found_by_their_start(data, trials):
    same, wide = trials
    base, other = same[0].plan, wide.plan
    base_state, other_state = same[0].checkpoint.best_state(), wide.checkpoint.best_state()
    shared = shared_start(base, base_state, other, other_state)
    assert shared and all(k.startswith("members.") and shared[k] == k for k in shared), "both members, not the wider head"
    assert set(shared) == {k for k in base_state if k.startswith("members.")}
    assert shared_start(base, base_state, same[1].plan, same[1].checkpoint.best_state()) == {k: k for k in base_state}
    reseeded = replace(other, seed=8)
    assert shared_start(base, base_state, reseeded, other_state) == {}, "from-scratch members of another seed start elsewhere"
    start = start_state(base)
    vector = task_vector(start, other_state, shared)
    key = next(iter(shared))
    torch.testing.assert_close(vector[key], other_state[key] - start[key])


def test_merges_average_buffers_and_check_their_arguments():
    _, vectors = toy_task_vectors()
    merged = merge_vectors("dare", vectors, [1.0, 1.0], density=0.5, parameters={"weight"})
    torch.testing.assert_close(merged["bias"], (vectors[0]["bias"] + vectors[1]["bias"]) / 2)
    torch.testing.assert_close(average(vectors, [1.0, 0.0])["weight"], vectors[0]["weight"])
    with pytest.raises(ValueError, match="merge method must be one of linear, ties, dare"):
        merge_vectors("slerp", vectors, [1.0, 1.0])
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        merge_vectors("ties", vectors, [1.0, 1.0], density=0.0)


def test_distillation_targets_mix_the_softened_teacher_with_the_labels():
    teacher = torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1]])
    labels = torch.tensor([0, 2])
    targets = soft_targets(teacher, labels, temperature=1.0, label_weight=0.0)
    torch.testing.assert_close(targets, teacher)
    torch.testing.assert_close(soft_targets(teacher, labels, 3.0, 1.0), torch.eye(3)[labels])
    mixed = soft_targets(teacher, labels, temperature=2.0, label_weight=0.5)
    torch.testing.assert_close(mixed.sum(dim=1), torch.ones(2))
    softened = soft_targets(teacher, labels, 2.0, 0.0)
    assert softened[0, 0] < teacher[0, 0] and softened[0, 1] > teacher[0, 1], "a temperature above 1 softens"
    torch.testing.assert_close(mixed, 0.5 * torch.eye(3)[labels] + 0.5 * softened)


def test_a_variant_that_weighs_one_trial_is_that_trial():
    assert one_trial({"ingredients": {"a": 0.999, "b": 0.001}})
    assert not one_trial({"ingredients": {"a": 0.6, "b": 0.4}})
    assert one_trial({"structure_of": "a", "epochs": [3]}) and not one_trial({"structure_of": "a", "epochs": [11, 12]})
    assert not one_trial({"teacher": ["a"]}), "a student is trained anew"


def test_a_merge_is_tuned_on_a_stratified_sample_of_validation_rows(data, trials, monkeypatch):
    """With more validation rows than ``TUNING_ROWS`` the merge's coefficient search reads a
    stratified sample of them (each class in its share, give or take a row), predicted exactly as
    those rows are within the whole split; with fewer, the whole split itself."""
    from search.candidates import weight_fusion

    same, _ = trials
    scorer = Scorer(same[0].plan, data, {}, GOAL)
    val = data.splits["val"].labels
    assert scorer.tuning == "val" and weight_fusion.TUNING not in scorer.data.splits, "360 rows: all of them"
    monkeypatch.setattr(weight_fusion, "TUNING_ROWS", 100)
    sampled = Scorer(same[0].plan, data, {}, GOAL)
    assert sampled.tuning == weight_fusion.TUNING
    labels = sampled.data.splits[weight_fusion.TUNING].labels
    assert 80 <= len(labels) <= 100
    for value in val.unique():
        assert abs(int((labels == value).sum()) - int((val == value).sum()) / 4) <= 1, int(value)
    state = same[0].checkpoint.best_state()
    whole, sample = sampled.proba(state, "val"), sampled.proba(state, weight_fusion.TUNING)
    assert np.allclose(sample, whole[np.flatnonzero(weight_fusion.stratified_folds(val, 4).numpy() == 0)], atol=1e-6)


def test_a_merge_search_stops_after_ten_evaluations_without_progress():
    import optuna

    from search.candidates.weight_fusion import PATIENCE, stop_without_progress

    flat = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    flat.optimize(lambda t: 1.0 + 0 * t.suggest_float("w", 0, 1), n_trials=20, callbacks=[stop_without_progress])
    assert len(flat.trials) == PATIENCE + 1 == 11, "the first is the best; ten more find nothing better"
    falling = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    falling.optimize(lambda t: -t.number + 0 * t.suggest_float("w", 0, 1), n_trials=20, callbacks=[stop_without_progress])
    assert len(falling.trials) == 20, "each evaluation better than the last: the whole budget"
