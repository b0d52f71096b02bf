"""Regression: the task inferred from the labels (or said by the spec), targets split by quantile,
values pooled and stacked by the operators, RMSE / MAE / R² against scikit-learn, and a search whose
champion beats predicting the training mean and is served as values."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from search.errors import SpecError
from search.names import CANDIDATES_FILE, PREDICTED
from search.run.preflight import load_data
from search.spec.schema import Spec, load_spec
from tests.conftest import run_search_in
from trainables.data import load_dataset, split_rows
from trainables.composite import fusion_loss
from trainables.fusion import FusionOutput, build_operator, fit_ridge
from trainables.metrics import quality_metrics
from trainables.sources import SourceOptions


def homes(rows: int = 400, seed: int = 0) -> pd.DataFrame:
    """Prices from a size, a number of rooms and a city (the table) and a sea view (only the text says it)."""
    rng = np.random.default_rng(seed)
    size, rooms = rng.uniform(20, 120, rows), rng.integers(1, 6, rows)
    city = rng.choice(["oslo", "bergen", "tromso"], rows)
    view = rng.random(rows) < 0.3
    price = 3 * size + 20 * rooms + pd.Series(city).map({"oslo": 100, "bergen": 50, "tromso": 0}).to_numpy() + 80 * view + rng.normal(0, 15, rows)
    return pd.DataFrame({
        "size": size.round(1), "rooms": rooms, "city": city, "note": np.where(view, "sea view, bright rooms", "quiet street"), "price": price.round(1),
    })


def options(path, **overrides) -> SourceOptions:
    settings = {"path": path, "images": (), "texts": (("text", "note"),), "numeric": ("size", "rooms"), "categorical": ("city",), "label_column": "price"}
    return SourceOptions(**{**settings, **overrides})


def test_numeric_labels_with_fractions_or_many_values_are_a_regression(tmp_path):
    homes().to_csv(tmp_path / "h.csv", index=False)
    data = load_dataset("manifest", options(tmp_path / "h.csv"), 0.2, 0.2, seed=0)
    assert data.task == "regression" and data.class_names == [] and data.outputs == 1
    assert data.splits["train"].labels.dtype == torch.float32
    train = data.splits["train"].labels.double()
    assert data.target == pytest.approx([float(train.mean()), float(train.std(unbiased=False))])
    homes().assign(price=lambda f: (f["price"] > 300).astype(int)).to_csv(tmp_path / "b.csv", index=False)
    assert load_dataset("manifest", options(tmp_path / "b.csv"), 0.2, 0.2, seed=0).task == "binary"
    homes().assign(price=lambda f: f["rooms"]).to_csv(tmp_path / "m.csv", index=False)
    assert load_dataset("manifest", options(tmp_path / "m.csv"), 0.2, 0.2, seed=0).task == "multiclass", "five integer values: classes"


@pytest.mark.parametrize(
    "change, task, message",
    [
        (lambda f: f.assign(price=f["price"].astype(object).where(f.index != 4, "cheap")), "regression", "row 5: the label 'cheap' is not a number (task: regression)"),
        (lambda f: f.assign(price=f["price"].astype(object).where(f.index != 2, "inf")), None, "row 3: the label is inf (task: regression needs finite numbers)"),
        (lambda f: f.assign(price=f["rooms"] % 3), "binary", "task: binary, but the label column has 3 classes (0, 1, 2)"),
        (lambda f: f.assign(price=7.5), "regression", "every row has the target 7.5: there is nothing to predict"),
    ],
    ids=["text label", "infinite target", "binary with three classes", "one target"],
)
def test_bad_targets_are_named(tmp_path, change, task, message):
    change(homes()).to_csv(tmp_path / "h.csv", index=False)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_dataset("manifest", options(tmp_path / "h.csv", task=task), 0.2, 0.2, seed=0)


def test_regression_splits_are_stratified_by_quantile():
    targets = np.random.default_rng(0).lognormal(0, 1, 500).astype(np.float32)
    train, val, test = split_rows(targets, None, 0.2, 0.2, 0, [])
    for rows in (val, test):
        assert abs(np.median(targets[rows]) - np.median(targets)) < 0.15 * np.median(targets), "each split spans the targets"


def test_regression_metrics_are_scikit_learns():
    rng = np.random.default_rng(1)
    truth, predicted = rng.normal(size=50), rng.normal(size=50)
    metrics = quality_metrics(torch.from_numpy(predicted[:, None]), torch.from_numpy(truth), "val")
    assert metrics == pytest.approx({
        "val_rmse": mean_squared_error(truth, predicted) ** 0.5, "val_mae": mean_absolute_error(truth, predicted), "val_r2": r2_score(truth, predicted),
    })
    constant = np.full(50, 2.0)
    for guess in (constant, predicted):  # constant targets: scikit-learn's finite R^2, 1 for an exact prediction, else 0
        r2 = quality_metrics(torch.from_numpy(guess[:, None]), torch.from_numpy(constant), "val")["val_r2"]
        assert r2 == r2_score(constant, guess)


def test_values_pool_as_weighted_means_and_stack_by_ridge():
    weighted = build_operator("weighted", [4, 6], 1, 0.0, {"pool": "linear", "weight": [0.25, 0.75]})
    features = [torch.randn(5, 4), torch.randn(5, 6)]
    out = weighted(features)
    heads = [head(f) for head, f in zip(weighted.heads, features, strict=True)]
    assert torch.allclose(out.logits, 0.25 * heads[0] + 0.75 * heads[1], atol=1e-6), "a weighted mean of the members' values"
    x, y = torch.randn(200, 3), torch.randn(200)
    weight, bias = fit_ridge(x, y, 0.01)
    reference = Ridge(alpha=0.01 * 200).fit(x.numpy(), y.numpy())
    assert np.allclose(weight.numpy()[0], reference.coef_, atol=1e-4) and bias.item() == pytest.approx(reference.intercept_, abs=1e-4)


def test_a_regression_refuses_classification_metrics_and_class_weights(tmp_path):
    homes().to_csv(tmp_path / "h.csv", index=False)
    base = {
        "name": "homes", "data": {"source": "manifest", "path": str(tmp_path / "h.csv"), "columns": {"image": None, "text": "note", "numeric": ["size", "rooms"], "label": "price"}},
        "members": [{"name": "tab", "kind": "tabular", "input": "table"}], "fusion": {"operators": {"weighted": {}}}, "budget": {"num_samples": 1},
    }
    assert Spec.model_validate({**base, "task": "regression"}).objective[0].metric == "val_rmse", "a regression's default objective"
    assert Spec.model_validate(base).for_task("regression").objective[0].metric == "val_rmse", "inferred: the same default"
    with pytest.raises(SpecError, match=r"objective\[0\].metric: val_accuracy does not apply to the task, regression \(use val_rmse, val_mae, val_r2\)"):
        load_data(Spec.model_validate({**base, "objective": {"metric": "val_accuracy"}}))
    with pytest.raises(SpecError, match="hyperparameters.class_weight: balanced weighs classes, and the task is regression"):
        load_data(Spec.model_validate({**base, "hyperparameters": {"class_weight": ["none", "balanced"]}}))
    classes = {**base, "data": {**base["data"], "columns": {**base["data"]["columns"], "label": "city", "numeric": ["size"]}}}
    with pytest.raises(SpecError, match="hyperparameters.loss: a regression's loss, and the task is multiclass"):
        load_data(Spec.model_validate({**classes, "hyperparameters": {"loss": "huber"}}))


def test_huber_loss_is_quadratic_within_one_standard_deviation_and_linear_beyond():
    out = FusionOutput(torch.tensor([[0.5], [3.0]]))
    targets = torch.zeros(2)
    assert fusion_loss(out, targets, regression_loss="huber").item() == pytest.approx((0.5 * 0.5**2 + (3.0 - 0.5)) / 2)
    assert fusion_loss(out, targets).item() == pytest.approx((0.5**2 + 3.0**2) / 2)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tiny_hf_dir):
    root = tmp_path_factory.mktemp("regression")
    homes().to_csv(root / "homes.csv", index=False)
    spec = {
        "name": "homes",
        "seed": 0,
        "data": {"source": "manifest", "path": str(root / "homes.csv"), "columns": {"image": None, "text": "note", "numeric": ["size", "rooms"], "categorical": "city", "label": "price"}},
        "members": [
            {"name": "table_mlp", "kind": "tabular", "input": "table", "params": {"hidden": 32, "layers": 2}},
            {"name": "trees", "kind": "boosted_trees", "input": "table", "train": "frozen", "params": {"rounds": 100}},
            {"name": "words", "kind": "hf_text", "input": "text", "params": {"model": str(tiny_hf_dir), "max_length": 8}, "train": "frozen"},
        ],
        "fusion": {"operators": {"weighted": {}, "concat_mlp": {}, "stacking": {}}},
        "hyperparameters": {"lr": 0.01, "epochs": 25, "batch_size": 32, "loss": ["mse", "huber"]},
        "budget": {"num_samples": 8, "max_concurrent": 2},
        "scheduler": {"type": "fifo"},
        "resources": {"cpu": 1},
    }
    return load_spec(run_search_in(root, spec, "homes.yaml"))


def parent_artifact(spec: Spec, name: str, tmp_path) -> dict:
    client = MlflowClient(spec.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(spec.name).experiment_id])
    parent = next(r for r in runs if r.data.tags.get("fusion_search.role") == "search")
    return json.loads(open(client.download_artifacts(parent.info.run_id, name, str(tmp_path))).read())


@pytest.mark.slow
def test_the_champion_beats_the_training_mean_and_every_member_alone(searched, tmp_path):
    candidates = parent_artifact(searched, CANDIDATES_FILE, tmp_path)["candidates"]
    champion = next(c for c in candidates if c["champion"])
    alone = [c["best_val_rmse"] for c in candidates if c["candidate"].endswith(" alone")]
    assert alone and champion["best_val_rmse"] <= min(alone)
    predicted = parent_artifact(searched, PREDICTED, tmp_path)
    truth, values = np.array(predicted["true"]), np.array(predicted["predicted"])
    data = load_data(searched)
    mean = float(data.splits["train"].labels.mean())
    assert np.sqrt(((values - truth) ** 2).mean()) < 0.5 * np.sqrt(((mean - truth) ** 2).mean()), "far better than the training mean"


@pytest.mark.slow
def test_the_served_champion_predicts_values(searched):
    mlflow.set_tracking_uri(searched.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/homes@champion")
    frame = homes(5, seed=9).drop(columns=["price"]).rename(columns={"note": "text"})  # one text column is the input "text"
    values = model.predict(frame)
    assert values.shape == (5, 1) and np.isfinite(values).all()
    assert model.metadata.signature.outputs.inputs[0].name == "prediction"
    with pytest.raises(Exception, match="'classes' is for classifiers; this model predicts a value"):
        model.predict(frame, params={"output": "classes"})


@pytest.mark.slow
def test_boosted_trees_are_served_from_their_own_files(tmp_path):
    """A champion of boosted trees alone loads through MLflow from its LightGBM text files (the
    folder they were fitted into is gone by then) and predicts a new frame."""
    import shutil

    homes().to_csv(tmp_path / "homes.csv", index=False)
    spec = {
        "name": "trees-only", "seed": 0,
        "data": {"source": "manifest", "path": str(tmp_path / "homes.csv"), "columns": {"image": None, "text": None, "numeric": ["size", "rooms"], "categorical": "city", "label": "price"}},
        "members": [{"name": "trees", "kind": "boosted_trees", "input": "table", "train": "frozen", "params": {"rounds": 50}}],
        "fusion": {"operators": {"weighted": {}}},
        "hyperparameters": {"lr": 0.01, "epochs": 3, "batch_size": 32},
        "budget": {"num_samples": 1}, "scheduler": {"type": "fifo"}, "resources": {"cpu": 1}, "measure_cost": False,
        "weight_fusion": {"soups": False, "merges": [], "checkpoint_average": 0},
    }
    loaded = load_spec(run_search_in(tmp_path, spec, "trees.yaml"))
    shutil.rmtree(loaded.storage / "fitted")
    mlflow.set_tracking_uri(loaded.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/trees-only@champion")
    values = model.predict(homes(4, seed=3)[["size", "rooms", "city"]])
    assert values.shape == (4, 1) and np.isfinite(values).all()
    assert any(r.startswith("lightgbm==") for r in open(mlflow.pyfunc.get_model_dependencies("models:/trees-only@champion")).read().split())
