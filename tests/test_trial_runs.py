"""The callback that turns Tune's events into trial runs writes a trial's epochs in batches: a real
SQLite MLflow store, read back with MLflow's client."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from ray.tune.experiment import Trial

from search.locations import default_tracking_uri
from search.names import STATE_TAG
from search.run.record import TrialRunsCallback


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
    assert history(client, run) == [(e, 1.0 / e) for e in range(1, writes_before_the_end + 1)]
    trial.set_status(Trial.RUNNING)
    callback.on_trial_complete(0, [trial], trial)
    assert len(writes) == writes_before_the_end + 3, "the rest of the epochs with the end tags, the end, the parent's counts"
    assert history(client, run) == [(e, 1.0 / e) for e in range(1, 6)], "every epoch, once, at its step"
    ended = client.get_run(run)
    assert ended.info.status == "FINISHED" and ended.data.tags[STATE_TAG] == "completed"
    assert client.get_run(parent).data.metrics["trials.completed"] == 1
