"""Public data sets that ship inside a dependency, written as a user would bring them.

``breast_cancer``: scikit-learn's copy of the Wisconsin diagnostic breast cancer set (569 rows, 212
malignant), its 30 measurements standardised and split into the three views the data describes
(the mean, the standard error and the worst value of ten cell-nucleus features), each an ``npz``
input read by its own member; malignant is the positive class, F1 of it the objective.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

VIEWS = ("mean", "se", "worst")


def breast_cancer(path: Path) -> Path:
    """Write the set to ``path`` (``.npz``); returns it."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    values = (bunch.data - bunch.data.mean(axis=0)) / bunch.data.std(axis=0)
    malignant = (bunch.target == list(bunch.target_names).index("malignant")).astype(np.int64)
    views = {view: values[:, 10 * i : 10 * (i + 1)].astype(np.float32) for i, view in enumerate(VIEWS)}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, label=malignant, class_names=np.array(["benign", "malignant"]), **views)
    return path


def breast_cancer_spec(path: Path, trials: int = 12) -> dict[str, Any]:
    """A search of ``path``: an MLP per view, F1 of the malignant class the objective, class weighting searched."""
    return {
        "name": "breast-cancer",
        "seed": 0,
        "data": {"source": "npz", "path": str(path)},
        "members": [{"name": view, "kind": "mlp", "input": view, "params": {"hidden": 32, "layers": 1}} for view in VIEWS],
        "fusion": {"operators": {"weighted": {}, "concat_mlp": {}}},
        "hyperparameters": {"lr": {"low": 0.003, "high": 0.03, "log": True}, "epochs": 15, "batch_size": 32, "class_weight": ["none", "balanced"]},
        "objective": {"metric": "val_f1"},
        "budget": {"num_samples": trials, "max_concurrent": 2},
        "measure_cost": False,
        "resources": {"cpu": 1},
    }
