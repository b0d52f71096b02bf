"""End to end: a frozen member's backbone runs once per sample per search, counted by the member itself
in whatever process runs it; a second search reuses the cached features; the champion is the better of
the best trial and the greedy ensemble, and both are in MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import ray
import torch
import yaml
from mlflow.tracking import MlflowClient

from search.cli import main
from search.run.preflight import load_data
from search.run.record import EXAMPLE_ROWS
from search.spec.schema import load_spec
from search.candidates.weight_fusion import one_trial
from tests.counting import logged_rows, save_weights
from trainables.metrics import quality_metrics

pytestmark = pytest.mark.slow
DIGITS_ROWS = 1797


def counting_spec(root: Path, name: str, log: Path, concurrent: int) -> Path:
    weights = save_weights(root / "enc.safetensors")
    spec = {
        "name": name,
        "seed": 1,
        "data": {"source": "digits"},
        "members": [
            {
                "name": "enc",
                "kind": "checkpoint",
                "input": "flat",
                "params": {"factory": "tests.counting:counting_encoder", "args": {"log": str(log)}},
                "weights": str(weights),
                "train": "frozen",
            },
            {"name": "mlp", "kind": "mlp", "input": "flat", "params": {"hidden": 32, "layers": 1}},
        ],
        "fusion": {"min_members": 1, "operators": {"weighted": {}, "concat_mlp": {}, "stacking": {}}},
        "hyperparameters": {"lr": {"low": 0.003, "high": 0.03, "log": True}, "epochs": 3, "batch_size": 128},
        "budget": {"num_samples": 6, "max_concurrent": concurrent},
        "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2},
        "ensemble": {"top_k": 6, "rounds": 20},
        "measure_cost": False,  # no timing runs of the deployed models: every backbone row is counted here
        "storage": str(root / "store"),
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def parent_run(spec):
    client = MlflowClient(spec.tracking_uri)
    experiment = client.get_experiment_by_name(spec.name)
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parent = next(r for r in runs if r.data.tags.get("fusion_search.role") == "search")
    trials = [r for r in runs if r.data.tags.get("fusion_search.role") == "trial"]
    return client, parent, trials


@pytest.fixture(scope="module")
def two_searches(tmp_path_factory):
    """Two searches with the same member over the same data and storage; the rows each one logged. The first
    runs two trials at once (the cache is filled once even so); the second one at a time, so that its trials,
    and what greedy selection makes of them, do not depend on which trial finished first."""
    root = tmp_path_factory.mktemp("cache")
    log = root / "rows.log"
    specs = [counting_spec(root, "counted", log, concurrent=2), counting_spec(root, "counted-again", log, concurrent=1)]
    rows = []
    try:
        for spec in specs:
            assert main(["run", str(spec)]) == 0
            rows.append(logged_rows(log))
            log.unlink()
    finally:
        ray.shutdown()
    return [load_spec(s) for s in specs], rows


def searched_rows(spec, rows: list[int]) -> list[int]:
    """The rows the search itself ran through the backbone: without MLflow's check of each logged model
    that has the member (a prediction of its input example), which runs at most once per logged model."""
    searched = [r for r in rows if r != EXAMPLE_ROWS]
    client, parent, _ = parent_run(spec)
    assert len(rows) - len(searched) <= len(client.search_logged_models([parent.info.experiment_id]))
    return searched


def test_frozen_backbone_runs_once_per_sample_per_search(two_searches):
    (spec, _), (rows, _) = two_searches
    searched = searched_rows(spec, rows)
    assert sum(searched) == DIGITS_ROWS, "the checks, six trials, the baselines and the champion: each sample once"
    _, parent, trials = parent_run(spec)
    assert parent.data.metrics["search.backbone_rows"] == DIGITS_ROWS
    assert len(trials) == 6 and all(t.data.metrics.get("backbone_rows", 0) == 0 for t in trials)


def test_second_search_reads_the_cache(two_searches):
    (_, spec), (_, rows) = two_searches
    assert searched_rows(spec, rows) == [], "every feature came from the files of the first search"
    _, parent, _ = parent_run(spec)
    assert parent.data.metrics["search.backbone_rows"] == 0


def test_champion_is_the_best_of_best_trial_ensemble_and_weight_space_variants(two_searches):
    (spec, _), _ = two_searches
    client, parent, _ = parent_run(spec)
    metrics, tags = parent.data.metrics, parent.data.tags
    summary = mlflow.artifacts.load_dict(f"{parent.info.artifact_uri}/ensemble.json")
    weights = [m["weight"] for m in summary["members"]]
    assert sum(weights) == pytest.approx(1.0) and all(w > 0 for w in weights)
    assert summary["trajectory"][0] == pytest.approx(metrics["best_trial.val_log_loss"], abs=1e-6)
    table = json.loads(Path(mlflow.artifacts.download_artifacts(f"{parent.info.artifact_uri}/test_table.json")).read_text())
    if len(weights) > 1:
        assert metrics["ensemble.val_log_loss"] <= metrics["best_trial.val_log_loss"]
        assert "ensemble" in table
    made = mlflow.artifacts.load_dict(f"{parent.info.artifact_uri}/weight_fusion.json")["variants"]
    candidates = {"best trial": metrics["best_trial.val_log_loss"]}
    candidates.update({"ensemble": metrics["ensemble.val_log_loss"]} if "ensemble" in table else {})
    candidates.update({v["label"]: v["val_score"] for v in made if not one_trial(v)})
    kind = tags["fusion_search.champion_kind"]
    best = min(candidates.values())
    assert kind == next(label for label, value in candidates.items() if value == best), "ties go to the earlier candidate"
    assert metrics["champion.val_log_loss"] == pytest.approx(best, abs=1e-9)
    # the champion, evaluated once on test through the registered model, matches its row from saved predictions
    assert table["champion"]["test_log_loss"] == pytest.approx(table[kind]["test_log_loss"], abs=1e-5)
    models = client.search_logged_models([parent.info.experiment_id])
    logged = {m.name for m in models}
    assert "champion" in logged and (len(weights) == 1 or logged >= {"champion", "ensemble" if kind == "best trial" else "best_trial"})
    # each logged model is linked to its own metrics (MLflow links a model to what its run has when it
    # is logged): the champion's to the champion's, the runner-up's to none of them, none to another row's
    linked = {m.model_id: (m.name, {x.key for x in m.metrics or []}) for m in models if m.source_run_id == parent.info.run_id}
    assert any(name == "champion" and {"champion.val_log_loss", "champion.test_log_loss"} <= keys for name, keys in linked.values())
    rows = {f"{label.replace(' ', '_')}.test_log_loss" for label in table if label != "champion"}
    for name, keys in linked.values():
        assert not keys & rows, f"{name} is linked to other rows' metrics"
        assert name == "champion" or not any(k.startswith("champion.") for k in keys)


def test_ensemble_loads_as_a_pyfunc_and_reproduces_its_test_row(two_searches):
    """Whether champion or runner-up, the logged ensemble is a pyfunc that predicts what selection measured."""
    (_, spec), _ = two_searches
    client, parent, _ = parent_run(spec)
    table = mlflow.artifacts.load_dict(f"{parent.info.artifact_uri}/test_table.json")
    assert "ensemble" in table, "this seeded one-at-a-time search's greedy selection mixes several trials"
    name = "champion" if parent.data.tags["fusion_search.champion_kind"] == "ensemble" else "ensemble"
    logged = next(m for m in client.search_logged_models([parent.info.experiment_id]) if m.name == name)
    mlflow.set_tracking_uri(spec.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
    assert model.metadata.metadata["kind"] == "ensemble"
    test = load_data(spec).splits["test"]
    proba = model.predict({k: v.numpy() for k, v in test.inputs.items()})
    metrics = quality_metrics(torch.from_numpy(proba), test.labels, "test")
    assert metrics["test_log_loss"] == pytest.approx(table["ensemble"]["test_log_loss"], abs=1e-5)


def test_a_frozen_member_that_fails_in_the_cache_pass_is_one_line_before_any_run(tmp_path, capsys):
    """The cache pass is the members' check for the members it runs: a backbone that cannot read its
    input fails there with the same one-line error as the spec check, and nothing is recorded."""
    from safetensors.torch import save_file

    from tests.counting import counting_encoder

    save_file(counting_encoder("unused", inputs=10).state_dict(), str(tmp_path / "narrow.safetensors"))
    spec = yaml.safe_load(counting_spec(tmp_path, "narrow", tmp_path / "rows.log", concurrent=1).read_text())
    spec["members"][0]["params"]["args"]["inputs"] = 10  # the data's flat input has 64 values
    spec["members"][0]["weights"] = str(tmp_path / "narrow.safetensors")
    (tmp_path / "narrow.yaml").write_text(yaml.safe_dump(spec))
    try:
        assert main(["run", str(tmp_path / "narrow.yaml")]) == 2
    finally:
        ray.shutdown()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: members[0] (enc): cannot run on input 'flat' (tensor [64]): mat1 and mat2 shapes cannot be multiplied"), err
    client = MlflowClient(load_spec(tmp_path / "narrow.yaml").tracking_uri)
    experiment = client.get_experiment_by_name("narrow")
    assert experiment is None or client.search_runs([experiment.experiment_id]) == []
