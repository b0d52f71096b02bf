"""The streaming input pipeline: rows stay references, batches are prepared per batch, augmentation
touches training batches only and is seeded by (seed, epoch, row), and reduced precision trains on CPU."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from trainables.composite import CompositeDescription, MemberDescription
from trainables.data import load_dataset
from trainables.pipeline import LABELS
from trainables.preprocess import AUGMENTS, ImageRef
from trainables.sources import CHECK_CHUNK, SourceOptions
from trainables.precision import autocast_dtype
from trainables.training import Runtime, SplitFeed, TrialPlan, build_model, fit


def picture_rows(folder: Path, n: int) -> Path:
    """``n`` PNGs of varied sizes in three colours with a manifest; returns the manifest."""
    rng = np.random.default_rng(0)
    rows = []
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        colour = i % 3
        pixels = rng.integers(0, 60, size=(20 + i % 7, 24, 3), dtype=np.uint8)
        pixels[..., colour] += 150
        Image.fromarray(pixels).save(folder / f"{i}.png")
        rows.append({"image": f"{i}.png", "label": ["red", "green", "blue"][colour]})
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    manifest = picture_rows(tmp_path_factory.mktemp("pictures"), 60)
    return load_dataset("manifest", SourceOptions(manifest, texts=()), 0.2, 0.2, seed=0)


def picture_plan(data, augment: str = "none", precision: str = "auto", epochs: int = 2) -> TrialPlan:
    composite = CompositeDescription(
        members=[MemberDescription("cnn", "small_cnn", "image", {"channels": 8, "image_size": 16}, augment=augment)],
        operator="weighted",
        operator_params={"weight": [1.0], "pool": "linear"},
        num_classes=data.num_classes,
        class_names=data.class_names,
        inputs=data.inputs,
    )
    return TrialPlan(composite, lr=3e-3, weight_decay=0.0, epochs=epochs, batch_size=16, seed=2, precision=precision)


def batches(plan: TrialPlan, data, split: str, train: bool, epoch: int = 1, workers: int = 0) -> list[torch.Tensor]:
    model = build_model(plan)
    feed = SplitFeed(model, data.splits[split], {}, Runtime(torch.device("cpu"), workers=workers), 16, plan.seed, train)
    return [b["cnn.x"] for b in feed.epoch(epoch)]


def test_rows_are_references_until_a_batch_decodes_them(pictures):
    column = pictures.splits["train"].inputs["image"]
    assert all(isinstance(r, ImageRef) and isinstance(r.source, str) for r in column)
    plan = picture_plan(pictures)
    model = build_model(plan)
    feed = SplitFeed(model, pictures.splits["val"], {}, Runtime(torch.device("cpu")), 5)
    shapes = [(tuple(b["cnn.x"].shape), tuple(b[LABELS].shape)) for b in feed.epoch()]
    assert shapes == [((5, 3, 16, 16), (5,))] * 2 + [((2, 3, 16, 16), (2,))]


@pytest.mark.parametrize("augment", [a for a in AUGMENTS if a != "none"])
def test_augmentation_changes_training_batches_and_never_evaluation(pictures, augment):
    plain, augmented = picture_plan(pictures), picture_plan(pictures, augment)
    for split in ("val", "test"):
        for a, b in zip(batches(plain, pictures, split, False), batches(augmented, pictures, split, False), strict=True):
            assert torch.equal(a, b), f"{augment} must not touch {split} batches"
    train_plain, train_augmented = batches(plain, pictures, "train", True), batches(augmented, pictures, "train", True)
    assert [a.shape for a in train_plain] == [b.shape for b in train_augmented]
    assert not all(torch.equal(a, b) for a, b in zip(train_plain, train_augmented, strict=True))
    again = batches(augmented, pictures, "train", True)
    assert all(torch.equal(a, b) for a, b in zip(train_augmented, again, strict=True)), "seeded: the same epoch gives the same batches"
    later = batches(augmented, pictures, "train", True, epoch=2)
    assert not all(torch.equal(a, b) for a, b in zip(train_augmented, later, strict=True)), "another epoch, other augmentations"


def test_batches_do_not_depend_on_the_number_of_loader_workers(pictures):
    plan = picture_plan(pictures, "randaugment")
    inline, in_workers = batches(plan, pictures, "train", True, workers=0), batches(plan, pictures, "train", True, workers=2)
    assert len(inline) == len(in_workers) and all(torch.equal(a, b) for a, b in zip(inline, in_workers, strict=True))


def test_a_frozen_member_is_never_augmented(pictures):
    plan = picture_plan(pictures, "flip_crop")
    frozen = replace(plan, composite=replace(plan.composite, members=[replace(plan.composite.members[0], policy="frozen")]))
    model = build_model(frozen)
    assert [i.augment for i in model.member_inputs(())] == ["none"]


def test_training_with_workers_matches_training_inline(pictures):
    plan = picture_plan(pictures, "flip_crop")
    runs: list[list[float]] = [[], []]
    for workers, out in zip((0, 2), runs, strict=True):
        fit(plan, pictures, on_epoch=lambda e, m, *_, out=out: out.append(m["val_log_loss"]), workers=workers)
    assert runs[0] == runs[1] and len(runs[0]) == 2


def test_bf16_on_cpu_trains_close_to_fp32():
    digits = load_dataset("digits", SourceOptions(), 0.2, 0.2, seed=0)
    composite = CompositeDescription(
        members=[MemberDescription("cnn", "small_cnn", "image", {"channels": 16}), MemberDescription("mlp", "mlp", "flat", {"hidden": 64})],
        operator="concat_mlp",
        operator_params={"hidden": 32},
        num_classes=digits.num_classes,
        class_names=digits.class_names,
        inputs=digits.inputs,
    )
    best = {}
    for precision in ("fp32", "bf16"):
        plan = TrialPlan(composite, lr=5e-3, weight_decay=0.0, epochs=6, batch_size=64, seed=0, precision=precision)
        metrics: list[dict] = []
        fit(plan, digits, on_epoch=lambda e, m, *_, out=metrics: out.append(m))
        best[precision] = {"loss": min(m["val_log_loss"] for m in metrics), "accuracy": max(m["val_accuracy"] for m in metrics)}
    assert autocast_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    # A trial is ranked by its best epoch: bf16 must reach the same quality as fp32.
    assert best["fp32"]["accuracy"] > 0.95
    assert best["bf16"]["accuracy"] == pytest.approx(best["fp32"]["accuracy"], abs=0.02)
    assert best["bf16"]["loss"] == pytest.approx(best["fp32"]["loss"], abs=0.03)
    assert best["bf16"]["loss"] != best["fp32"]["loss"], "bf16 really computed in bf16"


def test_precision_choices():
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("fp32", cpu) is None
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        autocast_dtype("fp16", cpu)
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast_dtype("half", cpu)


def test_rows_are_checked_in_parallel_chunks_and_a_bad_row_is_named(tmp_path):
    manifest = picture_rows(tmp_path, CHECK_CHUNK + 40)
    bad = CHECK_CHUNK + 7  # in the second chunk
    (tmp_path / f"{bad}.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=rf"^row {bad + 1}: corrupt image '{bad}.png'"):
        load_dataset("manifest", SourceOptions(manifest, texts=()), 0.2, 0.2, seed=0)
    skipping = SourceOptions(manifest, texts=(), skip_bad_rows=True)
    data = load_dataset("manifest", skipping, 0.2, 0.2, seed=0)
    assert data.rows == CHECK_CHUNK + 39 and data.skipped[0].startswith(f"row {bad + 1}: corrupt image")
    column = [r for split in data.splits.values() for r in split.inputs["image"]]
    assert len({r.digest for r in column}) == len(column), "each row's bytes digested"
