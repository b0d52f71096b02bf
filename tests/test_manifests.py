"""The cluster manifests agree with the code: entrypoint, resources, environment, Ray version, shared storage."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import ray
import yaml

from cluster.jobs import ENTRYPOINT
from search.cli import parser
from search.spec import load_spec
from tests.conftest import TINY_SPEC

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"
RAYCLUSTER = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
RAYJOB = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
LAUNCHER = yaml.safe_load((CLUSTER / "launcher" / "aws-gpu.yaml").read_text())


def groups(cluster_spec: dict) -> list[dict]:
    return [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]


def containers(cluster_spec: dict) -> list[dict]:
    return [c for g in groups(cluster_spec) for c in g["template"]["spec"]["containers"]]


@pytest.mark.parametrize("cluster_spec", [RAYCLUSTER["spec"], RAYJOB["spec"]["rayClusterSpec"]], ids=["RayCluster", "RayJob"])
def test_kuberay_clusters(cluster_spec):
    assert cluster_spec["rayVersion"] == ray.__version__
    assert cluster_spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "the head runs the driver, not trials"
    uris = {e["value"] for c in containers(cluster_spec) for e in c["env"] if e["name"] == "MLFLOW_TRACKING_URI"}
    assert len(uris) == 1 and all(any(e["name"] == "MLFLOW_TRACKING_URI" for e in c["env"]) for c in containers(cluster_spec))
    for c in containers(cluster_spec):
        assert {"name": "shared", "mountPath": "/shared"} in c["volumeMounts"], "every node sees the shared storage"
    for worker in cluster_spec["workerGroupSpecs"]:
        limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert worker["rayStartParams"]["num-gpus"] == limits["nvidia.com/gpu"]
        assert worker["rayStartParams"]["num-cpus"] == limits["cpu"]


def test_rayjob_entrypoint_is_the_cli_the_jobs_api_uses(tmp_path):
    words = shlex.split(RAYJOB["spec"]["entrypoint"])
    assert words[:3] == ["python", "-m", "search.cli"] == shlex.split(ENTRYPOINT)[:3]
    args = parser().parse_args(words[3:])
    assert args.command == "run" and args.address == "auto" and args.spec == "/specs/spec.yaml"
    env = yaml.safe_load(RAYJOB["spec"]["runtimeEnvYAML"])["env_vars"]
    cluster_uri = {e["value"] for c in containers(RAYJOB["spec"]["rayClusterSpec"]) for e in c["env"]}
    assert {env["MLFLOW_TRACKING_URI"]} == cluster_uri
    # a spec without tracking.uri logs to the server the manifests name
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({**TINY_SPEC, "storage": str(tmp_path)}))
    assert load_spec(spec_path).tracked_at(env["MLFLOW_TRACKING_URI"]).tracking_uri == env["MLFLOW_TRACKING_URI"]
    named = load_spec(spec_path).tracked_at("http://elsewhere:5000")
    assert named.tracked_at(env["MLFLOW_TRACKING_URI"]).tracking_uri == "http://elsewhere:5000", "the spec's own uri wins"


def test_cluster_launcher():
    types = LAUNCHER["available_node_types"]
    assert LAUNCHER["head_node_type"] in types and types["head"]["resources"]["CPU"] == 0
    assert types["gpu_worker"]["resources"]["GPU"] >= 1
    starts = " ".join(LAUNCHER["head_start_ray_commands"] + LAUNCHER["worker_start_ray_commands"])
    assert starts.count("RAY_AUTH_MODE=token") == 2, "workers join a token-authenticated head"
    assert starts.count("fusion-search/.venv/bin:$PATH") == 2, "Ray Jobs find this project's venv"
    assert "--dashboard-host=127.0.0.1" in starts
    assert any("pip install" in c and "-e ." in c for c in LAUNCHER["setup_commands"])
    assert any("MLFLOW_TRACKING_URI" in c for c in LAUNCHER["setup_commands"])
