"""The small pieces behind what a person sees of a search: ASHA's rungs, the cache pass's progress
line, the champion's confusion matrix, the links into MLflow's UI."""

from __future__ import annotations

import numpy as np

from pathlib import Path

from search.run.driver import confusion_matrix
from search.run.features import progress_line
from search.locations import default_tracking_uri, store_option, ui_link
from search.spec.schema import Scheduler


def test_asha_rungs_are_the_epochs_it_compares_trials_at():
    assert Scheduler(type="asha", grace_period=1, reduction_factor=2).rungs(8) == [1, 2, 4]
    assert Scheduler(type="asha", grace_period=2, reduction_factor=3).rungs(20) == [2, 6, 18]
    assert Scheduler(type="asha", grace_period=1, reduction_factor=2.5).rungs(7) == [1, 3], "6.25 epochs: at the 7th, the last"
    assert Scheduler(type="asha", grace_period=3, reduction_factor=3).rungs(3) == [], "no rung before the last epoch"
    assert Scheduler(type="fifo").rungs(10) == []


def test_asha_left_to_its_defaults_keeps_about_two_trials_to_the_end():
    for trials, epochs, rungs in [(8, 12, [3, 6]), (2, 12, []), (4, 12, [6]), (64, 12, [1, 2, 4, 8]), (8, 2, [1])]:
        scheduler = Scheduler().for_budget(epochs, trials)
        assert scheduler.rungs(epochs) == rungs, (trials, epochs)
        assert trials / scheduler.reduction_factor ** len(rungs) >= 2 or scheduler.grace_period == 1
    assert Scheduler(grace_period=4, reduction_factor=3).for_budget(12, 8).rungs(12) == [4], "the spec's values win"


def test_cache_progress_line_counts_rows_and_rate():
    assert progress_line(12_288, 40_000, 4.0) == "feature cache: 12,288 of 40,000 rows (31%), 3,072 rows/s"
    assert progress_line(0, 40_000, 4.0) == "feature cache: 0 of 40,000 rows (0%)"


def test_confusion_matrix_rows_are_true_classes():
    predicted = np.array([0, 1, 0, 1])
    labels = np.array([0, 1, 1, 1])
    assert confusion_matrix(predicted, labels, ["a", "b"]) == {"class_names": ["a", "b"], "matrix": [[1, 0], [1, 2]]}


def test_links_name_the_store_and_open_the_training_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert store_option(default_tracking_uri(Path("fusion_runs"))) == ""
    assert store_option("postgresql://fs:pw@db/mlflow") == " --tracking-uri 'postgresql://fs:***@db/mlflow'"
    assert ui_link("http://127.0.0.1:5000/", "3") == "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
    assert ui_link("http://h:1", "3", "abc") == "http://h:1/#/experiments/3/runs/abc?workflowType=machine_learning"


def test_the_study_is_found_where_the_search_wrote_it(tmp_path):
    """The recorded storage (a PostgreSQL password MLflow hides comes from the environment); a
    local store copied elsewhere finds the optuna.db beside it."""
    from mlflow.tracking import MlflowClient

    from search.look.store_reader import StoreReader
    from search.names import STUDY_TAG

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("s")
    server = client.create_run(experiment, tags={STUDY_TAG: "postgresql://fs:***@db/optuna"}).info.run_id
    plain = client.create_run(experiment, tags={STUDY_TAG: "postgresql://db/optuna"}).info.run_id
    moved = client.create_run(experiment, tags={STUDY_TAG: f"sqlite:///{tmp_path / 'gone' / 'optuna.db'}"}).info.run_id

    reader = StoreReader(uri, environ={"FUSION_SEARCH_STUDY_STORAGE": "postgresql://fs:pw@db/optuna"})
    assert reader.study_url(client.get_run(server)) == "postgresql://fs:pw@db/optuna"
    assert reader.study_url(client.get_run(plain)) == "postgresql://db/optuna"
    assert reader.study_url(client.get_run(moved)) is None, "no study there, none beside the store"
    (tmp_path / "optuna.db").touch()
    assert reader.study_url(client.get_run(moved)) == f"sqlite:///{tmp_path / 'optuna.db'}"
    assert StoreReader(uri, environ={}).study_url(client.get_run(server)) is None
