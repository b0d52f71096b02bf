"""Never worse than a member alone: the fusion weights a trial learns, on a generated set where
one member reads the signal and the other pure noise."""

from __future__ import annotations

import pytest
import torch

from benchmarks.generated import signal_and_noise, signal_and_noise_spec
from trainables.composite import CompositeDescription, MemberDescription
from trainables.data import load_dataset
from trainables.sources import SourceOptions
from trainables.training import TrialPlan, fit


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = signal_and_noise(tmp_path_factory.mktemp("generated") / "signal_and_noise.npz")
    return load_dataset("npz", SourceOptions(path=path), 0.2, 0.2, seed=0)


def weighted_plan(data, epochs: int) -> TrialPlan:
    members = [
        MemberDescription("signal", "mlp", "signal", {"hidden": 32, "layers": 1}),
        MemberDescription("noise", "mlp", "noise", {"hidden": 32, "layers": 1}),
    ]
    operator = {"pool": "linear", "weight": [0.5, 0.5]}  # the search's sample: equal weights
    description = CompositeDescription(members, "weighted", operator, data.num_classes, data.class_names, data.inputs)
    return TrialPlan(description, lr=3e-3, weight_decay=0.0, epochs=epochs, batch_size=64, seed=0)


def test_weighted_fusion_drives_a_pure_noise_member_below_a_tenth_within_a_few_epochs(data):
    seen = []
    model = fit(weighted_plan(data, epochs=4), data, on_epoch=lambda epoch, metrics, m, *_: seen.append(m.fusion.weights.detach().clone()))
    first, last = seen[0], seen[-1]
    assert last[1] < 0.1, f"the noise member still weighs {last[1]:.3f} after 4 epochs (after the first: {first[1]:.3f})"
    assert torch.all(torch.diff(torch.stack(seen)[:, 1]) < 0), "its weight falls every epoch"
    assert torch.isclose(model.fusion.weights.sum(), torch.tensor(1.0))


def test_weights_saved_before_they_were_learned_still_load(data):
    model = fit(weighted_plan(data, epochs=1), data)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("fusion.logits")}
    state["fusion.weights"] = torch.tensor([0.8, 0.2])  # the buffer an older version saved
    model.load_state_dict(state, strict=True)
    assert torch.allclose(model.fusion.weights, torch.tensor([0.8, 0.2]), atol=1e-6)


def test_coverage_tries_each_member_alone_then_each_subset_with_the_operators_in_turn():
    from search.run.space import coverage, describe_coverage, structures
    from search.spec.schema import FusionSpec, MemberSpec

    members = [MemberSpec(name=n, kind="mlp", input="flat") for n in ("a", "b", "c")]
    fused = FusionSpec(operators={"weighted": {}, "concat_mlp": {}}, min_members=2)
    first = coverage(members, fused)
    assert [s.words() for s in first] == [
        "a alone", "b alone", "c alone", "a+b via concat_mlp", "a+c via weighted", "b+c via concat_mlp", "a+b+c via weighted",
    ]
    assert len(structures(members, fused)) == 3 + 4 * 2
    line = describe_coverage(first, 11, budget=5)
    assert line.endswith("not tried, for a budget of 5: b+c via concat_mlp, a+b+c via weighted")
    kept_out = FusionSpec(operators={"weighted": {}}, min_members=2, members_alone=False)
    assert all(s.operator is not None for s in coverage(members, kept_out))
    singles = FusionSpec(operators={"weighted": {}, "concat_mlp": {}}, min_members=1)
    first = coverage(members, singles)  # a single member via weighted is that member alone
    assert [s.words() for s in first[:3]] == ["a via concat_mlp", "b alone", "c via concat_mlp"] and len(first) == 7


def parent_of(spec_path):
    from mlflow.tracking import MlflowClient

    from search.spec.schema import load_spec

    spec = load_spec(spec_path)
    client = MlflowClient(spec.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(spec.name).experiment_id], filter_string="tags.`fusion_search.role` = 'search'")
    return client, runs[0]


@pytest.mark.slow
def test_a_member_alone_that_beats_every_fusion_is_a_candidate_the_champion_matches(tmp_path):
    """One member reads the signal, the other noise; fused trials need both (min_members: 2). The
    member alone is a trial and a candidate, and the champion is at least as good on validation."""
    import mlflow

    from tests.conftest import run_search_in

    path = signal_and_noise(tmp_path / "data" / "signal_and_noise.npz", rows=500, noise_width=256)
    spec = signal_and_noise_spec(path)
    client, parent = parent_of(run_search_in(tmp_path, spec))
    root = parent.info.artifact_uri
    stored = mlflow.artifacts.load_dict(f"{root}/candidates.json")
    alone = next(c for c in stored["candidates"] if c["candidate"] in ("signal alone", "best trial") and "alone" in c["fusion"] and "signal" in c["fusion"])
    champion = next(c for c in stored["candidates"] if c["champion"])
    assert champion["best_val_log_loss"] <= alone["best_val_log_loss"] + 1e-12, "never worse than a member alone on validation"
    concatenated = [c for c in stored["candidates"] if c["kind"] == "trial" and "via concat_mlp" in c["fusion"]]
    assert concatenated and all(c["best_val_log_loss"] > alone["best_val_log_loss"] for c in concatenated), "the data: concatenating noise hurts"
    marks = stored["marks"]
    assert marks["signal alone"] in ("yes", "champion", "= best trial"), "the member alone is a row, and a candidate"
    table = mlflow.artifacts.load_dict(f"{root}/test_table.json")
    assert {"signal alone", "noise alone", "best trial", "champion"} <= set(table)
    coverage = mlflow.artifacts.load_dict(f"{root}/coverage.json")
    assert {"signal alone", "noise alone"} <= set(coverage["tried"])


@pytest.mark.slow
def test_ten_trials_try_every_subset_and_operator_of_three_members(tmp_path):
    import mlflow

    from tests.conftest import TINY_SPEC, run_search_in

    members = [*TINY_SPEC["members"], {"name": "mlp2", "kind": "mlp", "input": "flat", "params": {"hidden": 16, "layers": 1}}]
    spec = {**TINY_SPEC, "name": "cover", "members": members, "budget": {"num_samples": 10, "max_concurrent": 2},
            "hyperparameters": {**TINY_SPEC["hyperparameters"], "epochs": 1},
            "weight_fusion": {"soups": False, "merges": [], "checkpoint_average": 0}, "report": {"baselines": False}}
    client, parent = parent_of(run_search_in(tmp_path, spec))
    trials = client.search_runs([parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(trials) == 10
    subsets = {r.data.params["members"] for r in trials}
    operators = {r.data.params["operator"] for r in trials}
    assert subsets == {"cnn", "mlp", "mlp2", "cnn+mlp", "cnn+mlp2", "mlp+mlp2", "cnn+mlp+mlp2"}
    assert operators == {"weighted", "concat_mlp"}
    coverage = mlflow.artifacts.load_dict(f"{parent.info.artifact_uri}/coverage.json")
    assert len(coverage["structures"]) == 7 * 2 and len(coverage["tried"]) >= 7  # a single member via weighted is that member alone
