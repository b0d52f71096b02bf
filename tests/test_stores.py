"""A new SQLite MLflow store is a copy of an empty store migrated once per MLflow schema: the same
tables, indexes and schema revision as a store MLflow migrates itself, the Default experiment at
the new store's own artifact location, and nothing of an existing store touched. Real MLflow,
real SQLite files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from search.stores import SQLITE, new_mlflow_store


def contents(database: Path) -> tuple[list, dict[str, int]]:
    """Every table's, index's and trigger's definition, and each table's row count. A definition is
    compared line by line in any order: MLflow's own migration writes the two named CHECK
    constraints of ``runs`` in either order from one process to another."""
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
        schema = sorted(((kind, name, table, sorted(line.strip().rstrip(",") for line in (sql or "").splitlines())) for kind, name, table, sql in rows), key=str)
        tables = [name for kind, name, _, _ in schema if kind == "table"]
        rows = {name: connection.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in tables}
    return schema, rows


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "fusion-search"


def test_a_new_store_is_the_store_mlflow_would_make(tmp_path, cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    copied, migrated = tmp_path / "copied" / "mlflow.db", tmp_path / "migrated" / "mlflow.db"
    new_mlflow_store(SQLITE + str(copied))
    assert copied.exists() and len(list(cache.glob("mlflow-store-*.db"))) == 1
    clients = {name: MlflowClient(SQLITE + str(path)) for name, path in (("copied", copied), ("migrated", migrated))}
    assert contents(copied) == contents(migrated)
    assert {name: c.get_experiment("0").artifact_location for name, c in clients.items()} == {
        "copied": str(tmp_path / "mlruns" / "0"),
        "migrated": str(tmp_path / "mlruns" / "0"),
    }, "MLflow adds the Default experiment as it opens the copy, as it does in a store it migrates"
    run = clients["copied"].create_run(clients["copied"].create_experiment("after-the-copy"))
    clients["copied"].log_metric(run.info.run_id, "m", 1.0)
    assert clients["copied"].get_run(run.info.run_id).data.metrics == {"m": 1.0}


def test_the_empty_store_is_migrated_once_and_then_copied(tmp_path, cache):
    new_mlflow_store(SQLITE + str(tmp_path / "one" / "mlflow.db"))
    (template,) = cache.glob("mlflow-store-*.db")
    made = template.stat().st_mtime_ns
    new_mlflow_store(SQLITE + str(tmp_path / "two" / "mlflow.db"))
    assert list(cache.glob("mlflow-store-*.db")) == [template] and template.stat().st_mtime_ns == made
    assert not list(cache.glob(".mlflow-store-*")), "no half-made store left in the cache"
    assert contents(tmp_path / "one" / "mlflow.db") == contents(tmp_path / "two" / "mlflow.db")


def test_an_existing_store_and_a_server_are_left_to_mlflow(tmp_path, cache):
    url = SQLITE + str(tmp_path / "mlflow.db")
    client = MlflowClient(url)
    experiment = client.create_experiment("kept")
    new_mlflow_store(url)
    assert MlflowClient(url).get_experiment(experiment).name == "kept"
    new_mlflow_store("http://127.0.0.1:5000")
    assert not cache.exists(), "nothing made for a store that exists or for a server"


def test_a_cache_that_cannot_be_written_leaves_the_migration_to_mlflow(tmp_path, monkeypatch):
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-folder"))
    url = SQLITE + str(tmp_path / "store" / "mlflow.db")
    new_mlflow_store(url)
    assert not (tmp_path / "store" / "mlflow.db").exists()
    assert MlflowClient(url).get_experiment("0").name == "Default"
