"""Searches of one spec, on one store, at the same time: the store survives its creation by several
processes at once, each search samples its own configurations, and the ``champion`` alias goes to
the better champion, not to whichever search finished last. Real SQLite stores, real MLflow and
Optuna, processes started together behind a barrier."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from search.cli import main
from search.spec.objectives import Goal, Objectives
from search.run.optuna_search import register_search
from search.spec.schema import BoundSpec, Spec, parse_spec
from search.stores import first_use
from search.run.record import move_champion_alias, open_experiment
from search.names import CHAMPION_ALIAS
from tests.conftest import TINY_SPEC

PROCESSES = 4


def together(target, args: tuple) -> list:
    """Run ``target(barrier, *args)`` in ``PROCESSES`` processes that start their work at the same
    moment (a barrier); returns their results, or fails with the first error."""
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(PROCESSES), context.Queue()
    processes = [context.Process(target=target, args=(barrier, results, *args)) for _ in range(PROCESSES)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in processes), [p.exitcode for p in processes]
    return [results.get(timeout=5) for _ in processes]


def open_store(barrier, results, storage: str) -> None:
    spec = parse_spec({**TINY_SPEC, "storage": storage}, Path(storage))
    barrier.wait()
    results.put(open_experiment(spec)[1])


def count_search(barrier, results, url: str) -> None:
    barrier.wait()
    with first_use(url):
        results.put(register_search(optuna.storages.RDBStorage(url), "same-spec", Objectives((Goal("val_log_loss", "min"),))))


def test_a_new_store_opened_by_several_searches_at_once(tmp_path, monkeypatch):
    """Without the lock, MLflow's migrations race: "table _alembic_tmp_... already exists", and
    the store is left unreadable. The store is a copy of an empty one that the first of them
    migrates (in a cache of its own here)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    experiments = together(open_store, (str(tmp_path / "store"),))
    assert len(set(experiments)) == 1, "one experiment, created once"
    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    assert client.get_experiment_by_name(TINY_SPEC["name"]).experiment_id == experiments[0]
    assert len(list((tmp_path / "cache" / "fusion-search").iterdir())) == 1, "one empty store, whole"


def test_searches_started_together_sample_with_their_own_seeds(tmp_path):
    """Each search of a study gets its own number (its sampler's seed is the spec's plus that
    number), so two started together do not run the same first configurations."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert sorted(together(count_search, (url,))) == list(range(PROCESSES))


def spec_for(tmp_path: Path) -> Spec:
    return parse_spec({**TINY_SPEC, "name": "alias-rule", "storage": str(tmp_path / "store")}, tmp_path)


def register(client: MlflowClient, name: str, val_log_loss: float, latency_ms: float = 1.0) -> str:
    """A search's parent run with its champion's validation score and latency, and a registered version of it."""
    experiment = client.get_experiment_by_name(name) or client.get_experiment(client.create_experiment(name))
    run = client.create_run(experiment.experiment_id)
    client.log_metric(run.info.run_id, "champion.val_log_loss", val_log_loss)
    client.log_metric(run.info.run_id, "champion.latency_ms_p95", latency_ms)
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    return str(client.create_model_version(name, f"runs:/{run.info.run_id}/champion", run.info.run_id).version)


def point(val_log_loss: float, latency_ms: float = 1.0) -> dict[str, float]:
    return {"best_val_log_loss": val_log_loss, "latency_ms_p95": latency_ms}


def test_champion_alias_moves_only_to_a_better_champion(tmp_path, capsys):
    spec = spec_for(tmp_path)
    client, _ = open_experiment(spec)
    first = register(client, spec.name, 1.79)
    assert move_champion_alias(client, spec, first, point(1.79))[0], "no alias yet"
    worse = register(client, spec.name, 1.92)
    moved, line = move_champion_alias(client, spec, worse, point(1.92))
    assert not moved and str(client.get_model_version_by_alias(spec.name, CHAMPION_ALIAS).version) == first
    assert f"stays on version {first}" in line and f"fusion-search promote alias-rule {worse}" in line
    better = register(client, spec.name, 1.5, latency_ms=9.0)
    assert move_champion_alias(client, spec, better, point(1.5, 9.0))[0]
    assert str(client.get_model_version_by_alias(spec.name, CHAMPION_ALIAS).version) == better
    # A search with a latency budget takes the alias from a holder that misses it, though better on validation.
    budgeted = spec.model_copy(update={"constraints": {"latency_ms_p95": BoundSpec(max=5.0)}})
    fast = register(client, spec.name, 1.7, latency_ms=2.0)
    assert move_champion_alias(client, budgeted, fast, point(1.7, 2.0))[0]
    assert str(client.get_model_version_by_alias(spec.name, CHAMPION_ALIAS).version) == fast

    uri = spec.tracking_uri
    assert main(["promote", spec.name, worse, "--tracking-uri", uri]) == 0, "the user's explicit choice"
    assert str(client.get_model_version_by_alias(spec.name, CHAMPION_ALIAS).version) == worse
    capsys.readouterr()
    assert main(["promote", spec.name, "99", "--tracking-uri", uri]) == 2
    assert capsys.readouterr().err.strip() == "error: no version '99' of registered model 'alias-rule' in this tracking store"


@pytest.mark.parametrize(
    "args,expected",
    [
        (["trials", "x", "--tracking-uri", "/a/plain/path"], "--tracking-uri: '/a/plain/path' is a path, not a URI"),
        (["best", "x", "--out", "o", "--storage", "mistyped"], "no MLflow store at"),
        (["trials", "x", "--tracking-uri", "http://127.0.0.1:9"], "MLflow store http://127.0.0.1:9 is unreachable"),
    ],
)
def test_read_only_commands_create_nothing_and_say_why_in_one_line(tmp_path, monkeypatch, capsys, args, expected):
    monkeypatch.chdir(tmp_path)
    for variable in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):  # the command bounds them itself
        monkeypatch.setenv(variable, "")
        monkeypatch.delenv(variable)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert list(tmp_path.iterdir()) == [], "no store, no folder"


def test_a_store_that_is_not_a_database_is_one_line(tmp_path, capsys):
    (tmp_path / "mlflow.db").write_text("not a database, only text")
    assert main(["trials", "x", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is unreadable: (sqlite3.DatabaseError) file is not a database" in err, err


def test_an_experiment_made_before_is_marked_as_model_training(tmp_path):
    """MLflow's UI opens an experiment without ``mlflow.experimentKind`` on its GenAI overview: a
    search marks the experiment it finds unmarked (made by hand, or by an earlier version)."""
    spec = spec_for(tmp_path)
    client, _ = open_experiment(spec)
    client.delete_experiment_tag(client.get_experiment_by_name(spec.name).experiment_id, "mlflow.experimentKind")
    assert "mlflow.experimentKind" not in client.get_experiment_by_name(spec.name).tags
    open_experiment(spec)
    assert client.get_experiment_by_name(spec.name).tags["mlflow.experimentKind"] == "custom_model_development"
