"""Benchmark: the mixed-table example (``examples/tabular``: a photo, two texts, two numbers and two
categories a row, a known signal in each). The champion's validation objective against each member
alone, the boosted trees included, then the test split; beside them, LightGBM at its library
defaults on the same training rows, as a user would fit it without fusion-search.

    python -m benchmarks.tabular [--rows 1500]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import ROOT, parent_json, run_spec
from benchmarks.quality import from_file, report
from examples.tabular.make_data import build


def plain_lightgbm(table: pd.DataFrame, seed: int) -> tuple[float, float]:
    """Test accuracy and log-loss of ``lightgbm.LGBMClassifier()`` on the numeric and categorical
    columns, with the search's own stratified split (the same seed)."""
    import lightgbm
    from sklearn.metrics import accuracy_score, log_loss
    from sklearn.model_selection import train_test_split

    features = table[["price", "weight", "brand", "country"]].copy()
    features["price"] = pd.to_numeric(features["price"], errors="coerce")
    features["weight"] = pd.to_numeric(features["weight"])
    for column in ("brand", "country"):
        features[column] = features[column].astype("category")
    index = np.arange(len(table))
    rest, test = train_test_split(index, test_size=0.2, stratify=table["segment"], random_state=seed)
    train, _ = train_test_split(rest, test_size=0.25, stratify=table["segment"].iloc[rest], random_state=seed)
    model = lightgbm.LGBMClassifier(verbose=-1, random_state=seed).fit(features.iloc[train], table["segment"].iloc[train])
    proba = model.predict_proba(features.iloc[test])
    truth = table["segment"].iloc[test]
    return accuracy_score(truth, model.classes_[proba.argmax(axis=1)]), log_loss(truth, proba, labels=model.classes_)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = build(folder / "data", args.rows)
        spec = from_file(ROOT / "examples" / "tabular" / "products.yaml")
        spec["data"]["path"] = str(path)
        measured = run_spec(spec, folder / "run")
        report(spec["name"], measured, parent_json(folder / "run", spec["name"], "candidates.json"))
        accuracy, loss = plain_lightgbm(pd.read_csv(path, keep_default_na=False), spec["seed"])
        print(f"  beside the search: LightGBM at its defaults on the table's columns: test accuracy {accuracy:.4f}, log-loss {loss:.4f}")
        print(f"  search wall time: {measured.wall_s:.0f} s")


if __name__ == "__main__":
    main()
