"""Numeric and categorical columns: read into one ``table`` input, statistics fitted on the training
split only, prepared for the ``tabular`` member, served from a DataFrame, and bad cells named; the
``boosted_trees`` member's out-of-fold features and its saved boosters."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from search.spec.schema import Spec
from trainables.boosted_trees import design_matrix, fit_boosted
from trainables.composite import CompositeDescription, CompositeModel, MemberDescription, load_composite, save_composite
from trainables.data import load_dataset
from trainables.members import BuildContext, build_member, with_defaults
from trainables.preprocess import Table, TablePrep, fit_table
from trainables.pyfunc_model import raw_inputs
from trainables.registry import IntRange
from trainables.sources import SourceOptions


def write_table(path, rows: int = 30) -> pd.DataFrame:
    """Rows with two numeric and two categorical columns, a missing value of each kind, a split column."""
    frame = pd.DataFrame({
        "price": [str(10.0 + i) for i in range(rows)],
        "age": [str(i % 7) for i in range(rows)],
        "brand": [["acme", "bolt", "crux"][i % 3] for i in range(rows)],
        "country": [["de", "fr"][i % 2] for i in range(rows)],
        "kind": [["a", "b"][i % 2] for i in range(rows)],
        "split": [["train", "train", "train", "val", "test"][i % 5] for i in range(rows)],
    })
    frame.loc[0, "price"] = ""  # rows 1 and 2 (train) miss a number and a category
    frame.loc[1, "brand"] = ""
    frame.to_csv(path, index=False)
    return frame


def table_options(path, **overrides) -> SourceOptions:
    settings = {
        "path": path, "images": (), "texts": (), "numeric": ("price", "age"), "categorical": ("brand", "country"),
        "label_column": "kind", "split_column": "split",
    }
    return SourceOptions(**{**settings, **overrides})


def test_numeric_and_categorical_columns_are_one_table_input(tmp_path):
    write_table(tmp_path / "t.csv")
    data = load_dataset("manifest", table_options(tmp_path / "t.csv"), 0.2, 0.2, seed=0)
    table = data.splits["train"].inputs["table"]
    assert isinstance(table, Table) and table.numeric == ("price", "age") and table.categorical == ("brand", "country")
    assert data.inputs["table"].kind == "table" and data.inputs["table"].shape == [2, 2]
    assert len(table) == 18 and math.isnan(table.numbers[0, 0]) and table.categories[1, 0] is None, "missing: NaN, None"
    assert table.numbers[1].tolist() == [11.0, 1.0] and table.categories[0].tolist() == ["acme", "de"]


def test_statistics_come_from_the_training_split_only(tmp_path):
    frame = write_table(tmp_path / "t.csv")
    before = load_dataset("manifest", table_options(tmp_path / "t.csv"), 0.2, 0.2, seed=0).inputs["table"].table
    train = frame[frame["split"] == "train"]
    prices = pd.to_numeric(train["price"], errors="coerce").dropna()
    assert before["numeric"]["price"] == pytest.approx([prices.mean(), prices.std(ddof=0)])
    test_row = int(np.flatnonzero(frame["split"] == "test")[0])
    frame.loc[test_row, "price"] = "100000"
    frame.loc[test_row, "brand"] = "zeta"
    frame.to_csv(tmp_path / "t.csv", index=False)
    after = load_dataset("manifest", table_options(tmp_path / "t.csv"), 0.2, 0.2, seed=0).inputs["table"].table
    assert after == before, "a test-split value changes no fitted statistic"


def test_preparation_standardises_flags_missing_and_indexes_unseen_categories():
    table = Table(("x",), ("c",), np.array([[1.0], [3.0], [np.nan]], dtype=np.float32), np.array([["p"], ["q"], ["p"]], dtype=object))
    stats = fit_table(table)
    assert stats == {"numeric": {"x": [2.0, 1.0]}, "categorical": {"c": ["p", "q"]}}, "values by frequency"
    served = Table(("x",), ("c",), np.array([[4.0], [np.nan]], dtype=np.float32), np.array([["q"], [None]], dtype=object))
    unseen = Table(("x",), ("c",), np.array([[2.0]], dtype=np.float32), np.array([["zeta"]], dtype=object))
    prep = TablePrep.fitted(stats)
    out = prep(served)
    assert out["numbers"].tolist() == [[2.0, 0.0], [0.0, 1.0]], "standardised value, missing indicator"
    assert out["categories"].tolist() == [[3], [1]], "known values from 2, missing 1"
    assert prep(unseen)["categories"].tolist() == [[0]], "an unseen value is 0"


def test_rare_categories_beyond_the_cap_count_as_unseen():
    values = np.array([["a"]] * 5 + [["b"]] * 3 + [["c"]], dtype=object)
    stats = fit_table(Table((), ("c",), np.zeros((9, 0), dtype=np.float32), values), max_categories=2)
    assert stats["categorical"]["c"] == ["a", "b"]


def test_the_tabular_member_reads_the_table_and_declares_searched_widths(tmp_path):
    write_table(tmp_path / "t.csv")
    data = load_dataset("manifest", table_options(tmp_path / "t.csv"), 0.2, 0.2, seed=0)
    member = build_member("tab", "tabular", "table", data.inputs["table"].context(), {"hidden": 16, "layers": 1})
    features = member(member.prepare(data.splits["val"].inputs))
    assert features.shape == (len(data.splits["val"]), 16) and torch.isfinite(features).all()
    with pytest.raises(ValueError, match="reads table inputs, not tensor"):
        build_member("tab", "tabular", "x", BuildContext("tensor", (4,)), {})
    spec = Spec.model_validate({
        "name": "t", "data": {"source": "manifest", "path": "t.csv", "columns": {"image": None, "text": None, "numeric": "price"}},
        "members": [{"name": "tab", "kind": "tabular", "input": "table", "params": {"layers": 2}}],
        "fusion": {"operators": {"weighted": {}}}, "budget": {"num_samples": 1},
    })
    space = spec.members[0].param_space
    assert space["layers"] == 2 and isinstance(space["hidden"], IntRange), "the spec fixes layers; hidden is searched"
    assert spec.members[0].default_params["hidden"] == round((32 * 256) ** 0.5)


def test_a_served_frame_may_miss_values_and_bring_unseen_categories(tmp_path):
    write_table(tmp_path / "t.csv")
    description = load_dataset("manifest", table_options(tmp_path / "t.csv"), 0.2, 0.2, seed=0).inputs["table"]
    frame = pd.DataFrame({"price": [12.0, None], "age": [1, np.nan], "brand": ["zeta", None], "country": ["de", pd.NA]})
    table = raw_inputs(frame, {"table": description})["table"]
    assert table.categories.tolist() == [["zeta", "de"], [None, None]] and np.isnan(table.numbers[1]).all()
    with pytest.raises(ValueError, match="model input lacks country"):
        raw_inputs(frame.drop(columns=["country"]), {"table": description})
    with pytest.raises(ValueError, match="column 'price' holds 'cheap', not a number"):
        raw_inputs(frame.assign(price=["cheap", 1.0]), {"table": description})


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.assign(price=f["price"].where(f.index != 6, "twelve")), "row 7: column 'price' holds 'twelve', not a number"),
        (lambda f: f.assign(age=f["age"].where(f.index != 2, "inf")), "row 3: column 'age' holds an infinite number"),
        (lambda f: f.assign(country="de"), "column 'country' has one value only ('de'): it cannot tell rows apart"),
        (lambda f: f.drop(columns=["age"]), "no column 'age' (columns: price, brand, country, kind, split); set data.columns.numeric"),
    ],
    ids=["text in a numeric column", "an infinite number", "one category only", "a missing column"],
)
def test_bad_table_cells_are_named(tmp_path, change, message):
    frame = write_table(tmp_path / "t.csv")
    change(frame).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_dataset("manifest", table_options(tmp_path / "t.csv"), 0.2, 0.2, seed=0)


def fitted_trees(tmp_path, rows: int = 60):
    """Boosted trees fitted on a table's training split, as the driver fits them."""
    frame = write_table(tmp_path / "t.csv", rows)
    flipped = np.random.default_rng(0).random(rows) < 0.25  # noisy labels: boosters fitted on other rows differ
    frame.assign(kind=np.where(flipped, frame["kind"].map({"a": "b", "b": "a"}), frame["kind"])).to_csv(tmp_path / "t.csv", index=False)
    data = load_dataset("manifest", table_options(tmp_path / "t.csv", split_column=None), 0.2, 0.2, seed=0)
    train = data.splits["train"]
    params = with_defaults("boosted_trees", {"rounds": 20, "folds": 3})
    added = fit_boosted(params, train.inputs["table"], train.labels, data.num_classes, 0, tmp_path / "fitted")
    member = build_member("trees", "boosted_trees", "table", data.inputs["table"].context(), {**params, **added}, "frozen")
    return data, member, Path(added["fitted"])


