"""A table with columns of every kind, end to end: two photos, two texts, two numbers and two
categories a row, a member on each photo and text, and a tabular member and boosted trees on the
numbers and categories,
the champion loaded from the registry and fed a DataFrame with the same columns (missing values and
an unseen category in it)."""

from __future__ import annotations

import io
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from search.names import CANDIDATES_FILE
from search.run.preflight import load_data
from search.spec.schema import load_spec
from tests.conftest import run_search_in

pytestmark = pytest.mark.slow
CLASSES = ["bag", "cap", "hat"]
ROWS = 150


def photo(rng: np.random.Generator, channel: int | None) -> bytes:
    """A small JPEG: tinted on ``channel`` (the class's hint) or plain noise."""
    pixels = rng.integers(0, 120, (12, 12, 3))
    if channel is not None:
        pixels[..., channel] += 110
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, format="JPEG", quality=95)
    return out.getvalue()


def make_table(root) -> None:
    """One part of each row tells its class, in turn: the front photo (tinted), the back photo, the
    title (names it), the description (says it in other words) or the table (the brand, and the price
    shifted by class); the others say nothing. A member alone is right on its fifth of the rows and
    guesses on the rest; the columns together tell all."""
    rng = np.random.default_rng(4)
    (root / "photos").mkdir()
    rows = []
    for i in range(ROWS):
        label, telling = i % 3, i % 5
        for side, column in (("front", 0), ("back", 1)):
            (root / "photos" / f"{side}{i:03d}.jpg").write_bytes(photo(rng, label if telling == column else None))
        title = f"a {CLASSES[label]}" if telling == 2 else "an item"
        description = ["carry things in it", "a brim in front", "a brim all round"][label] if telling == 3 else "good value"
        brand = ["atlas", "brio", "corvo"][label] if telling == 4 else str(rng.choice(["atlas", "brio", "corvo", "delta"]))
        price = 10.0 + 20.0 * label + rng.normal() if telling == 4 else rng.uniform(5.0, 55.0)
        rows.append({
            "front": f"photos/front{i:03d}.jpg", "back": f"photos/back{i:03d}.jpg", "title": title, "description": description,
            "price": "" if i % 13 == 0 else f"{price:.2f}", "weight": f"{rng.uniform(0.1, 2.0):.2f}", "brand": brand,
            "country": str(rng.choice(["de", "fr", "it"])), "kind": CLASSES[label],
        })
    pd.DataFrame(rows).to_csv(root / "items.csv", index=False)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tiny_hf_dir):
    root = tmp_path_factory.mktemp("columns")
    make_table(root)
    text = {"kind": "hf_text", "params": {"model": str(tiny_hf_dir), "max_length": 12}, "train": "frozen"}
    spec = {
        "name": "items",
        "seed": 1,
        "data": {
            "source": "manifest",
            "path": str(root / "items.csv"),
            "columns": {
                "image": ["front", "back"], "text": ["title", "description"], "numeric": ["price", "weight"],
                "categorical": ["brand", "country"], "label": "kind",
            },
        },
        "members": [
            {"name": "front_cnn", "kind": "small_cnn", "input": "front", "params": {"channels": 8, "image_size": 12}},
            {"name": "back_cnn", "kind": "small_cnn", "input": "back", "params": {"channels": 8, "image_size": 12}},
            {"name": "title_enc", "input": "title", **text},
            {"name": "description_enc", "input": "description", **text},
            {"name": "table_mlp", "kind": "tabular", "input": "table", "params": {"hidden": 16, "layers": 1}},
            {"name": "trees", "kind": "boosted_trees", "input": "table", "train": "frozen", "params": {"rounds": 60}},
        ],
        "fusion": {"operators": {"concat_mlp": {}, "weighted": {}}},
        "hyperparameters": {"lr": 0.01, "epochs": 4, "batch_size": 16},
        "budget": {"num_samples": 8, "max_concurrent": 2},
        "scheduler": {"type": "fifo"},
        "measure_cost": False,
        "resources": {"cpu": 1},
    }
    spec_path = run_search_in(root, spec, "items.yaml")
    return load_spec(spec_path)


def test_each_column_is_an_input_named_after_it(searched):
    data = load_data(searched)
    kinds = {name: d.kind for name, d in data.inputs.items()}
    assert kinds == {"front": "image", "back": "image", "title": "text", "description": "text", "table": "table"}


def test_the_champion_predicts_from_a_frame_with_the_same_columns(searched):
    mlflow.set_tracking_uri(searched.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/items@champion")
    table = pd.read_csv(searched.data.path).iloc[:5]
    base = searched.data.path.parent
    frame = pd.DataFrame({
        "front": [(base / p).read_bytes() for p in table["front"]],
        "back": [(base / p).read_bytes() for p in table["back"]],
        "title": table["title"],
        "description": table["description"],
        "price": [12.5, None, np.nan, 40.0, 18.0],
        "weight": table["weight"],
        "brand": ["atlas", "zeppo", None, "brio", "corvo"],  # an unseen brand and a missing one
        "country": table["country"],
    })
    proba = model.predict(frame)
    assert proba.shape == (5, 3) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert list(model.predict(frame, params={"output": "classes"})) == [CLASSES[i] for i in proba.argmax(axis=1)]
    read = model.metadata.get_input_schema().input_names()
    assert len(read) >= 2, "the champion fuses columns"
    with pytest.raises(Exception, match=read[0]):
        model.predict(frame.drop(columns=[read[0]]))


def test_the_champion_is_at_least_as_good_as_every_member_alone(searched, tmp_path):
    client = MlflowClient(searched.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("items").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("fusion_search.role") == "search")
    candidates = json.loads(open(client.download_artifacts(parent.info.run_id, CANDIDATES_FILE, str(tmp_path))).read())["candidates"]
    champion = next(c for c in candidates if c["champion"])
    alone = [c["best_val_log_loss"] for c in candidates if c["candidate"].endswith(" alone")]
    assert len(alone) == 6 and champion["best_val_log_loss"] <= min(alone), "at least as good as the boosted trees alone too"
