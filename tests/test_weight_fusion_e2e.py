"""A search whose trials share one structure: its soups, merges, checkpoint average and student are
made, costed and compared on the parent run, the champion rule weighs them all, and the student is
registered under its own alias as one composite that loads as a pyfunc."""

from __future__ import annotations

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from search.run.preflight import load_data
from search.spec.schema import load_spec
from search.candidates.weight_fusion import one_trial
from tests.conftest import TINY_SPEC, run_search_in
from trainables.metrics import quality_metrics

pytestmark = pytest.mark.slow

SOUPS_SPEC = {
    **TINY_SPEC,
    "name": "soups",
    # Every trial the same structure (both members, one operator of one width, no member alone):
    # only the learning rate differs, so every trial can go into a soup.
    "fusion": {"min_members": 2, "operators": {"concat_mlp": {"hidden": 32}}, "members_alone": False},
    "hyperparameters": {"lr": {"low": 0.002, "high": 0.02, "log": True}, "epochs": 3, "batch_size": 64},
    "scheduler": {"type": "fifo"},
    "weight_fusion": {"merge_trials": 6, "ingredients": 1},
    "distill": {"temperature": 2.0, "label_weight": 0.5},
    "report": {"baselines": False},
}
MADE = ["greedy soup", "uniform soup", "linear merge", "ties merge", "dare merge", "checkpoint average", "student"]


@pytest.fixture(scope="module")
def soups(tmp_path_factory):
    spec = load_spec(run_search_in(tmp_path_factory.mktemp("soups"), SOUPS_SPEC))
    client = MlflowClient(spec.tracking_uri)
    experiment = client.get_experiment_by_name(spec.experiment_name)
    parent = next(r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" not in r.data.tags)
    mlflow.set_tracking_uri(spec.tracking_uri)
    table = mlflow.artifacts.load_dict(f"{parent.info.artifact_uri}/test_table.json")
    made = mlflow.artifacts.load_dict(f"{parent.info.artifact_uri}/weight_fusion.json")
    return spec, client, parent, table, made


def test_every_kind_of_champion_is_on_the_parent_table_with_its_cost(soups):
    _, _, parent, table, _ = soups
    assert set(MADE) <= set(table) and {"best trial", "champion"} <= set(table)
    for label in ["best trial", *MADE]:
        assert set(table[label]) >= {"test_accuracy", "test_log_loss", "latency_ms_p95", "params_m", "size_mb"}, label
        key = label.replace(" ", "_")
        assert parent.data.metrics[f"{key}.test_accuracy"] == pytest.approx(table[label]["test_accuracy"])
        assert parent.data.metrics[f"{key}.latency_ms_p95"] > 0
    for label in ["greedy soup", "uniform soup", "linear merge", "checkpoint average", "student"]:
        assert table[label]["params_m"] == table["best trial"]["params_m"], f"the {label} is one composite of the trials' structure"


def test_soups_and_merges_are_made_from_the_trials_of_one_structure(soups):
    _, _, parent, _, made = soups
    assert len(made["groups"]) == 1 and len(made["groups"][0]) == 5 and made["not_averaged_with_best_trial"] == {}
    (extra,) = made["ingredients_trained"]
    best = made["groups"][0][0]
    assert extra["trial"] == f"{best}+1" and extra["trial"] in made["groups"][0], "one more run of the best trial's plan joins its soup"
    variants = {v["label"]: v for v in made["variants"]}
    greedy = variants["greedy soup"]
    assert greedy["val_score"] <= greedy["first_score"] + 1e-12, "greedy soup never scores below its first ingredient"
    assert greedy["tried"] == made["groups"][0] and greedy["structure_of"] == greedy["tried"][0]
    assert parent.data.metrics["best_trial.val_log_loss"] == pytest.approx(greedy["first_score"], abs=1e-6)
    for method in ("linear", "ties", "dare"):
        merge = variants[f"{method} merge"]
        assert set(merge["ingredients"]) == set(made["groups"][0]) and sum(merge["ingredients"].values()) == pytest.approx(1.0)
        assert merge["evaluations"] == 6 and 0.1 <= merge["density"] <= 1.0
        assert parent.data.metrics[f"{method}_merge.val_log_loss"] == pytest.approx(merge["val_score"])
    average = variants["checkpoint average"]
    assert average["tried"] and sorted(average["tried"]) == [1, 2, 3] and set(average["epochs"]) <= {1, 2, 3}


def test_the_champion_is_the_best_candidate_on_validation(soups):
    _, _, parent, table, made = soups
    metrics = parent.data.metrics
    candidates = {"best trial": metrics["best_trial.val_log_loss"]}
    candidates.update({"ensemble": metrics["ensemble.val_log_loss"]} if "ensemble" in table else {})
    candidates.update({v["label"]: v["val_score"] for v in made["variants"] if not one_trial(v)})
    best = min(candidates.values())
    assert parent.data.tags["fusion_search.champion_kind"] == next(k for k, v in candidates.items() if v == best)
    assert metrics["champion.val_log_loss"] == pytest.approx(best)


def test_the_student_is_one_composite_under_its_own_alias(soups):
    spec, client, parent, table, made = soups
    version = client.get_model_version_by_alias(spec.name, "student")
    assert version.run_id == parent.info.run_id
    student = next(v for v in made["variants"] if v["label"] == "student")
    assert student["teacher"] and student["temperature"] == 2.0 and student["label_weight"] == 0.5
    model = mlflow.pyfunc.load_model(f"models:/{spec.name}@student")
    assert model.metadata.metadata["kind"] == "composite", "one composite, not an ensemble"
    test = load_data(spec).splits["test"]
    proba = model.predict({k: v.numpy() for k, v in test.inputs.items()})
    assert quality_metrics(torch.from_numpy(proba), test.labels, "test")["test_log_loss"] == pytest.approx(table["student"]["test_log_loss"], abs=1e-5)
    # One model's cost: the student has the best trial's structure, so its parameters, size and
    # (measured once per structure) latency are one trial's, a k-trial ensemble's are k trials'.
    assert table["student"]["latency_ms_p95"] == table["best trial"]["latency_ms_p95"]
    assert table["student"]["size_mb"] == table["best trial"]["size_mb"]
    if "ensemble" in table:
        assert table["ensemble"]["params_m"] > 1.5 * table["student"]["params_m"]
