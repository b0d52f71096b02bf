"""A search whose driver is SIGKILLed mid-search continues with ``fusion-search resume NAME``: the same
Tune experiment, Optuna study and MLflow runs, the trial budget honoured, one finished run per trial.

With a real cluster's shared state, none of it on local disk: Tune's experiment in S3, the Optuna
study in PostgreSQL, and runs on an MLflow server backed by PostgreSQL that keeps the artifacts in
S3, all named by environment variables as the cluster manifests do; and with everything in the
local storage folder (the embedded default), killed at several points."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from cluster.local import free_port
from cluster.mlflow_server import TrackingServer
from tests.conftest import TINY_SPEC
from tests.services import Output

pytestmark = pytest.mark.slow
FUSION_SEARCH = str(Path(sys.executable).parent / "fusion-search")


@pytest.fixture
def stores(request, tmp_path, monkeypatch) -> Iterator[dict[str, str]]:
    """Where the search keeps its state, named as a cluster does, in the environment, so the spec is
    the laptop's, unchanged: the tracking URI, the Optuna study's URL and the bucket."""
    bucket, database = request.getfixturevalue("s3_bucket"), request.getfixturevalue("postgres_url")
    server = TrackingServer(f"{database}/mlflow", f"{bucket}/mlflow", port=free_port(), log=tmp_path / "mlflow.log")
    with server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        monkeypatch.setenv("FUSION_SEARCH_RAY_STORAGE", f"{bucket}/tune")
        monkeypatch.setenv("FUSION_SEARCH_STUDY_STORAGE", f"{database}/optuna")
        # The spec itself names the study with a password (the server trusts local connections, so
        # any opens it): MLflow keeps the spec with it hidden, and resume takes it from the environment.
        hidden = f"{database}/optuna".replace("postgresql://fs@", "postgresql://fs:hunter2@")
        yield {"tracking": server.uri, "study": f"{database}/optuna", "bucket": bucket, "spec_study": hidden}


def interruptible_spec(name: str, trials: int, storage: str) -> dict:
    """Trials of 6 small epochs, two at once, long enough to be stopped in the middle of."""
    return {
        **TINY_SPEC,
        "name": name,
        "hyperparameters": {**TINY_SPEC["hyperparameters"], "epochs": 6, "batch_size": 16},
        "budget": {"num_samples": trials, "max_concurrent": 2},
        "scheduler": {"type": "fifo"},
        "report": {"baselines": False},
        "storage": storage,
    }


def test_resume_after_the_driver_is_killed(tmp_path, stores):
    spec_dict = interruptible_spec("killed-driver", 6, "store")  # relative: resume must find it from the run
    spec_dict["study_storage"] = stores["spec_study"]
    (tmp_path / "specs").mkdir()
    spec_path = tmp_path / "specs" / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict))
    driver = subprocess.Popen([FUSION_SEARCH, "run", str(spec_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=tmp_path, start_new_session=True)
    Output(driver).until("[2/6 done", timeout_s=300)  # two trials have finished
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started die at once
    assert driver.wait(60) == -signal.SIGKILL

    uri = stores["tracking"]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("killed-driver").experiment_id
    assert any(r.info.status == "RUNNING" for r in client.search_runs([experiment])), "the crash left runs open"

    resumed = subprocess.run([FUSION_SEARCH, "resume", "killed-driver", "--tracking-uri", uri],
                             capture_output=True, text=True, cwd=tmp_path / "specs", timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    runs = client.search_runs([experiment], max_results=100)
    parents = [r for r in runs if r.data.tags.get("fusion_search.role") == "search"]
    trials = [r for r in runs if r.data.tags.get("fusion_search.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    finished = [r.data.tags["fusion_search.trial_id"] for r in trials if r.info.status == "FINISHED"]
    assert len(finished) == len(set(finished)) == 6, [(r.data.tags["fusion_search.trial_id"], r.info.status) for r in trials]
    # A trial started after Tune's last snapshot is lost with the driver (Tune cannot restore it):
    # its run, if it had one, is closed as KILLED and its Optuna trial failed; the budget is
    # still 6 finished trials.
    lost = [r for r in trials if r.info.status != "FINISHED"]
    assert all(r.info.status == "KILLED" for r in lost), [(r.data.tags["fusion_search.trial_id"], r.info.status) for r in lost]
    study = optuna.load_study(study_name="killed-driver", storage=stores["study"])
    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(done) == 6 and len(study.trials) == 6 + len(failed), [t.state for t in study.trials]
    assert len(failed) >= len(lost), "a lost run's Optuna trial is failed too (a trial lost before it started has no run)"
    if failed:
        assert f"Optuna trials {', '.join(str(t.number) for t in failed)} were lost with the driver" in resumed.stdout
    assert "champion" in resumed.stdout and "resuming 'killed-driver'" in resumed.stdout
    keys = s3_keys(stores["bucket"])
    checkpoints = [k.split("/")[2] for k in keys if k.startswith("tune/killed-driver-") and k.endswith("/latest.safetensors")]
    assert_latest_checkpoints_kept(checkpoints, finished)
    assert any(k.startswith("mlflow/") and k.endswith("/MLmodel") for k in keys), "the server keeps the champion in S3"
    assert not [p for p in (tmp_path / "store").rglob("*") if p.is_file()], "nothing of the search is on local disk"
    print(resumed.stdout)


def assert_latest_checkpoints_kept(checkpoints: list[str], finished: list[str]) -> None:
    """``checkpoints``: the trial folder of each checkpoint found; each finished trial keeps one, its latest."""
    kept = sorted(c for c in checkpoints if c.removeprefix("trial_") in finished)  # a lost trial's are not Tune's any more
    assert kept == sorted(f"trial_{t}" for t in finished), "each finished trial keeps its latest checkpoint, and only that"


def s3_keys(bucket: str) -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket.removeprefix("s3://"))
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_ctrl_c_ends_the_search_cleanly_and_says_how_to_resume(tmp_path):
    """Ctrl+C (SIGINT to the terminal's whole process group) mid-search: exit 130 with one line that
    names ``fusion-search resume NAME`` (not Ray's ``Tuner.restore``), no Optuna trial left RUNNING,
    and the search resumes to its full budget."""
    spec_dict = interruptible_spec("ctrl-c", 4, str(tmp_path / "store"))
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict))
    driver = subprocess.Popen([FUSION_SEARCH, "run", str(spec_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=tmp_path, start_new_session=True)
    output = Output(driver)
    output.until("[1/4 done", timeout_s=300)
    os.killpg(driver.pid, signal.SIGINT)
    output.until(None, timeout_s=120)
    assert driver.wait(60) == 130, output.text[-3000:]
    assert "continue it with: fusion-search resume ctrl-c" in output.text and "Tuner.restore(" not in output.text, output.text[-3000:]
    study = optuna.load_study(study_name="ctrl-c", storage=f"sqlite:///{tmp_path / 'store' / 'optuna.db'}")
    assert not [t.number for t in study.trials if t.state == optuna.trial.TrialState.RUNNING], [t.state for t in study.trials]

    resumed = subprocess.run([FUSION_SEARCH, "resume", "ctrl-c", "--storage", str(tmp_path / "store")],
                             capture_output=True, text=True, cwd=tmp_path, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "champion" in resumed.stdout


@pytest.mark.parametrize(
    "kill_at",
    ["[1/6 done", "[3/6 done", "ensemble selection over"],
    ids=["after-one-trial", "after-three-quick-trials", "during-the-work-after-the-search"],
)
def test_a_resumed_search_keeps_its_budget_exactly(tmp_path, kill_at):
    """SIGKILL at several points, then ``resume``: exactly ``num_samples`` FINISHED trial runs, one
    per Optuna trial, none trained twice (trials that finished after Tune's last snapshot are found,
    not trained again), every one of them weighed for the champion, and one registered version."""
    spec_dict = {
        **TINY_SPEC,
        "name": "exact-budget",
        "hyperparameters": {**TINY_SPEC["hyperparameters"], "epochs": 1},
        "budget": {"num_samples": 6, "max_concurrent": 1},  # quick trials, one after another
        "scheduler": {"type": "fifo"},
        "report": {"baselines": False},
        "storage": str(tmp_path / "store"),
    }
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict))
    driver = subprocess.Popen([FUSION_SEARCH, "run", str(spec_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=tmp_path, start_new_session=True)
    output = Output(driver)
    output.until(kill_at, timeout_s=300)
    os.killpg(driver.pid, signal.SIGKILL)
    assert driver.wait(60) == -signal.SIGKILL
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("exact-budget").experiment_id

    def trial_runs() -> list:
        return [r for r in client.search_runs([experiment], max_results=100) if r.data.tags.get("fusion_search.role") == "trial"]

    before = {r.data.tags["fusion_search.trial_id"] for r in trial_runs() if r.info.status == "FINISHED"}

    resumed = subprocess.run([FUSION_SEARCH, "resume", "exact-budget", "--storage", str(tmp_path / "store")],
                             capture_output=True, text=True, cwd=tmp_path, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    runs = trial_runs()
    finished = [r.data.tags["fusion_search.trial_id"] for r in runs if r.info.status == "FINISHED"]
    states = [(r.data.tags["fusion_search.trial_id"], r.info.status) for r in runs]
    assert len(finished) == len(set(finished)) == 6, states
    assert before <= set(finished), "a trial that finished before the kill is counted, not replaced"
    assert all(r.info.status == "KILLED" for r in runs if r.info.status != "FINISHED"), states
    study = optuna.load_study(study_name="exact-budget", storage=f"sqlite:///{tmp_path / 'store' / 'optuna.db'}")
    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(done) == 6, [t.state for t in study.trials]
    parent = next(r for r in client.search_runs([experiment]) if r.data.tags.get("fusion_search.role") == "search")
    assert parent.info.status == "FINISHED"
    import mlflow

    weighed = mlflow.artifacts.load_dict(f"{parent.info.artifact_uri}/candidates.json")["trials"]
    assert sorted(weighed) == sorted(finished), "the champion was picked from every finished trial"
    versions = client.search_model_versions("name = 'exact-budget'")
    assert len(versions) == 1, [(v.version, v.run_id) for v in versions]
    champions = [m for m in client.search_logged_models([experiment]) if m.name == "champion"]
    assert len(champions) == 1, "the work after the search, redone, logs one champion"
    assert_latest_checkpoints_kept([p.parent.parent.name for p in (tmp_path / "store" / "ray_results").glob("*/trial_*/checkpoint_*/latest.safetensors")], finished)
