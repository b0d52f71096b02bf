"""A real small search on a local Ray instance, checked through MLflow's and Optuna's own APIs.

One search (``searched`` in conftest: 4 trials, 2 epochs, two small members) run through the
CLI; the tests read back what it recorded.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import torch
import yaml

from search.cli import main
from search.run.preflight import load_data
from tests.artifacts import pickles_in
from trainables.ensemble_model import saved_predictor
from trainables.metrics import quality_metrics

pytestmark = pytest.mark.slow


def parent_and_trials(spec, client):
    experiment = client.get_experiment_by_name(spec.name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("fusion_search.role") == "search"]
    trials = [r for r in runs if r.data.tags.get("fusion_search.role") == "trial"]
    return parents, trials


def test_one_parent_run_with_spec_and_summary(searched):
    spec, spec_path, client = searched
    parents, _ = parent_and_trials(spec, client)
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["num_samples"] == "4"
    assert "champion.test_log_loss" in parent.data.metrics
    assert "mlp_alone.test_accuracy" in parent.data.metrics and "uniform_average.test_log_loss" in parent.data.metrics
    experiment = client.get_experiment_by_name(spec.name)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development", "a model-training experiment, in MLflow's words"
    spec_text = mlflow.artifacts.load_text(f"{parent.info.artifact_uri}/spec.yaml")
    assert yaml.safe_load(spec_text)["name"] == spec.name


def test_one_nested_run_per_trial_with_epoch_metrics(searched):
    spec, _, client = searched
    parents, trials = parent_and_trials(spec, client)
    assert len(trials) == spec.budget.num_samples
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.info.status == "FINISHED"
        assert run.data.tags["fusion_search.state"] in ("completed", "stopped_early")
        assert {"members", "operator", "lr", "epochs"} <= set(run.data.params)
        history = client.get_metric_history(run.info.run_id, "val_log_loss")
        steps = [m.step for m in history]
        assert steps == list(range(1, len(steps) + 1)) and 1 <= len(steps) <= 2
        if run.data.tags["fusion_search.state"] == "completed":
            assert len(steps) == 2


def test_optuna_study_records_every_trial(searched):
    spec, _, _ = searched
    study = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{spec.storage / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert len(states) == spec.budget.num_samples
    assert set(states) <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    for trial in study.trials:
        assert trial.intermediate_values, "per-epoch values reach Optuna"
        fused = "members" in trial.params and "operator" in trial.params
        assert fused or trial.user_attrs.get("fusion_search.alone") in {m.name for m in spec.members}, "a fused trial, or a member alone"


def test_tune_keeps_json_and_csv_records_of_each_trial_but_no_tensorboard_files(searched):
    spec, _, _ = searched
    trials = [p for p in Path(spec.tune_storage).glob("*/trial_*") if p.is_dir()]
    assert len(trials) == spec.budget.num_samples
    for folder in trials:
        assert (folder / "result.json").read_text().strip() and (folder / "progress.csv").read_text().strip()
        assert not list(folder.glob("events.out.tfevents*")), "Tune's TensorBoard logger is off: MLflow records the trials"


def test_champion_round_trip(searched):
    """models:/NAME@champion loads, predicts exactly what the in-process model predicts, reproduces the logged metric."""
    spec, _, client = searched
    mlflow.set_tracking_uri(spec.tracking_uri)
    version = client.get_model_version_by_alias(spec.name, "champion")
    pyfunc = mlflow.pyfunc.load_model(f"models:/{spec.name}@champion")
    test = load_data(spec).splits["test"]
    proba = pyfunc.predict({k: v.numpy() for k, v in test.inputs.items()})
    assert proba.shape == (len(test), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)

    local = Path(mlflow.artifacts.download_artifacts(f"models:/{spec.name}@champion"))
    in_process = saved_predictor(local).predict_raw(test.inputs).numpy()
    np.testing.assert_array_equal(proba, in_process)

    parents, _ = parent_and_trials(spec, client)
    logged = parents[0].data.metrics
    metrics = quality_metrics(torch.from_numpy(proba), test.labels, "test")
    assert metrics["test_log_loss"] == pytest.approx(logged["champion.test_log_loss"], rel=1e-6)
    assert metrics["test_accuracy"] == pytest.approx(logged["champion.test_accuracy"])
    assert version.run_id == parents[0].info.run_id
    assert pickles_in(local) == [], "no pickled objects in the champion artifact"


def test_cli_trials_and_best(searched, capsys, tmp_path):
    spec, _, _ = searched
    assert main(["trials", spec.name, "--tracking-uri", spec.tracking_uri]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:2] == ["trial", "fusion"] and len(lines) == 2 + spec.budget.num_samples

    assert main(["best", spec.name, "--tracking-uri", spec.tracking_uri, "--out", str(tmp_path / "champ")]) == 0
    model = mlflow.pyfunc.load_model(str(next((tmp_path / "champ").rglob("MLmodel")).parent))
    assert model.metadata.signature is not None

    assert main(["trials", "no-such-search", "--tracking-uri", spec.tracking_uri]) == 2
    assert "no search named 'no-such-search'" in capsys.readouterr().err
