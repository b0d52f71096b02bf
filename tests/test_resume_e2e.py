"""A search whose driver is SIGKILLed mid-search continues with ``fusion-search resume NAME``: the same
Tune experiment, Optuna study and MLflow runs, the trial budget honoured, one finished run per trial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import TINY_SPEC

pytestmark = pytest.mark.slow
FUSION_SEARCH = str(Path(sys.executable).parent / "fusion-search")


def test_resume_after_the_driver_is_killed(tmp_path):
    spec_dict = {
        **TINY_SPEC,
        "name": "killed-driver",
        "hyperparameters": {**TINY_SPEC["hyperparameters"], "epochs": 6, "batch_size": 16},
        "budget": {"num_samples": 6, "max_concurrent": 2},
        "scheduler": {"type": "fifo"},
        "report": {"baselines": False},
        "storage": "store",  # relative: resume must find it from the run, not from its own folder
    }
    (tmp_path / "specs").mkdir()
    spec_path = tmp_path / "specs" / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict))
    driver = subprocess.Popen([FUSION_SEARCH, "run", str(spec_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=tmp_path, start_new_session=True)
    lines = []
    deadline = time.monotonic() + 300
    for line in driver.stdout:  # until two trials have finished
        lines.append(line)
        if "[2/6 done" in line or time.monotonic() > deadline:
            break
    assert "[2/6 done" in lines[-1], "".join(lines)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started die at once
    driver.wait()

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
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
    assert len(trials) == 6 and all(r.info.status == "FINISHED" for r in trials), [(r.data.tags.get("fusion_search.trial_id"), r.info.status) for r in trials]
    assert len({r.data.tags["fusion_search.trial_id"] for r in trials}) == 6, "no trial has two runs"
    study = optuna.load_study(study_name="killed-driver", storage=f"sqlite:///{tmp_path / 'store' / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert len(states) == 6 and all(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for s in states), states
    assert "champion" in resumed.stdout and "resuming 'killed-driver'" in resumed.stdout
    print(resumed.stdout)
