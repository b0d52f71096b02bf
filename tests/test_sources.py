"""Image + text data from files: manifests (CSV, JSONL, Parquet), ImageFolder trees and HF datasets; bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from trainables.data import load_dataset
from trainables.preprocess import ImageRef
from trainables.sources import SOURCES, SourceOptions

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 210)}


def write_image(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (12, 9)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


@pytest.fixture
def rows(tmp_path: Path) -> list[dict]:
    """18 rows: an image in a sub-folder (paths relative to the manifest), a caption, a label."""
    out = []
    for i in range(18):
        name = list(COLORS)[i % 3]
        write_image(tmp_path / "pictures" / f"{i:02d}.png", COLORS[name], size=(10 + i, 8 + i % 4))
        out.append({"file": f"pictures/{i:02d}.png", "caption": f"a {name} square number {i}", "colour": name})
    return out


def manifest(tmp_path: Path, rows: list[dict], fmt: str) -> Path:
    path = tmp_path / f"manifest.{fmt}"
    frame = pd.DataFrame(rows)
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "parquet":
        frame.to_parquet(path)
    else:
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def options(path: Path, **overrides) -> SourceOptions:
    settings = {"path": path, "image_column": "file", "text_column": "caption", "label_column": "colour"}
    return SourceOptions(**{**settings, **overrides})


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_manifest_formats_give_the_same_dataset(tmp_path, rows, fmt):
    data = load_dataset("manifest", options(manifest(tmp_path, rows, fmt)), 0.2, 0.2, seed=1)
    assert data.class_names == ["blue", "green", "red"]
    assert data.rows == 18 and {k: v.kind for k, v in data.inputs.items()} == {"image": "image", "text": "text"}
    train = data.splits["train"]
    for reference, text, label in zip(train.inputs["image"], train.inputs["text"], train.labels, strict=True):
        assert isinstance(reference, ImageRef), "rows keep references, not pixels"
        image = reference.decode()
        colour = data.class_names[int(label)]
        assert colour in text and image.dtype == torch.uint8 and image.shape[0] == 3
        assert tuple(image[:, 0, 0].tolist()) == COLORS[colour]


def test_split_column_is_honoured(tmp_path, rows):
    for i, row in enumerate(rows):
        row["part"] = ["train", "train", "validation", "test"][i % 4] if i > 2 else "train"
    data = load_dataset("manifest", options(manifest(tmp_path, rows, "csv"), split_column="part"), 0.2, 0.2, seed=0)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 11, "val": 3, "test": 4}


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda rows, tmp: rows[4].update(file="pictures/missing.png"), "row 5: image file 'pictures/missing.png' does not exist"),
        (lambda rows, tmp: (tmp / rows[6]["file"]).write_bytes(b"\x89PNG broken"), "row 7: corrupt image '06.png'"),
        (lambda rows, tmp: rows[2].update(caption="   "), "row 3: empty text"),
        (lambda rows, tmp: rows[9].update(colour="purple"), "row 10: unknown label 'purple'"),
        (lambda rows, tmp: rows[0].update(colour=""), "row 1: empty label"),
    ],
    ids=["missing-file", "corrupt-image", "empty-text", "unknown-label", "empty-label"],
)
def test_bad_rows_are_reported_with_their_row_number_or_skipped(tmp_path, rows, mutate, message):
    mutate(rows, tmp_path)
    path = manifest(tmp_path, rows, "csv")
    strict = options(path, classes=("red", "green", "blue"))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        load_dataset("manifest", strict, 0.2, 0.2, seed=0)
    assert "data.bad_rows: skip" in str(error.value)
    data = load_dataset("manifest", options(path, classes=("red", "green", "blue"), skip_bad_rows=True), 0.2, 0.2, seed=0)
    assert data.rows == 17 and len(data.skipped) == 1 and message in data.skipped[0]


def test_several_bad_rows_are_counted(tmp_path, rows):
    rows[1]["caption"] = ""
    rows[3]["file"] = "nope.png"
    with pytest.raises(ValueError, match=r"row 2: empty text \(and 1 more bad row\)"):
        load_dataset("manifest", options(manifest(tmp_path, rows, "jsonl")), 0.2, 0.2, seed=0)


def test_missing_column_names_the_setting(tmp_path, rows):
    with pytest.raises(ValueError, match=r"no column 'caption' .*set data.columns.text"):
        SOURCES.get("manifest").factory(options(manifest(tmp_path, [{k: v for k, v in r.items() if k != "caption"} for r in rows], "csv")))


def test_malformed_jsonl_line(tmp_path, rows):
    path = manifest(tmp_path, rows, "jsonl")
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(ValueError, match="line 19: not valid JSON"):
        SOURCES.get("manifest").factory(options(path))


@pytest.mark.parametrize("by_split", [False, True])
def test_imagefolder(tmp_path, by_split):
    root = tmp_path / "tree"
    for i in range(12):
        colour = list(COLORS)[i % 3]
        split = ("train/" if i < 6 else ["val/", "test/"][i % 2]) if by_split else ""
        write_image(root / f"{split}{colour}" / f"{i}.jpg", COLORS[colour])
    (root / ("train/red" if by_split else "red") / "notes.txt").write_text("not an image")
    data = load_dataset("imagefolder", SourceOptions(root), 0.25, 0.25, seed=0)
    assert data.class_names == ["blue", "green", "red"] and data.rows == 12 and list(data.inputs) == ["image"]
    if by_split:
        assert [len(s) for s in data.splits.values()] == [6, 3, 3]


def test_hf_dataset_saved_to_disk(tmp_path, rows):
    import datasets

    features = datasets.Features(
        {"img": datasets.Image(), "sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=list(COLORS))}
    )
    def part(items: list[dict]) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {
                "img": [str(tmp_path / r["file"]) for r in items],
                "sentence": [r["caption"] for r in items],
                "label": [list(COLORS).index(r["colour"]) for r in items],
            },
            features=features,
        )

    datasets.DatasetDict({"train": part(rows[:12]), "validation": part(rows[12:15]), "test": part(rows[15:])}).save_to_disk(str(tmp_path / "hf"))
    hf = SourceOptions(tmp_path / "hf", image_column="img", text_column="sentence", label_column="label")
    data = load_dataset("hf_disk", hf, 0.2, 0.2, seed=0)
    assert data.class_names == list(COLORS) and [len(s) for s in data.splits.values()] == [12, 3, 3]
    first = data.splits["val"]
    assert data.class_names[int(first.labels[0])] in first.inputs["text"][0]
    assert np.array_equal(first.inputs["image"][0].decode()[:, 0, 0].numpy(), COLORS[rows[12]["colour"]])
