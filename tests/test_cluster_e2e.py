"""A real 1-head + 2-worker Ray cluster on this machine (separate ``ray start`` processes, token auth):
a search attached with ``--address`` spreads its trials over both workers, and still finishes when one
worker is SIGKILLed mid-search (its trial is retried from its checkpoint on the other).

The driver runs as its own process, as a user's would, so this test process never joins the cluster."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from cluster.local import LocalCluster, NodeSpec
from search.locations import default_tracking_uri
from search.spec.schema import load_spec
from tests.conftest import TINY_SPEC

pytestmark = pytest.mark.slow
FUSION_SEARCH = str(Path(sys.executable).parent / "fusion-search")


def cluster_spec(root: Path) -> Path:
    spec = {
        **TINY_SPEC,
        "name": "on-a-cluster",
        "hyperparameters": {**TINY_SPEC["hyperparameters"], "epochs": 8, "batch_size": 16},
        "budget": {"num_samples": 6, "max_concurrent": 2},
        "scheduler": {"type": "fifo"},
        "max_failures": 3,
        "report": {"baselines": False},
        "storage": str(root / "store"),
    }
    path = root / "cluster.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def follow(process: subprocess.Popen, lines: list[str]) -> threading.Thread:
    def read() -> None:
        for line in process.stdout:
            lines.append(line)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def wait_for_trial_on(spec, node: str, process: subprocess.Popen, lines: list[str], timeout_s: float) -> None:
    """Until a trial that has reported its first epoch, and not its last, is running on ``node`` (read from MLflow)."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, "".join(lines[-30:])
        assert time.monotonic() < deadline, "no trial ran on the second worker:\n" + "".join(lines[-30:])
        client = MlflowClient(spec.tracking_uri)
        experiment = client.get_experiment_by_name(spec.name)
        if experiment is not None:
            running = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
            if any(r.data.tags.get("fusion_search.node_ids") == node and r.data.metrics.get("best_epoch", 99) <= 5 for r in running):
                return
        time.sleep(0.3)


def test_search_spreads_over_workers_and_survives_a_dead_worker(tmp_path):
    spec_path = cluster_spec(tmp_path)
    workers = [NodeSpec(1, resources={"worker": 1}), NodeSpec(1, resources={"worker": 1, "second": 1})]
    with LocalCluster(tmp_path / "cluster", NodeSpec(0), workers) as cluster:  # the head runs no trial
        nodes = cluster.alive_nodes()
        worker_ids = {n["node_id"] for n in nodes if n["resources_total"].get("worker")}
        second = next(n["node_id"] for n in nodes if n["resources_total"].get("second"))
        assert len(worker_ids) == 2
        driver = subprocess.Popen(
            [FUSION_SEARCH, "run", str(spec_path), "--address", cluster.address],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        )
        lines: list[str] = []
        reader = follow(driver, lines)
        try:
            wait_for_trial_on(load_spec(spec_path), second, driver, lines, 300)
            cluster.kill_worker(2)  # the second worker's machine fails mid-trial
            assert driver.wait(400) == 0, "".join(lines[-40:])
        finally:
            if driver.poll() is None:
                driver.kill()
        reader.join(10)

    spec = load_spec(spec_path)
    client = MlflowClient(spec.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(spec.name).experiment_id], max_results=100)
    trials = [r for r in runs if r.data.tags.get("fusion_search.role") == "trial"]
    assert len(trials) == 6 and all(r.info.status == "FINISHED" for r in trials)
    used = {node for r in trials for node in r.data.tags["fusion_search.node_ids"].split(",")}
    assert used == worker_ids, "trials ran on both workers and nowhere else"
    moved = [r for r in trials if len(r.data.tags["fusion_search.node_ids"].split(",")) == 2]
    assert len(moved) == 1, "the trial on the killed worker was retried on the other, in the same MLflow run:\n" + "".join(lines)
    study = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{spec.storage / 'optuna.db'}")
    assert len(study.trials) == 6
    assert any("champion" in line for line in lines)


def test_submit_as_a_ray_job_then_status_and_best(tmp_path):
    """``submit`` ships the code and the spec as a Ray Job and follows it; ``status`` and ``best`` read the result."""
    spec_path = cluster_spec(tmp_path)
    raw = yaml.safe_load(spec_path.read_text())
    raw.update(name="submitted", budget={"num_samples": 2, "max_concurrent": 2}, storage="store")  # relative to where `submit` runs
    spec_path.write_text(yaml.safe_dump(raw))
    with LocalCluster(tmp_path / "cluster", NodeSpec(0), [NodeSpec(1), NodeSpec(1)]) as cluster:
        run = [FUSION_SEARCH, "submit", str(spec_path), "--address", cluster.dashboard_url]
        done = subprocess.run(run, capture_output=True, text=True, cwd=tmp_path, timeout=400)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        job_id = done.stdout.split("submitted job ", 1)[1].split()[0]
        assert "champion" in done.stdout, "the job's logs were followed to the end"
        status = subprocess.run([FUSION_SEARCH, "status", job_id, "--address", cluster.dashboard_url], capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and status.stdout.strip() == "SUCCEEDED", status.stderr

        again = subprocess.run([*run, "--no-follow"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert again.returncode == 0, again.stderr
        second = again.stdout.split("submitted job ", 1)[1].split()[0]
        stopped = subprocess.run([FUSION_SEARCH, "stop", second, "--address", cluster.dashboard_url], capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 0 and "stop requested" in stopped.stdout, stopped.stdout + stopped.stderr
        deadline = time.monotonic() + 120
        while (state := subprocess.run([FUSION_SEARCH, "status", second, "--address", cluster.dashboard_url],
                                       capture_output=True, text=True, timeout=60, check=True).stdout.strip()) != "STOPPED":
            assert time.monotonic() < deadline and state in ("PENDING", "RUNNING"), state
            time.sleep(1)

    tracking_uri = default_tracking_uri(tmp_path / "store")  # the job wrote where the submitter stood
    best = [FUSION_SEARCH, "best", "submitted", "--tracking-uri", tracking_uri, "--out", str(tmp_path / "champion")]
    fetched = subprocess.run(best, capture_output=True, text=True, timeout=120)
    assert fetched.returncode == 0, fetched.stderr
    assert list((tmp_path / "champion").rglob("MLmodel"))
