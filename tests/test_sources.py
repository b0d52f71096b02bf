"""Image + text data from files: manifests (CSV, JSONL, Parquet), ImageFolder trees and HF datasets; bad rows."""

from __future__ import annotations

import json
import re
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
    settings = {"path": path, "images": (("image", "file"),), "texts": (("text", "caption"),), "label_column": "colour"}
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


def test_several_image_and_text_columns_are_inputs_named_after_them(tmp_path, rows):
    for i, row in enumerate(rows):
        row["back"] = rows[(i + 1) % len(rows)]["file"]
        row["title"] = f"item {i}"
    columns = {"images": (("file", "file"), ("back", "back")), "texts": (("caption", "caption"), ("title", "title"))}
    data = load_dataset("manifest", options(manifest(tmp_path, rows, "csv"), **columns), 0.2, 0.2, seed=0)
    assert {k: v.kind for k, v in data.inputs.items()} == {"file": "image", "back": "image", "caption": "text", "title": "text"}
    rows[3]["title"] = " "
    rows[5]["back"] = "pictures/missing.png"
    with pytest.raises(ValueError, match="row 4: empty text in column 'title' \\(and 1 more bad row\\)"):
        load_dataset("manifest", options(manifest(tmp_path, rows, "csv"), **columns), 0.2, 0.2, seed=0)
    with pytest.raises(ValueError, match="no column 'side' .*; set data.columns.image"):
        load_dataset("manifest", options(manifest(tmp_path, rows, "csv"), images=(("side", "side"),)), 0.2, 0.2, seed=0)


def test_a_class_absent_from_the_given_val_split_is_named(tmp_path, rows):
    for i, row in enumerate(rows):
        row["part"] = "validation" if i in (6, 10) else "test" if i in (7, 11, 14) else "train"  # no blue row in val
    with pytest.raises(ValueError, match="the data's split column gives no val rows of class 'blue': every class needs train and val rows"):
        load_dataset("manifest", options(manifest(tmp_path, rows, "csv"), split_column="part"), 0.2, 0.2, seed=0)


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
        {"img": datasets.Image(), "img2": datasets.Image(), "sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=list(COLORS))}
    )
    def part(items: list[dict]) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {
                "img": [str(tmp_path / r["file"]) for r in items],
                "img2": [str(tmp_path / r["file"]) for r in reversed(items)],
                "sentence": [r["caption"] for r in items],
                "label": [list(COLORS).index(r["colour"]) for r in items],
            },
            features=features,
        )

    datasets.DatasetDict({"train": part(rows[:12]), "validation": part(rows[12:15]), "test": part(rows[15:])}).save_to_disk(str(tmp_path / "hf"))
    hf = SourceOptions(tmp_path / "hf", images=(("image", "img"),), texts=(("text", "sentence"),), label_column="label")
    data = load_dataset("hf_disk", hf, 0.2, 0.2, seed=0)
    assert data.class_names == list(COLORS) and [len(s) for s in data.splits.values()] == [12, 3, 3]
    first = data.splits["val"]
    assert data.class_names[int(first.labels[0])] in first.inputs["text"][0]
    assert np.array_equal(first.inputs["image"][0].decode()[:, 0, 0].numpy(), COLORS[rows[12]["colour"]])
    two = load_dataset("hf_disk", SourceOptions(tmp_path / "hf", images=(("img", "img"), ("img2", "img2")), texts=(), label_column="label"), 0.2, 0.2, seed=0)
    assert {k: v.kind for k, v in two.inputs.items()} == {"img": "image", "img2": "image"}
    assert np.array_equal(two.splits["val"].inputs["img2"][0].decode()[:, 0, 0].numpy(), COLORS[rows[14]["colour"]])


def write_bomb(path: Path) -> None:
    """A PNG over PIL's decompression-bomb limit (twice MAX_IMAGE_PIXELS): a few KB on disk."""
    side = int((2 * Image.MAX_IMAGE_PIXELS) ** 0.5) + 2
    Image.new("1", (side, side)).save(path)


def test_a_decompression_bomb_is_a_bad_row_named_and_skippable(tmp_path, rows):
    write_bomb(tmp_path / rows[4]["file"])
    path = manifest(tmp_path, rows, "csv")
    with pytest.raises(ValueError, match=r"row 5: corrupt image '04.png': Image size \(\d+ pixels\) exceeds limit"):
        load_dataset("manifest", options(path), 0.2, 0.2, seed=0)
    assert load_dataset("manifest", options(path, skip_bad_rows=True), 0.2, 0.2, seed=0).rows == 17


def test_sixteen_bit_images_keep_their_grey_levels(tmp_path, rows):
    """PIL's own conversion of an "I;16" image to RGB clips every level above 255 to white."""
    levels = np.array([[0, 256 * 64], [256 * 128, 65535]], dtype=np.uint16)
    Image.fromarray(levels).save(tmp_path / "grey.png")  # uint16: mode "I;16"
    assert Image.open(tmp_path / "grey.png").mode in ("I;16", "I")
    pixels = ImageRef.read(str(tmp_path / "grey.png")).decode()
    assert pixels[0].tolist() == [[0, 64], [128, 255]] and torch.equal(pixels[0], pixels[2])


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_integer_labels_written_as_floats_are_one_class(tmp_path, rows, fmt):
    for i, row in enumerate(rows):
        row["colour"] = ["1", "1.0", "2"][i % 3] if fmt == "csv" else [1.0, 1.0, 2.0][i % 3]
    data = load_dataset("manifest", options(manifest(tmp_path, rows, fmt)), 0.2, 0.2, seed=0)
    assert data.class_names == ["1", "2"]


@pytest.mark.parametrize(
    "column,value,message",
    [
        ("colour", ["red", "blue"], "row 1: the label is of type ndarray, not one class"),
        ("caption", 7, "row 1: the text is of type int (7), not a string"),
    ],
)
def test_parquet_cells_of_the_wrong_type_say_so(tmp_path, rows, column, value, message):
    for row in rows:
        row[column] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        load_dataset("manifest", options(manifest(tmp_path, rows, "parquet")), 0.2, 0.2, seed=0)


def test_a_single_class_and_a_class_too_small_to_stratify_are_named(tmp_path, rows):
    for row in rows:
        row["colour"] = "red"
    with pytest.raises(ValueError, match="every row has the label 'red': a classifier needs at least two classes"):
        load_dataset("manifest", options(manifest(tmp_path, rows, "csv")), 0.2, 0.2, seed=0)
    rows[0]["colour"] = "blue"
    with pytest.raises(ValueError, match="class 'blue' has only 1 row"):
        load_dataset("manifest", options(manifest(tmp_path, rows, "csv")), 0.2, 0.2, seed=0)


def test_numeric_inputs_with_nan_or_inf_are_refused(tmp_path):
    features = np.ones((20, 4), dtype=np.float32)
    features[7, 2] = np.inf
    np.savez(tmp_path / "data.npz", label=np.arange(20) % 2, features=features)
    with pytest.raises(ValueError, match="input 'features' has NaN or infinite values in 1 row, the first row 8"):
        load_dataset("npz", SourceOptions(path=tmp_path / "data.npz"), 0.2, 0.2, seed=0)
