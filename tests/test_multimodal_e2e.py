"""A search on an image + text dataset laid out by someone else, from a spec in the documented format.

The data: a ``catalogue/`` folder with JPEG photos in nested folders and a JSONL
manifest with its own column names, one photo corrupt (skipped and counted). The
members: a small CNN on the photos and a tiny Hugging Face text encoder (built by
the test) on the descriptions; Optuna chooses among four operators and each
member's training policy. Read back through MLflow's API and the pyfunc model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import ray
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from search.cli import main
from search.run.preflight import load_data
from search.spec.schema import load_spec
from tests.artifacts import pickles_in
from trainables.ensemble_model import saved_predictor

pytestmark = pytest.mark.slow
CLASSES = ["lamp", "mug", "sock"]
DESCRIPTIONS = {"lamp": "looks like a large number", "mug": "an odd small digit", "sock": "even digit"}


def make_catalogue(root: Path) -> Path:
    """90 products: a photo whose colour hints at the class, a description that sometimes says nothing."""
    generator = np.random.default_rng(0)
    lines = []
    for i in range(90):
        category = CLASSES[i % 3]
        base = np.zeros((14, 18, 3), dtype=np.uint8)
        base[..., i % 3] = 150
        photo = np.clip(base + generator.integers(0, 90, base.shape), 0, 255).astype(np.uint8)
        path = root / "catalogue" / "photos" / f"{i // 30}" / f"p{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo).save(path, quality=95)
        text = DESCRIPTIONS[category] if i % 5 else "a number"
        lines.append({"photo": f"photos/{i // 30}/p{i:03d}.jpg", "description": text, "category": category})
    (root / "catalogue" / "photos" / "0" / "p004.jpg").write_bytes(b"\xff\xd8 truncated")
    manifest = root / "catalogue" / "products.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tiny_hf_dir):
    root = tmp_path_factory.mktemp("multimodal")
    manifest = make_catalogue(root)
    spec = {
        "name": "catalogue-fusion",
        "seed": 1,
        "data": {
            "source": "manifest",
            "path": os.path.relpath(manifest, root),
            "columns": {"image": "photo", "text": "description", "label": "category"},
            "bad_rows": "skip",
            "splits": {"val": 0.25, "test": 0.25},
        },
        "members": [
            {"name": "photo", "kind": "small_cnn", "input": "image", "params": {"channels": 8, "image_size": 12}},
            {
                "name": "words", "kind": "hf_text", "input": "text",
                "params": {"model": str(tiny_hf_dir), "pooling": "mean", "max_length": 12},
                "train": ["frozen", "last_1"], "lr_scale": {"low": 0.1, "high": 1.0, "log": True},
            },
        ],
        "fusion": {"min_members": 2, "operators": {"gmu": {}, "attention": {"layers": 1}, "moe": {}, "stacking": {"folds": 3}}},
        "hyperparameters": {"lr": 0.005, "epochs": 3, "batch_size": 16},
        "budget": {"num_samples": 4, "max_concurrent": 2},
        "scheduler": {"type": "fifo"},
        "report": {"baselines": True},
        "storage": "store",
    }
    spec_path = root / "catalogue.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["run", str(spec_path)]) == 0
        loaded = load_spec(spec_path)
    finally:
        os.chdir(cwd)
        ray.shutdown()
    return loaded, MlflowClient(loaded.tracking_uri)


def test_search_records_trials_policies_and_skipped_rows(searched):
    spec, client = searched
    experiment = client.get_experiment_by_name(spec.name)
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("fusion_search.role") == "search")
    trials = [r for r in runs if r.data.tags.get("fusion_search.role") == "trial"]
    assert parent.info.status == "FINISHED" and len(trials) == 4
    assert parent.data.params["data.skipped_rows"] == "1" and parent.data.params["data.rows"] == "89"
    skipped = mlflow.artifacts.load_text(f"{parent.info.artifact_uri}/skipped_rows.txt")
    assert skipped.startswith("row 5: corrupt image 'p004.jpg'")
    for run in trials:
        assert run.info.status == "FINISHED"
        fused = "+" in run.data.params["members"]
        assert run.data.params["operator"] in (("gmu", "attention", "moe", "stacking") if fused else ("weighted",)), "fused, or a member alone"
        if "words" in run.data.params["members"].split("+"):
            assert run.data.params["words.train"] in ("frozen", "last_1")
            assert ("words.lr_scale" in run.data.params) == (run.data.params["words.train"] != "frozen")
    assert any("+" in run.data.params["members"] for run in trials), "fused trials among them"
    table = mlflow.artifacts.load_dict(f"{parent.info.artifact_uri}/test_table.json")
    made_after = {"ensemble", "greedy soup", "uniform soup", "linear merge", "ties merge", "dare merge", "checkpoint average"}
    assert set(table) - made_after == {"photo alone", "words alone", "uniform average", "best trial", "champion"}


def test_champion_takes_image_bytes_and_text(searched):
    """The registered pyfunc reads a DataFrame of encoded images and strings and predicts what the composite does."""
    spec, _ = searched
    mlflow.set_tracking_uri(spec.tracking_uri)
    cwd = os.getcwd()
    os.chdir(spec.data.path.parent.parent)
    try:
        test = load_data(spec).splits["test"]
    finally:
        os.chdir(cwd)
    frame = pd.DataFrame(
        {
            "image": [Path(image.source).read_bytes() for image in test.inputs["image"]],  # the JPEGs as a client sends them
            "text": test.inputs["text"],
        }
    )
    pyfunc = mlflow.pyfunc.load_model(f"models:/{spec.name}@champion")
    assert pyfunc.metadata.signature is not None
    proba = pyfunc.predict(frame)
    assert proba.shape == (len(test), 3)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{spec.name}@champion"))
    expected = saved_predictor(local).predict_raw(test.inputs).numpy()
    np.testing.assert_allclose(proba, expected, atol=1e-6)
    accuracy = float((torch.from_numpy(proba).argmax(1) == test.labels).float().mean())
    assert accuracy > 0.6, "the fused model learned the task (chance is 1/3)"
    assert pickles_in(local) == [], "no pickled objects in the champion artifact"
