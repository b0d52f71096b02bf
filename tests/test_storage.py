"""Where a search keeps its state: a storage folder, Tune's storage (a folder or an S3 URI) and the
Optuna study's database. Each is checked before any trial, in one line that names the field."""

from __future__ import annotations

import boto3
import optuna
import pytest
from optuna.trial import TrialState

from search.cli import main
from search.spec.objectives import Goal, Objectives
from search.run.optuna_search import PruneAwareOptunaSearch, fail_running
from search.spec.schema import load_spec


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "field,value,expected",
    [
        ("ray_storage", "ftp://host/runs", "ray_storage: 'ftp://host/runs': Tune cannot store to ftp:// (use a folder or one of: s3,"),
        ("ray_storage", "s3://", "ray_storage: 's3://': name a bucket or folder after s3://"),
        ("study_storage", "optuna.db", "study_storage: not a database URL"),
    ],
)
def test_bad_storage_fields(spec_dict, write_spec, capsys, field, value, expected):
    spec_dict[field] = value
    path = write_spec(spec_dict)
    assert main(["validate", str(path)]) == 2
    err = error_line(capsys)
    assert expected in err and str(path) in err


def test_storage_fields_as_written(spec_dict, write_spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(write_spec(spec_dict))
    assert spec.tune_storage == str(tmp_path / "fusion_runs" / "ray_results")
    assert spec.study_url == f"sqlite:///{tmp_path / 'fusion_runs' / 'optuna.db'}"
    spec_dict.update(ray_storage="shared/tune", study_storage="postgresql://fs@db/optuna")
    spec = load_spec(write_spec(spec_dict))
    assert spec.tune_storage == str(tmp_path / "shared" / "tune"), "a folder is relative to the working directory"
    assert spec.study_url == "postgresql://fs@db/optuna"
    spec_dict["ray_storage"] = "s3://bucket/prefix/"
    assert load_spec(write_spec(spec_dict)).tune_storage == "s3://bucket/prefix"


def test_unwritable_storage_folder(spec_dict, write_spec, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    spec_dict["storage"] = str(tmp_path / "a-file" / "store")
    assert main(["validate", str(write_spec(spec_dict))]) == 2
    assert f"storage: cannot create {tmp_path / 'a-file' / 'store'}: {tmp_path / 'a-file'} is a file" in error_line(capsys)


def test_refused_study_database_hides_the_password(spec_dict, write_spec, tmp_path, capsys):
    spec_dict.update(storage=str(tmp_path / "store"), study_storage="postgresql://fs:secret@127.0.0.1:1/optuna")
    assert main(["validate", str(write_spec(spec_dict))]) == 2
    err = error_line(capsys)
    assert "study_storage: cannot open postgresql://fs:***@127.0.0.1:1/optuna:" in err and "secret" not in err


def test_s3_ray_storage_is_checked_and_left_clean(spec_dict, write_spec, tmp_path, capsys, s3_bucket):
    spec_dict.update(storage=str(tmp_path / "store"), ray_storage=f"{s3_bucket}/tune")
    assert main(["validate", str(write_spec(spec_dict))]) == 0
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="runs").get("Contents", [])]
    assert keys in ([], ["tune/"]), "the test write was deleted (pyarrow may keep an empty folder marker)"
    assert not (tmp_path / "store").exists(), "validate creates nothing"
    capsys.readouterr()
    spec_dict["ray_storage"] = "s3://no-such-bucket/tune"
    assert main(["validate", str(write_spec(spec_dict))]) == 2
    assert "ray_storage: cannot write to s3://no-such-bucket/tune:" in error_line(capsys)


def test_study_on_postgresql(spec_dict, write_spec, tmp_path, postgres_url, capsys):
    spec_dict.update(storage=str(tmp_path / "store"), study_storage=f"{postgres_url}/optuna")
    assert main(["validate", str(write_spec(spec_dict))]) == 0
    spec_dict["study_storage"] = f"{postgres_url}/no_such_database"
    assert main(["validate", str(write_spec(spec_dict))]) == 2
    assert 'database "no_such_database" does not exist' in error_line(capsys)


def test_lost_trials_are_failed_and_finished_ones_kept():
    """After a resume: trials the dead driver left RUNNING fail; a trial Optuna already finished
    keeps its value when Tune replays it from an older checkpoint."""
    space = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    objectives = Objectives((Goal("loss", "min"),))
    searcher = PruneAwareOptunaSearch(space=space, objectives=objectives, search_run="a-run", sampler=optuna.samplers.RandomSampler(seed=0))
    study = searcher._ot_study
    searcher.suggest("done")
    searcher.on_trial_result("done", {"training_iteration": 1, "loss": 0.5})
    searcher.on_trial_complete("done", {"training_iteration": 1, "loss": 0.5, "epoch": 1, "planned_epochs": 1})
    searcher._last_step.clear()  # as restored from a snapshot taken before it finished
    searcher.on_trial_result("done", {"training_iteration": 1, "loss": 0.4})
    searcher.on_trial_complete("done", {"training_iteration": 1, "loss": 0.4, "epoch": 1, "planned_epochs": 1})
    searcher.on_trial_result("unknown", {"training_iteration": 1, "loss": 0.3})  # newer than the searcher's snapshot
    study.ask()  # started by the dead driver, restored by nobody
    assert fail_running(study) == [1]
    assert [(t.state, t.value) for t in study.trials] == [(TrialState.COMPLETE, 0.5), (TrialState.FAIL, None)]
