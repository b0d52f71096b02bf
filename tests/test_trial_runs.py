"""The callback that turns Tune's events into trial runs writes a trial's epochs in batches, on a
thread of its own; a resumed search completes the runs whose writes a killed driver lost. A real
SQLite MLflow store, read back with MLflow's client."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.experiment import Trial

from search.locations import default_tracking_uri
from search.names import PARENT_TAG, STATE_TAG, TRIAL_ID_TAG
from search.run.record import TrialRunsCallback, record_finished
from trainables.composite import CompositeDescription, MemberDescription
from trainables.data import load_dataset
from trainables.sources import SourceOptions
from trainables.training import TrialPlan


def history(client: MlflowClient, run_id: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, "val_log_loss")]


@pytest.mark.parametrize("every_s, writes_before_the_end", [(3600.0, 1), (0.0, 5)])
def test_a_trials_epochs_are_written_at_most_every_so_often_each_at_its_step(tmp_path, every_s, writes_before_the_end):
    """The first epoch at once, later ones within ``every_s`` together when the next falls due or the
    trial ends; every epoch with its own step and value; ``every_s: 0`` writes each as it comes."""
    uri = default_tracking_uri(tmp_path)
    client = MlflowClient(uri)
    experiment = client.create_experiment("runs")
    parent, run = (client.create_run(experiment).info.run_id for _ in range(2))
    callback = TrialRunsCallback(uri, experiment, parent, every_s=every_s)
    trial = Trial("__fake", config={}, trial_id="t1", stub=True)
    callback.run_ids[trial.trial_id] = run
    writes = []
    write = callback.write
    callback.write = lambda operation: writes.append(1) or write(operation)  # counts this class's own writes
    for epoch in range(1, 6):
        callback.on_trial_result(0, [trial], trial, {"training_iteration": epoch, "val_log_loss": 1.0 / epoch})
    assert len(writes) == writes_before_the_end
    assert callback.settle(30) == 0, "the writes' thread has done them"
    assert history(client, run) == [(e, 1.0 / e) for e in range(1, writes_before_the_end + 1)]
    trial.set_status(Trial.RUNNING)
    callback.on_trial_complete(0, [trial], trial)
    assert len(writes) == writes_before_the_end + 3, "the rest of the epochs with the end tags, the end, the parent's counts"
    assert callback.settle(30) == 0
    assert history(client, run) == [(e, 1.0 / e) for e in range(1, 6)], "every epoch, once, at its step"
    ended = client.get_run(run)
    assert ended.info.status == "FINISHED" and ended.data.tags[STATE_TAG] == "completed"
    assert client.get_run(parent).data.metrics["trials.completed"] == 1


@pytest.fixture(scope="module")
def config() -> dict:
    """A trial's Tune config: the plan of a one-member composite."""
    data = load_dataset("digits", SourceOptions(), 0.2, 0.2, seed=0)
    composite = CompositeDescription([MemberDescription("mlp", "mlp", "flat", {"hidden": 8, "layers": 1})], "weighted", {"pool": "linear", "weight": [1.0]}, 10, data.class_names, data.inputs)
    return {"plan": TrialPlan(composite, lr=0.01, weight_decay=0.0, epochs=3, batch_size=32, seed=0).to_dict()}


def test_a_trial_start_retried_after_the_server_went_away_makes_one_run_with_its_parameters(tmp_path, config):
    """The run is created, then the server is unreachable for its parameters: the retry writes them to
    that run, not to a second one (the tracking server's outage in tests/test_mlflow_server.py)."""
    uri = default_tracking_uri(tmp_path)
    client = MlflowClient(uri)
    experiment = client.create_experiment("runs")
    callback = TrialRunsCallback(uri, experiment, client.create_run(experiment).info.run_id, retry_s=0.01)
    log_batch, refused = callback.client.log_batch, []

    def unreachable_once(run_id: str, **batch) -> None:
        if batch.get("params") and not refused:
            refused.append(run_id)
            raise ConnectionRefusedError("the tracking server went away")  # an OSError: unreachable, retried
        log_batch(run_id, **batch)

    callback.client.log_batch = unreachable_once
    trial = Trial("__fake", config=config, trial_id="t1", stub=True)
    callback.on_trial_start(0, [trial], trial)
    assert callback.settle(30) == 0
    runs = client.search_runs([experiment], filter_string=f"tags.`{TRIAL_ID_TAG}` = 't1'")
    assert len(runs) == 1 and refused == [runs[0].info.run_id]
    assert runs[0].data.params["members"] == "mlp" and runs[0].data.params["lr"] == "0.01"


