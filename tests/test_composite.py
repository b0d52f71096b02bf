"""The composite round-trips through JSON + safetensors; training is deterministic and resumable."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from trainables.composite import DESCRIPTION_FILE, WEIGHTS_FILE, CompositeDescription, MemberDescription, load_composite, save_composite
from trainables.data import load_dataset
from trainables.trainable import restore_checkpoint, write_checkpoint
from trainables.training import BestWeights, TrialPlan, build_model, fit


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", None, 0.2, 0.2, seed=0)


def plan_for(data, operator="weighted", params=None, epochs=2) -> TrialPlan:
    composite = CompositeDescription(
        members=[MemberDescription("cnn", "small_cnn", "image", {"channels": 8}), MemberDescription("mlp", "mlp", "flat", {"hidden": 32})],
        operator=operator,
        operator_params=params if params is not None else {"weight": [0.7, 0.3], "pool": "linear"},
        num_classes=data.num_classes,
        class_names=data.class_names,
        input_shapes=data.input_shapes,
        dropout=0.1,
    )
    return TrialPlan(composite, lr=3e-3, weight_decay=1e-4, epochs=epochs, batch_size=128, seed=5)


@pytest.mark.parametrize("operator,params", [("weighted", None), ("concat_mlp", {"hidden": 16})])
def test_round_trip_predicts_the_same(tmp_path, data, operator, params):
    model = fit(plan_for(data, operator, params, epochs=1), data).eval()
    save_composite(model, tmp_path / "c")
    raw = json.loads((tmp_path / "c" / DESCRIPTION_FILE).read_text())
    assert raw["format"] == "fusion-search/composite" and raw["operator"] == operator
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [DESCRIPTION_FILE, WEIGHTS_FILE]
    loaded = load_composite(tmp_path / "c")
    test = data.splits["test"].inputs
    assert torch.equal(loaded.predict_proba(test), model.predict_proba(test))


def test_mismatched_weights_are_refused(tmp_path, data):
    save_composite(build_model(plan_for(data)), tmp_path / "c")
    other = replace(plan_for(data).composite, members=plan_for(data).composite.members[:1], operator_params={"weight": [1.0]})
    (tmp_path / "c" / DESCRIPTION_FILE).write_text(other.to_json())
    with pytest.raises(ValueError, match="does not match composite.json"):
        load_composite(tmp_path / "c")


def test_training_is_deterministic(data):
    seen: list[list[float]] = [[], []]
    for losses in seen:
        fit(plan_for(data), data, on_epoch=lambda e, m, *_, out=losses: out.append(m["val_log_loss"]))
    assert seen[0] == seen[1] and len(seen[0]) == 2


def test_resume_from_checkpoint_continues_exactly(tmp_path, data):
    """2 epochs, checkpoint, restore, 2 more == 4 straight epochs (same metrics, same weights)."""
    plan = plan_for(data, epochs=4)
    straight: list[float] = []
    full = fit(plan, data, on_epoch=lambda e, m, *_: straight.append(m["val_log_loss"]))

    best = BestWeights("val_log_loss", "min")
    resumed: list[float] = []

    def until_two(epoch, metrics, model, optimizer):
        best.update(epoch, metrics, model)
        resumed.append(metrics["val_log_loss"])
        if epoch == 2:
            write_checkpoint(tmp_path / "ckpt", epoch, model, optimizer, best)

    fit(replace(plan, epochs=2), data, on_epoch=until_two)
    best_after = BestWeights("val_log_loss", "min")
    model, optimizer, start = restore_checkpoint(tmp_path / "ckpt", plan, best_after)
    assert start == 3 and best_after.value == min(resumed)
    model = fit(plan, data, on_epoch=lambda e, m, *_: resumed.append(m["val_log_loss"]), model=model, optimizer=optimizer, start_epoch=start)
    assert resumed == straight
    for a, b in zip(full.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
