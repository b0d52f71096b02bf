"""A search logs to a real MLflow tracking server on 127.0.0.1 (SQLite backend, artifacts served by the
server), and its champion loads back through the server."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from cluster.local import free_port
from cluster.mlflow_server import TrackingServer
from search.cli import main
from search.run.preflight import load_data
from search.spec.schema import load_spec
from tests.conftest import TINY_SPEC
from tests.services import Output

pytestmark = pytest.mark.slow
FUSION_SEARCH = str(Path(sys.executable).parent / "fusion-search")


def test_search_logs_to_a_tracking_server(tmp_path):
    server = TrackingServer(f"sqlite:///{tmp_path / 'server.db'}", str(tmp_path / "served"), port=free_port(), log=tmp_path / "server.log")
    with server:
        spec_path = tmp_path / "spec.yaml"
        spec = {**TINY_SPEC, "name": "served", "budget": {"num_samples": 2, "max_concurrent": 2}, "report": {"baselines": False}}
        spec_path.write_text(yaml.safe_dump({**spec, "storage": str(tmp_path / "store"), "tracking": {"uri": server.uri}}))
        try:
            assert main(["run", str(spec_path)]) == 0
        finally:
            ray.shutdown()
        client = MlflowClient(server.uri)
        runs = client.search_runs([client.get_experiment_by_name("served").experiment_id])
        assert sorted(r.data.tags["fusion_search.role"] for r in runs) == ["search", "trial", "trial"]
        assert not (tmp_path / "store" / "mlflow.db").exists(), "nothing went to the local store"
        mlflow.set_tracking_uri(server.uri)
        model = mlflow.pyfunc.load_model("models:/served@champion")
        test = load_data(load_spec(spec_path)).splits["test"]
        assert model.predict({k: v.numpy() for k, v in test.inputs.items()}).shape == (len(test), 10)
    assert list((tmp_path / "served").rglob("MLmodel")), "the server stored the artifacts"


def test_search_outlives_a_tracking_server_outage(tmp_path):
    """The server goes down mid-search and comes back: the search finishes, and no trial record is lost."""
    backend, artifacts, port = f"sqlite:///{tmp_path / 'server.db'}", str(tmp_path / "served"), free_port()
    server = TrackingServer(backend, artifacts, port=port, log=tmp_path / "first.log").start()
    spec = {
        **TINY_SPEC,
        "name": "outage",
        "hyperparameters": {**TINY_SPEC["hyperparameters"], "epochs": 4, "batch_size": 16},
        "budget": {"num_samples": 6, "max_concurrent": 2},
        "scheduler": {"type": "fifo"},
        "report": {"baselines": False},
        "storage": str(tmp_path / "store"),
        "tracking": {"uri": server.uri},
    }
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    driver = subprocess.Popen([FUSION_SEARCH, "run", str(spec_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    output = Output(driver)
    try:
        output.until("[1/6 done", timeout_s=300)
        server.stop()  # the tracking server goes away with trials running
        output.until("MLflow unreachable", timeout_s=120)
        time.sleep(3)
        server = TrackingServer(backend, artifacts, port=port, log=tmp_path / "second.log").start()
        output.until(None, timeout_s=300)
        assert driver.wait(60) == 0, "".join(output.lines[-40:])
    finally:
        if driver.poll() is None:
            driver.kill()
        server.stop()
    output = output.text
    assert "MLflow unreachable" in output and "records caught up" in output, output[-3000:]
    with TrackingServer(backend, artifacts, port=port, log=tmp_path / "third.log") as server:
        client = MlflowClient(server.uri)
        runs = client.search_runs([client.get_experiment_by_name("outage").experiment_id])
        trials = [r for r in runs if r.data.tags.get("fusion_search.role") == "trial"]
        assert len(trials) == 6 and all(r.info.status == "FINISHED" for r in trials)
        for run in trials:
            assert len(client.get_metric_history(run.info.run_id, "val_log_loss")) == 4, "every epoch's record arrived"
