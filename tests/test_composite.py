"""The composite round-trips through JSON + safetensors; training is deterministic and resumable."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from trainables.composite import (
    ASSETS_DIR,
    DESCRIPTION_FILE,
    WEIGHTS_FILE,
    CompositeDescription,
    MemberDescription,
    load_composite,
    load_trained_state,
    save_composite,
    trained_state,
)
from trainables.data import Dataset, Split, load_dataset
from trainables.ensemble_model import MEMBERS_DIR, WeightedEnsemble, load_predictor, save_ensemble
from trainables.fusion import OPERATORS
from trainables.sources import SourceOptions
from trainables.cost import measure_cost
from trainables.members import sharing_frozen_members
from trainables.metrics import COST_METRICS
from trainables.trainable import restore_checkpoint, write_checkpoint
from trainables.training import BestWeights, TrialPlan, build_model, build_optimizer, fit


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", SourceOptions(), 0.2, 0.2, seed=0)


def plan_for(data, operator="weighted", params=None, epochs=2, augment="none") -> TrialPlan:
    composite = CompositeDescription(
        members=[
            MemberDescription("cnn", "small_cnn", "image", {"channels": 8}, augment=augment),
            MemberDescription("mlp", "mlp", "flat", {"hidden": 32}),
        ],
        operator=operator,
        operator_params=params if params is not None else {"weight": [0.7, 0.3], "pool": "linear"},
        num_classes=data.num_classes,
        class_names=data.class_names,
        inputs=data.inputs,
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
    assert torch.equal(loaded.predict_raw(data.splits["test"].inputs), model.predict_raw(data.splits["test"].inputs))


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


@pytest.mark.parametrize("augment", ["none", "trivialaugment"])
def test_resume_from_checkpoint_continues_exactly(tmp_path, data, augment):
    """2 epochs, checkpoint, restore, 2 more == 4 straight epochs (same metrics, same weights), with
    augmented training batches too; measuring the cost after epoch 1 (as a trial does) changes nothing."""
    plan = plan_for(data, epochs=4, augment=augment)
    straight: list[float] = []
    full = fit(plan, data, on_epoch=lambda e, m, *_: straight.append(m["val_log_loss"]))

    best = BestWeights("val_log_loss", "min")
    resumed: list[float] = []
    cost: dict[str, float] = {}

    def until_two(epoch, metrics, model, optimizer, _outputs):
        best.update(epoch, metrics, model)
        resumed.append(metrics["val_log_loss"])
        if epoch == 1:
            cost.update(measure_cost(plan, model, data.splits["val"]))
        if epoch == 2:
            write_checkpoint(tmp_path / "ckpt", epoch, model, optimizer, best, cost)

    fit(replace(plan, epochs=2), data, on_epoch=until_two)
    best_after = BestWeights("val_log_loss", "min")
    model, optimizer, start, restored_cost, _ = restore_checkpoint(tmp_path / "ckpt", plan, best_after)
    assert start == 3 and best_after.value == min(resumed) and best_after.metrics == best.metrics
    assert restored_cost == cost and set(cost) == set(COST_METRICS)
    model = fit(plan, data, on_epoch=lambda e, m, *_: resumed.append(m["val_log_loss"]), model=model, optimizer=optimizer, start_epoch=start)
    assert resumed == straight
    for a, b in zip(full.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def words_and_pictures(n: int = 90) -> Dataset:
    """Image + text rows: a coloured picture and a caption, three classes."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 3
    images = [(torch.rand(3, 10 + i % 5, 12, generator=generator) * 80 + 60 * int(c)).to(torch.uint8) for i, c in enumerate(labels)]
    words = ["zero even small", "one odd small", "two even large"]
    texts = [f"looks like {words[int(c)]}" if i % 4 else "a digit" for i, c in enumerate(labels)]
    rows = {"train": range(0, 60), "val": range(60, 75), "test": range(75, n)}
    splits = {
        name: Split({"image": [images[i] for i in r], "text": [texts[i] for i in r]}, labels[list(r)]) for name, r in rows.items()
    }
    return Dataset(splits, ["a", "b", "c"])


def multimodal_plan(data: Dataset, tiny_hf_dir, operator: str, params: dict, policy: str = "last_1") -> TrialPlan:
    composite = CompositeDescription(
        members=[
            MemberDescription("cnn", "small_cnn", "image", {"channels": 8, "image_size": 12}),
            MemberDescription("words", "hf_text", "text", {"model": str(tiny_hf_dir), "max_length": 8}, policy, 0.5),
        ],
        operator=operator,
        operator_params=params,
        num_classes=3,
        class_names=data.class_names,
        inputs=data.inputs,
        dropout=0.1,
    )
    return TrialPlan(composite, lr=5e-3, weight_decay=1e-4, epochs=2, batch_size=16, seed=1)


def operator_params(name: str) -> dict:
    entry = OPERATORS.get(name)
    params = {k: (v.choices[0] if hasattr(v, "choices") else v.low) for k, v in entry.params.items()}
    params.update({k: [1.0, 0.5] for k in entry.per_member})
    return params


