"""Data sets made here, with a known answer: what the tests and the quality benchmark search.

``signal_and_noise``: an ``npz`` with two inputs, ``signal`` (each class a Gaussian blob, so a
member reading it alone classifies well) and ``noise`` (the same size, independent of the label, so
a member reading it alone is at chance and fusing it can only hurt).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

CLASSES = 4
WIDTH = 8


def signal_and_noise(path: Path, rows: int = 1200, seed: int = 0, separation: float = 1.2, noise_width: int = WIDTH) -> Path:
    """Write the set to ``path`` (``.npz``); returns it. A wide ``noise`` (``noise_width``) gives a
    fused model many chances to fit noise on few rows."""
    rng = np.random.default_rng(seed)
    labels = np.arange(rows) % CLASSES
    rng.shuffle(labels)
    centres = rng.normal(0.0, separation, (CLASSES, WIDTH))
    signal = centres[labels] + rng.normal(0.0, 1.0, (rows, WIDTH))
    noise = rng.normal(0.0, 1.0, (rows, noise_width))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, label=labels.astype(np.int64), signal=signal.astype(np.float32), noise=noise.astype(np.float32))
    return path


def signal_and_noise_spec(path: Path, name: str = "signal-and-noise", trials: int = 4) -> dict[str, Any]:
    """A search of ``path`` (``signal_and_noise(path, rows=500, noise_width=256)``): each input read
    by an MLP, fused trials needing both (``min_members: 2``), each member alone a trial too."""
    return {
        "name": name,
        "seed": 0,
        "data": {"source": "npz", "path": str(path), "splits": {"val": 0.2, "test": 0.2}},
        "members": [
            {"name": "signal", "kind": "mlp", "input": "signal", "params": {"hidden": 32, "layers": 1}},
            {"name": "noise", "kind": "mlp", "input": "noise", "params": {"hidden": 32, "layers": 1}},
        ],
        "fusion": {"min_members": 2, "operators": {"weighted": {}, "concat_mlp": {"hidden": [32]}}},
        "hyperparameters": {"lr": 0.01, "epochs": 8, "batch_size": 32, "dropout": 0.0, "weight_decay": 0.0},
        "budget": {"num_samples": trials, "max_concurrent": 2},
        "weight_fusion": {"soups": False, "merges": [], "checkpoint_average": 0},
        "resources": {"cpu": 1},
    }
