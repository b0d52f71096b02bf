"""The cluster manifests agree with the code: entrypoint, resources, environment, Ray version, shared storage."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import ray
import yaml

from cluster.jobs import ENTRYPOINT
from search.cli import parser
from search.errors import SpecError
from search.locations import ENVIRONMENT
from search.spec.schema import load_spec
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
    for c in containers(cluster_spec):
        assert {e["name"] for e in c["env"]} == set(ENVIRONMENT.values()), "each node names the server and storage the code reads"
    uris = {e["value"] for c in containers(cluster_spec) for e in c["env"] if e["name"] == "MLFLOW_TRACKING_URI"}
    assert len(uris) == 1
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
    for name in ("MLFLOW_TRACKING_URI", "FUSION_SEARCH_RAY_STORAGE"):
        assert {e["value"] for c in containers(RAYJOB["spec"]["rayClusterSpec"]) for e in c["env"] if e["name"] == name} == {env[name]}
    # a spec that leaves them empty logs to the server and stores to the bucket the manifests name
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({**TINY_SPEC, "storage": str(tmp_path)}))
    environ = {**env, "FUSION_SEARCH_STUDY_STORAGE": "postgresql://u:p@db/optuna"}  # from the Secret
    spec = load_spec(spec_path).with_environment(environ)
    assert (spec.tracking_uri, spec.tune_storage, spec.study_url) == (env["MLFLOW_TRACKING_URI"], env["FUSION_SEARCH_RAY_STORAGE"], environ["FUSION_SEARCH_STUDY_STORAGE"])
    spec_path.write_text(yaml.safe_dump({**TINY_SPEC, "storage": str(tmp_path), "tracking": {"uri": "http://elsewhere:5000"}, "ray_storage": "s3://mine"}))
    spec = load_spec(spec_path).with_environment(environ)
    assert (spec.tracking_uri, spec.tune_storage) == ("http://elsewhere:5000", "s3://mine"), "the spec's own fields win"


def test_bad_environment_value_names_the_variable(tmp_path):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({**TINY_SPEC, "storage": str(tmp_path)}))
    with pytest.raises(SpecError, match=r"^\$FUSION_SEARCH_RAY_STORAGE: 'ftp://x': Tune cannot store to ftp://"):
        load_spec(spec_path).with_environment({"FUSION_SEARCH_RAY_STORAGE": "ftp://x"})


def test_cluster_launcher():
    types = LAUNCHER["available_node_types"]
    assert LAUNCHER["head_node_type"] in types and types["head"]["resources"]["CPU"] == 0
    assert types["gpu_worker"]["resources"]["GPU"] >= 1
    starts = " ".join(LAUNCHER["head_start_ray_commands"] + LAUNCHER["worker_start_ray_commands"])
    assert starts.count("RAY_AUTH_MODE=token") == 2, "workers join a token-authenticated head"
    assert starts.count("fusion-search/.venv/bin:$PATH") == 2, "Ray Jobs find this project's venv"
    assert "--dashboard-host=127.0.0.1" in starts
    assert any("pip install" in c and '-e ".[cluster]"' in c for c in LAUNCHER["setup_commands"]), "PostgreSQL and S3 clients"
    for variable in ENVIRONMENT.values():
        assert any(f"export {variable}=" in c for c in LAUNCHER["setup_commands"]), variable