@pytest.mark.parametrize("operator", sorted(OPERATORS.names()))
def test_image_and_text_composite_trains_and_round_trips(tmp_path, tiny_hf_dir, operator):
    """Every operator fuses an image member and a text member; the saved composite (tokenizer included) predicts the same."""
    data = words_and_pictures()
    model = fit(multimodal_plan(data, tiny_hf_dir, operator, operator_params(operator)), data).eval()
    save_composite(model, tmp_path / "c")
    assert (tmp_path / "c" / ASSETS_DIR / "words" / "tokenizer.json").is_file()
    loaded = load_composite(tmp_path / "c")
    assert torch.allclose(loaded.predict_raw(data.splits["test"].inputs), model.predict_raw(data.splits["test"].inputs), atol=1e-6)


def test_policy_and_lr_scale_reach_the_optimizer(tiny_hf_dir):
    data = words_and_pictures()
    plan = multimodal_plan(data, tiny_hf_dir, "concat_mlp", {"hidden": 8}, policy="last_1")
    model = build_model(plan)
    groups = build_optimizer(model, plan).param_groups
    assert [g["lr"] for g in groups] == [plan.lr, plan.lr * 0.5, plan.lr]
    text_params = {id(p) for p in groups[1]["params"]}
    layer0 = model.members[1].backbone.model.encoder.layer[0]
    assert not any(id(p) in text_params for p in layer0.parameters())
    frozen = build_model(multimodal_plan(data, tiny_hf_dir, "concat_mlp", {"hidden": 8}, policy="frozen"))
    assert len(build_optimizer(frozen, plan).param_groups) == 2


def test_frozen_members_run_once_per_split(tiny_hf_dir, monkeypatch):
    """A frozen member's features are computed once per split, before training, not every batch."""
    data = words_and_pictures()
    plan = multimodal_plan(data, tiny_hf_dir, "weighted", {"weight": [1.0, 1.0], "pool": "linear"}, policy="frozen")
    model = build_model(plan)
    calls = []
    encoder = model.members[1].backbone
    monkeypatch.setattr(encoder, "forward", lambda *a, _f=encoder.forward: calls.append(1) or _f(*a))
    fit(plan, data, model=model)
    assert len(calls) == 2  # train and val, each in one chunk


def test_checkpoints_keep_only_what_trains(tiny_hf_dir):
    """Frozen members and the fixed blocks of last_N members are rebuilt, not saved; loading restores the rest."""
    data = words_and_pictures()
    plan = multimodal_plan(data, tiny_hf_dir, "concat_mlp", {"hidden": 8}, policy="last_1")
    model = fit(plan, data)
    state = trained_state(model)
    encoder = "members.1.backbone.model.encoder.layer"
    assert any(k.startswith(f"{encoder}.1.") for k in state) and not any(k.startswith(f"{encoder}.0.") for k in state)
    rebuilt = build_model(plan)
    load_trained_state(rebuilt, state)
    for key, value in model.state_dict().items():
        assert torch.equal(value, rebuilt.state_dict()[key]), key
    frozen = build_model(multimodal_plan(data, tiny_hf_dir, "concat_mlp", {"hidden": 8}, policy="frozen"))
    assert not any(k.startswith("members.1.") for k in trained_state(frozen))
    with pytest.raises(ValueError, match="do not fit the composite"):
        load_trained_state(rebuilt, {k: v for k, v in state.items() if not k.startswith("fusion.")})


def test_composites_built_while_sharing_read_one_frozen_member(tmp_path, tiny_hf_dir):
    """While ``sharing_frozen_members`` is active, two composites of the same frozen member share one
    module (built once), a member that trains is each composite's own, and nothing is shared after;
    an ensemble of the two saves that member once and loads back predicting the same."""
    data = words_and_pictures()
    frozen = multimodal_plan(data, tiny_hf_dir, "concat_mlp", {"hidden": 8}, policy="frozen")
    other = replace(frozen, lr=1e-3)
    with sharing_frozen_members():
        one, two = build_model(frozen), build_model(other)
        tuned_one, tuned_two = (build_model(multimodal_plan(data, tiny_hf_dir, "concat_mlp", {"hidden": 8})) for _ in range(2))
    assert one.members[1] is two.members[1], "the frozen text member is built once"
    assert one.members[0] is not two.members[0], "the CNN trains: each composite has its own"
    assert tuned_one.members[1] is not tuned_two.members[1], "a text member tuned on its last layer is not shared"
    assert build_model(frozen).members[1] is not one.members[1], "nothing is shared once the block ends"
    separate = build_model(frozen)
    for key, value in separate.state_dict().items():
        assert torch.equal(value, one.state_dict()[key]), key
    with torch.no_grad():
        next(two.members[0].parameters()).add_(1.0)  # as if the two CNNs had trained apart
    ensemble = WeightedEnsemble([one.eval(), two.eval()], [0.5, 0.5], ["t1", "t2"])
    save_ensemble(ensemble, tmp_path / "e")
    assert len(list((tmp_path / "e" / MEMBERS_DIR).glob("*.safetensors"))) == 3  # two CNNs, one text member
    loaded = load_predictor(tmp_path / "e")
    inputs = data.splits["test"].inputs
    assert torch.allclose(loaded.predict_raw(inputs), ensemble.predict_raw(inputs), atol=1e-6)