def test_boosted_trees_give_training_rows_out_of_fold_features_and_others_the_full_booster(tmp_path):
    data, member, folder = fitted_trees(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["booster-0.txt", "booster-1.txt", "booster-2.txt", "booster-all.txt", "fit.json", "folds.npz"]
    assert (folder / "booster-all.txt").read_text().startswith("tree"), "LightGBM's own text format, not a pickle"
    train, val = (data.splits[s].inputs for s in ("train", "val"))
    folds = member.prepare(train)["trees.fold"]
    assert sorted(folds.unique().tolist()) == [0, 1, 2] and (member.prepare(val)["trees.fold"] == -1).all()
    features = member(member.prepare(train))
    proba = features.exp()
    assert features.shape == (len(data.splits["train"]), 2) and torch.allclose(proba.sum(1), torch.ones(len(proba)), atol=1e-4)
    boosters = member.backbone.boosters
    matrix = design_matrix({k.removeprefix("trees."): v for k, v in member.prepare(train).items()})
    own = np.array([boosters[int(f)].predict(matrix[i : i + 1])[0] for i, f in enumerate(folds)])
    assert np.allclose(proba[:, 1].numpy(), own, atol=1e-5), "each training row from the booster that did not see it"
    assert not np.allclose(own, boosters[-1].predict(matrix), atol=1e-3)


def test_boosted_trees_are_fitted_once_and_rebuilt_from_a_saved_composite_alone(tmp_path):
    data, member, folder = fitted_trees(tmp_path)
    stamp = (folder / "booster-all.txt").stat().st_mtime_ns
    again = fit_boosted(with_defaults("boosted_trees", {"rounds": 20, "folds": 3}), data.splits["train"].inputs["table"], data.splits["train"].labels, 2, 0, tmp_path / "fitted")
    assert again == {"fitted": str(folder)} and (folder / "booster-all.txt").stat().st_mtime_ns == stamp, "found again, not refitted"
    description = CompositeDescription(
        [MemberDescription("trees", "boosted_trees", "table", {"rounds": 20, "folds": 3, "fitted": str(folder)}, "frozen")],
        "weighted", {"pool": "linear", "weight": [1.0]}, 2, data.class_names, data.inputs,
    )
    model = CompositeModel(description)
    test = data.splits["test"].inputs
    before = model.predict_raw(test)
    save_composite(model, tmp_path / "saved")
    shutil.rmtree(folder)
    assert torch.allclose(load_composite(tmp_path / "saved").predict_raw(test), before), "the boosters travel with the model"


def test_boosted_trees_never_train_by_gradient_and_are_fitted_by_the_search():
    base = {"name": "t", "data": {"source": "manifest", "path": "t.csv", "columns": {"image": None, "text": None, "numeric": "price"}},
            "fusion": {"operators": {"weighted": {}}}, "budget": {"num_samples": 1}}
    with pytest.raises(ValueError, match="a boosted_trees member allows frozen only: set train: frozen"):
        Spec.model_validate({**base, "members": [{"name": "trees", "kind": "boosted_trees", "input": "table"}]})
    with pytest.raises(ValueError, match="is set by the search when it fits the boosters"):
        Spec.model_validate({**base, "members": [{"name": "trees", "kind": "boosted_trees", "input": "table", "train": "frozen", "params": {"fitted": "x"}}]})
    with pytest.raises(ValueError, match="these boosters were never fitted"):
        build_member("trees", "boosted_trees", "table", BuildContext("table", (1, 0), table={"numeric": {"x": [0, 1]}, "categorical": {}}), {}, "frozen")


@pytest.mark.parametrize("fmt", ["parquet", "hf_disk"])
def test_typed_tables_read_the_same_as_csv(tmp_path, fmt):
    """Parquet and Hugging Face datasets keep numbers as numbers and missing cells as nulls: the table is the same."""
    import datasets

    frame = write_table(tmp_path / "t.csv")
    typed = frame.assign(price=pd.to_numeric(frame["price"], errors="coerce"), age=pd.to_numeric(frame["age"]), brand=frame["brand"].replace("", None))
    if fmt == "parquet":
        typed.to_parquet(tmp_path / "t.parquet")
        source, path = "manifest", tmp_path / "t.parquet"
    else:
        datasets.Dataset.from_pandas(typed, preserve_index=False).save_to_disk(str(tmp_path / "hf"))
        source, path = "hf_disk", tmp_path / "hf"
    expected = load_dataset("manifest", table_options(tmp_path / "t.csv"), 0.2, 0.2, seed=0).splits["train"].inputs["table"]
    table = load_dataset(source, table_options(path), 0.2, 0.2, seed=0).splits["train"].inputs["table"]
    assert np.array_equal(table.numbers, expected.numbers, equal_nan=True) and table.categories.tolist() == expected.categories.tolist()
