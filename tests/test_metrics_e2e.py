"""A binary search on a rare positive class (6%), end to end: F1 of the positive class as the objective,
class weighting searched, every metric logged per epoch and in the test table, the champion's per-class
report on the parent run, the champion's decision threshold the best cut on validation, and the champion
at least as good as each member alone."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sklearn.metrics import f1_score

from search.names import CANDIDATES_FILE, CLASS_REPORT, SPEC_DIR_TAG, TEST_TABLE, THRESHOLD, THRESHOLD_METRIC
from search.run.preflight import load_data
from search.spec.schema import load_spec
from tests.conftest import run_search_in
from trainables.metrics import QUALITY_METRICS, REGRESSION_METRICS, metrics_for

pytestmark = pytest.mark.slow
ROWS, POSITIVE = 1000, 0.06


def rare_positives(path) -> None:
    """Two views of each row, each with part of the signal: ``a`` sees two of the four causes, ``b`` the other two."""
    rng = np.random.default_rng(7)
    labels = (rng.random(ROWS) < POSITIVE).astype(np.int64)
    causes = rng.normal(size=(ROWS, 4)) + labels[:, None] * np.array([2.0, 1.6, 1.8, 1.7])
    a = np.concatenate([causes[:, :2], rng.normal(size=(ROWS, 3))], axis=1).astype(np.float32)
    b = np.concatenate([causes[:, 2:], rng.normal(size=(ROWS, 3))], axis=1).astype(np.float32)
    np.savez(path, a=a, b=b, label=labels, class_names=np.array(["ok", "fraud"]))


@pytest.fixture(scope="module")
def binary_search(tmp_path_factory):
    root = tmp_path_factory.mktemp("binary")
    rare_positives(root / "fraud.npz")
    spec = {
        "name": "fraud",
        "seed": 2,
        "data": {"source": "npz", "path": str(root / "fraud.npz")},
        "members": [
            {"name": "ma", "kind": "mlp", "input": "a", "params": {"hidden": 32, "layers": 1}},
            {"name": "mb", "kind": "mlp", "input": "b", "params": {"hidden": 32, "layers": 1}},
        ],
        "fusion": {"operators": {"weighted": {}, "concat_mlp": {}}},
        "hyperparameters": {"lr": {"low": 0.005, "high": 0.03, "log": True}, "epochs": 6, "batch_size": 64, "class_weight": ["none", "balanced"]},
        "objective": {"metric": "val_f1"},
        "budget": {"num_samples": 6, "max_concurrent": 2},
        "measure_cost": False,
        "resources": {"cpu": 1},
    }
    spec_path = run_search_in(root, spec, "fraud.yaml")
    loaded = load_spec(spec_path)
    client = MlflowClient(loaded.tracking_uri)
    experiment = client.get_experiment_by_name("fraud")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parent = next(r for r in runs if r.data.tags.get("fusion_search.role") == "search")
    trials = [r for r in runs if r.data.tags.get("fusion_search.role") == "trial"]
    artifact = lambda name: json.loads(open(client.download_artifacts(parent.info.run_id, name, str(root))).read())  # noqa: E731
    return client, parent, trials, artifact


def test_every_metric_is_logged_each_epoch_and_in_the_test_table(binary_search):
    client, _, trials, artifact = binary_search
    names = [f"val_{m.name}" for m in metrics_for(2)]
    assert set(names) == set(QUALITY_METRICS) - set(REGRESSION_METRICS), "two classes: the positive class's metrics too"
    for trial in trials:
        history = client.get_metric_history(trial.info.run_id, "val_f1")
        assert len(history) >= 1
        assert all(len(client.get_metric_history(trial.info.run_id, name)) == len(history) for name in names), "every metric, every epoch"
        assert trial.data.metrics["best_val_f1"] == max(h.value for h in history)
    table = artifact(TEST_TABLE)
    for row in table.values():
        assert {f"test_{m.name}" for m in metrics_for(2)} <= set(row)


def test_class_weighting_is_searched(binary_search):
    _, _, trials, _ = binary_search
    assert {t.data.params["class_weight"] for t in trials} <= {"none", "balanced"}
    assert len(trials) == 6


def test_the_champions_class_report(binary_search):
    _, _, _, artifact = binary_search
    report, table = artifact(CLASS_REPORT), artifact(TEST_TABLE)
    assert report["fraud"]["support"] + report["ok"]["support"] == ROWS // 5
    assert report["fraud"]["f1-score"] == pytest.approx(table["champion"]["test_f1"])


def test_the_champion_is_at_least_as_good_as_each_member_alone(binary_search):
    _, parent, _, artifact = binary_search
    candidates = artifact(CANDIDATES_FILE)
    champion = next(c for c in candidates["candidates"] if c["champion"])
    alone = [c for c in candidates["candidates"] if c["candidate"].endswith(" alone")]
    assert {c["candidate"] for c in alone} == {"ma alone", "mb alone"}
    assert all(champion["best_val_f1"] >= c["best_val_f1"] for c in alone)
    assert parent.data.metrics["champion.val_f1"] == pytest.approx(champion["best_val_f1"])


def test_the_champions_decision_threshold_is_the_validation_optimal_one(binary_search):
    """The champion, loaded as a user loads it, on the validation rows: no cut of its probabilities
    gives a better F1 than its stored threshold, which its test row and its model's metadata carry."""
    client, parent, _, artifact = binary_search
    spec = load_spec(Path(parent.data.tags[SPEC_DIR_TAG]) / "fraud.yaml")
    mlflow.set_tracking_uri(spec.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/fraud@champion")
    threshold = parent.data.metrics[THRESHOLD_METRIC]
    assert model.metadata.metadata[THRESHOLD] == pytest.approx(threshold)
    val = load_data(spec).splits["val"]
    proba, labels = model.predict({k: v.numpy() for k, v in val.inputs.items()}), val.labels.numpy()
    best = max(f1_score(labels, (proba[:, 1] >= p).astype(int)) for p in np.unique(proba[:, 1]))
    assert f1_score(labels, (proba[:, 1] > threshold).astype(int)) == pytest.approx(best)
    classes = model.predict({k: v.numpy() for k, v in val.inputs.items()}, params={"output": "classes"})
    assert list(classes) == [["ok", "fraud"][int(p > threshold)] for p in proba[:, 1]], "the classes are at the stored threshold"
    with pytest.raises(Exception, match="params.output: 'labels' is not one of probabilities, classes"):
        model.predict({k: v.numpy() for k, v in val.inputs.items()}, params={"output": "labels"})
    assert best > f1_score(labels, proba.argmax(axis=1)) or threshold == 0.5
    test = load_data(spec).splits["test"]
    test_proba = model.predict({k: v.numpy() for k, v in test.inputs.items()})
    at = f1_score(test.labels.numpy(), (test_proba[:, 1] > threshold).astype(int))
    assert artifact(TEST_TABLE)["champion"]["test_f1"] == pytest.approx(at)


def test_the_report_gives_the_decision_threshold(binary_search, tmp_path):
    from search.cli import main

    _, parent, _, _ = binary_search
    spec = load_spec(Path(parent.data.tags[SPEC_DIR_TAG]) / "fraud.yaml")
    out = tmp_path / "fraud.html"
    assert main(["report", "fraud", "--tracking-uri", spec.tracking_uri, "--out", str(out)]) == 0
    page = out.read_text()
    threshold = parent.data.metrics[THRESHOLD_METRIC]
    assert f"above a probability of {threshold:.4g} (its decision threshold)" in page
    assert "f1" in page and "params={&#x27;output&#x27;: &#x27;classes&#x27;}" in page
