"""Passwords in database and server URLs are never printed or logged: not in one-line errors, not in
the closing lines of a search, not in the spec MLflow keeps, nor anywhere in MLflow's store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from search import cli
from search.cli import main
from search.locations import redact
from tests.conftest import TINY_SPEC

SECRET = "hunter2"


@pytest.mark.parametrize(
    "text,shown",
    [
        ("postgresql://fs:hunter2@127.0.0.1:5432/optuna", "postgresql://fs:***@127.0.0.1:5432/optuna"),
        ("http://user:hunter2@host:5000", "http://user:***@host:5000"),
        ("postgresql+psycopg://u:hun/ter2@h/db?sslmode=require&password=hunter2", "postgresql+psycopg://u:***@h/db?sslmode=require&password=***"),
        ("s3://bucket/x?access_key=AK&secret_key=hunter2", "s3://bucket/x?access_key=***&secret_key=***"),
        ("error at 'mysql://a:hunter2@c/d' (refused)", "error at 'mysql://a:***@c/d' (refused)"),
        ("sqlite:////a/b.db and http://host:5000/x", "sqlite:////a/b.db and http://host:5000/x"),
    ],
)
def test_redact_hides_passwords_and_keeps_the_rest(text, shown):
    assert redact(text) == shown


@pytest.mark.parametrize("url", ["postgresql//fs:hunter2@db/optuna", "fs:hunter2@db"])
def test_a_mistyped_database_url_is_not_echoed(spec_dict, write_spec, capsys, monkeypatch, url):
    spec_dict["study_storage"] = url
    assert main(["validate", str(write_spec(spec_dict))]) == 2
    spec_dict.pop("study_storage")
    monkeypatch.setitem(cli.USER_ENVIRONMENT, "FUSION_SEARCH_STUDY_STORAGE", url)
    assert main(["validate", str(write_spec(spec_dict))]) == 2
    err = capsys.readouterr().err
    assert err.count("not a database URL") == 2 and SECRET not in err, err


@pytest.mark.slow
def test_a_search_with_a_password_in_its_spec_keeps_it_out_of_mlflow_and_the_terminal(tmp_path, postgres_url):
    """The server trusts local connections, so any password opens it: the search runs for real."""
    with_password = postgres_url.replace("postgresql://fs@", f"postgresql://fs:{SECRET}@")
    spec = {**TINY_SPEC, "name": "secret-search", "budget": {"num_samples": 1}, "report": {"baselines": False}}
    spec.update(storage=str(tmp_path / "store"), study_storage=f"{with_password}/optuna")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    done = subprocess.run(
        [str(Path(sys.executable).parent / "fusion-search"), "run", str(path)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert SECRET not in done.stdout + done.stderr

    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("secret-search").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("fusion_search.role") == "search")
    logged = Path(client.download_artifacts(parent.info.run_id, "spec.yaml", str(tmp_path))).read_text()
    assert "postgresql://fs:***@127.0.0.1" in logged and SECRET not in logged
    for run in runs:
        assert SECRET not in str(run.data.params) + str(run.data.tags)
    stored = [p for p in (tmp_path / "store").rglob("*") if p.is_file() and "ray_results" not in p.parts]
    assert stored and not [p for p in stored if SECRET.encode() in p.read_bytes()], "MLflow's database and artifacts"
