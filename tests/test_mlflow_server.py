"""A search logs to a real MLflow tracking server on 127.0.0.1 (SQLite backend, artifacts served by the
server), and its champion loads back through the server."""

from __future__ import annotations

import mlflow
import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from cluster.local import free_port
from cluster.mlflow_server import TrackingServer
from search.cli import main
from search.preflight import load_data
from search.spec import load_spec
from tests.conftest import TINY_SPEC

pytestmark = pytest.mark.slow


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