def test_an_mlflow_error_on_the_writes_thread_is_raised_in_the_driver(tmp_path):
    """Not an unreachable server (those wait and are retried): the search stops, as when the write was the driver's own."""
    uri = default_tracking_uri(tmp_path)
    client = MlflowClient(uri)
    experiment = client.create_experiment("runs")
    callback = TrialRunsCallback(uri, experiment, client.create_run(experiment).info.run_id)
    trial = Trial("__fake", config={}, trial_id="t1", stub=True)
    callback.run_ids[trial.trial_id] = "no-such-run"
    callback.on_trial_result(0, [trial], trial, {"training_iteration": 1, "val_log_loss": 1.0})
    with pytest.raises(MlflowException, match="no-such-run"):
        callback.settle(30)


def reported(trial_id: str, config: dict, epochs: int, **extra) -> tune.Result:
    """A trial's result as Tune (or a killed driver's checkpoints) gives it: what it reported with each epoch's checkpoint."""
    each = [{"trial_id": trial_id, "training_iteration": e, "epoch": e, "planned_epochs": epochs, "val_log_loss": 1.0 / e, "trial_time_s": 0.1 * e, "config": config, **extra} for e in range(1, epochs + 1)]
    return tune.Result(metrics=each[-1], checkpoint=None, error=None, path=f"/nowhere/trial_{trial_id}", best_checkpoints=[(None, m) for m in each])


def test_a_resumed_search_completes_the_runs_of_trials_whose_last_writes_were_lost(tmp_path, config):
    """A run left RUNNING gets the epochs it lacks and its end; a trial with no run gets one, named by
    Tune's count, with its parameters; a FINISHED run and a failed trial are left alone."""
    uri = default_tracking_uri(tmp_path)
    client = MlflowClient(uri)
    experiment = client.create_experiment("runs")
    parent = client.create_run(experiment).info.run_id

    def run_of(trial_id: str) -> str:
        return client.create_run(experiment, tags={PARENT_TAG: parent, TRIAL_ID_TAG: trial_id}).info.run_id

    running, finished = run_of("a"), run_of("c")
    client.log_metric(running, "trial_time_s", 0.1, step=1)
    client.log_metric(running, "val_log_loss", 1.0, step=1)
    client.log_metric(finished, "val_log_loss", 1.0, step=1)
    client.set_terminated(finished, "FINISHED")
    failed = tune.Result(metrics={"trial_id": "d", "config": config}, checkpoint=None, error=RuntimeError("boom"), path="/nowhere/trial_d")

    results = [reported("a", config, 3), reported("b", config, 2, experiment_tag="5_lr=0.01"), reported("c", config, 3), failed]
    assert record_finished(client, experiment, parent, results) == ["a", "b"]

    ended = client.get_run(running)
    assert ended.info.status == "FINISHED" and ended.data.tags[STATE_TAG] == "completed"
    assert history(client, running) == [(1, 1.0), (2, 0.5), (3, 1.0 / 3)], "the epochs it lacked, each once, at its step"
    made = [r for r in client.search_runs([experiment]) if r.data.tags.get(TRIAL_ID_TAG) == "b"]
    assert len(made) == 1 and made[0].info.status == "FINISHED" and made[0].info.run_name.startswith("t05 mlp weighted")
    assert made[0].data.tags[PARENT_TAG] == parent and made[0].data.params["members"] == "mlp"
    assert history(client, made[0].info.run_id) == [(1, 1.0), (2, 0.5)]
    assert history(client, finished) == [(1, 1.0)], "a finished run is not written again"
    assert not [r for r in client.search_runs([experiment]) if r.data.tags.get(TRIAL_ID_TAG) == "d"]
    assert record_finished(client, experiment, parent, results) == [], "done once"
