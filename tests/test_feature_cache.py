"""The feature cache: fingerprints, reuse, recomputation of bad entries, one computation under concurrency,
and trials on cached features train exactly as trials that run the backbone."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import ray

from search.candidates.candidate import Costs
from search.run.features import DriverThreads, MemberFailed, PassRunner, RayTasks, recipes, start_features
from search.spec.schema import Resources, Spec, parse_spec
from tests.counting import logged_rows, save_weights
from trainables.composite import CompositeDescription, MemberDescription, trained_state
from trainables.cost import timing_key
from trainables.data import Dataset, Split, load_dataset
from trainables.feature_cache import (
    CacheKey,
    CachedMember,
    FeatureCache,
    Shard,
    ShardedRows,
    column_fingerprint,
    member_fingerprint,
    shard_ranges,
)
from trainables.members import BuildContext, build_member, run_member
from trainables.metrics import LATENCIES
from trainables.preprocess import ImageRef
from trainables.sources import SourceOptions
from trainables.training import TrialPlan, build_model, fit, frozen_features

KEY = CacheKey("m" * 64, "d" * 64)


def test_entry_is_computed_once_then_read(tmp_path):
    cache = FeatureCache(tmp_path)
    calls = []
    first, computed = cache.get_or_compute(KEY, lambda: calls.append(1) or torch.arange(6.0).view(3, 2))
    again, recomputed = cache.get_or_compute(KEY, lambda: calls.append(1) or torch.zeros(3, 2))
    assert computed and not recomputed and calls == [1]
    assert torch.equal(first, again)
    assert not list(tmp_path.glob("*.partial")), "no temporary file left behind"


def test_entry_for_other_inputs_is_recomputed(tmp_path, capsys):
    cache = FeatureCache(tmp_path)
    cache.get_or_compute(KEY, lambda: torch.ones(2, 2))
    other = replace(KEY, data="e" * 64)
    cache.path(KEY).rename(cache.path(other))  # a file under the wrong name: its recorded key differs
    features, computed = cache.get_or_compute(other, lambda: torch.zeros(2, 2))
    assert computed and torch.equal(features, torch.zeros(2, 2))
    assert "was written for different inputs; recomputing" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_entry_is_recomputed_and_reported(tmp_path, capsys, damage):
    cache = FeatureCache(tmp_path)
    cache.get_or_compute(KEY, lambda: torch.ones(4, 3))
    raw = bytearray(cache.path(KEY).read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw[-1] ^= 0xFF  # a bit flip in the tensor data: only the checksum sees it
    cache.path(KEY).write_bytes(bytes(raw))
    features, computed = cache.get_or_compute(KEY, lambda: torch.full((4, 3), 2.0))
    assert computed and torch.equal(features, torch.full((4, 3), 2.0))
    assert "is corrupt" in capsys.readouterr().err
    assert torch.equal(cache.read(KEY)[0], features), "the good entry replaced the bad one"


def _ask(barrier: multiprocessing.synchronize.Barrier, root: str, log: str, out: str) -> None:
    """One process asking for the shared entry at the moment the others do; its computation is slow and logged."""
    import time

    def compute() -> torch.Tensor:
        with open(log, "a") as handle:
            handle.write("1\n")
        time.sleep(1.0)
        return torch.arange(12.0).view(4, 3)

    cache = FeatureCache(Path(root))
    barrier.wait()
    features, _ = cache.get_or_compute(KEY, compute)
    np.save(out, features.numpy())


def test_concurrent_requests_compute_once(tmp_path):
    """Three processes ask for one entry at once: one computes, the others wait and read its file."""
    context = multiprocessing.get_context("spawn")
    log = tmp_path / "computations.log"
    outs = [tmp_path / f"out{i}.npy" for i in range(3)]
    barrier = context.Barrier(3)  # all three ask together: the lock, not start-up order, decides who computes
    workers = [context.Process(target=_ask, args=(barrier, str(tmp_path / "cache"), str(log), str(o))) for o in outs]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert logged_rows(log) == [1], "exactly one process computed"
    for out in outs:
        np.testing.assert_array_equal(np.load(out), np.arange(12.0).reshape(4, 3))


def test_fingerprints_follow_weights_preprocessing_and_data(tiny_hf_dir):
    context = BuildContext("text", ())
    params = {"model": str(tiny_hf_dir), "max_length": 16}
    a = build_member("t", "hf_text", "text", context, params, "frozen")
    b = build_member("t", "hf_text", "text", context, params, "frozen")
    assert member_fingerprint(a, "hf_text", params) == member_fingerprint(b, "hf_text", params)
    shorter = {**params, "max_length": 8}
    c = build_member("t", "hf_text", "text", context, shorter, "frozen")
    assert member_fingerprint(c, "hf_text", shorter) != member_fingerprint(a, "hf_text", params)
    with torch.no_grad():
        next(b.parameters()).add_(1e-3)
    assert member_fingerprint(b, "hf_text", params) != member_fingerprint(a, "hf_text", params)
    assert column_fingerprint(["a b", "c"]) != column_fingerprint(["a", "b c"])
    assert column_fingerprint(torch.zeros(2, 3)) != column_fingerprint(torch.zeros(3, 2))
    assert column_fingerprint([ImageRef.read(b"one")]) != column_fingerprint([ImageRef.read(b"two")])
    assert column_fingerprint([ImageRef.read(b"one")]) == column_fingerprint([ImageRef("/elsewhere.png", ImageRef.read(b"one").digest)])


def test_sharded_rows_gather_across_shards_from_memory_maps(tmp_path):
    cache = FeatureCache(tmp_path)
    parts = [torch.arange(i * 30.0, i * 30.0 + 30.0).view(10, 3) for i in range(3)]
    shards = []
    for i, part in enumerate(parts):
        key = CacheKey("m" * 64, f"{i}" * 64)
        cache.get_or_compute(key, lambda part=part: part)
        shards.append(Shard(str(cache.path(key)), 10))
    rows = ShardedRows(shards)
    whole = torch.cat(parts).numpy()
    order = [29, 0, 10, 9, 11, 20, 5]
    np.testing.assert_array_equal(rows.take(order), whole[order])
    assert len(rows) == 30 and all(isinstance(m, np.memmap) for m in rows.maps)


@pytest.mark.parametrize("rows", [0, 1, 63, 360, 1077, 40_000, 1_000_000])
def test_shards_cover_a_split_once_finely_enough_for_every_core(rows):
    shards = shard_ranges(rows)
    assert [r for s in shards for r in s] == list(range(rows))
    assert all(64 <= len(s) <= 2048 for s in shards[:-1])
    assert len(shards) >= min(16, rows // 64), "a small split still gives every core of a small cluster work"
    if rows >= 16 * 2048:
        assert all(len(s) == 2048 for s in shards[:-1]), "large splits use whole 2,048-row shards"


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", SourceOptions(), 0.2, 0.2, seed=0)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(params=["driver threads", "ray tasks"])
def runner(request, local_ray) -> PassRunner:
    """Each place the cache pass runs: threads of the driver (the embedded instance) or Ray tasks (a cluster)."""
    return DriverThreads(2, 1) if request.param == "driver threads" else RayTasks(Resources())


def counting_plan(digits, weights: Path, log: Path, operator: str = "stacking") -> TrialPlan:
    members = [
        MemberDescription("enc", "checkpoint", "flat", counting_params(log), "frozen"),
        MemberDescription("mlp", "mlp", "flat", {"hidden": 32, "layers": 1}),
    ]
    params = {"folds": 3, "l2": 1e-3} if operator == "stacking" else {"hidden": 16}
    composite = CompositeDescription(members, operator, params, digits.num_classes, digits.class_names, digits.inputs)
    return TrialPlan(composite, lr=0.01, weight_decay=0.0, epochs=2, batch_size=128, seed=0, member_weights={"enc": str(weights)})


def counting_params(log: Path) -> dict:
    return {"factory": "tests.counting:counting_encoder", "args": {"log": str(log)}}


def counting_spec(tmp_path: Path, weights: Path, log: Path, **fields) -> Spec:
    """A search over the counting encoder, frozen (``fields`` added to the spec)."""
    return parse_spec(
        {
            "name": "cache-test",
            "data": {"source": "digits"},
            "members": [{"name": "enc", "kind": "checkpoint", "input": "flat", "params": counting_params(log), "weights": str(weights), "train": "frozen"}],
            "fusion": {"operators": {"stacking": {}}},
            "budget": {"num_samples": 1},
            "storage": str(tmp_path / "store"),
            **fields,
        },
        tmp_path,
    )


def cache_features(tmp_path: Path, digits, weights: Path, log: Path, runner: PassRunner) -> tuple[dict[str, CachedMember], list]:
    """The driver's cache pass (one piece of work per shard, on ``runner``) for the counting encoder,
    as a search runs it (without cost: the member runs only on the rows)."""
    features, reports, latencies = start_features(counting_spec(tmp_path, weights, log, measure_cost=False), digits, runner).wait()
    assert latencies == {}, "nothing timed in a search that measures no cost"
    return features, reports


def test_the_cache_pass_times_each_member_for_the_candidates(tmp_path, digits, runner):
    """A search that measures cost (the default) times each frozen member in the cache pass, once per
    batch size the spec lists; the cost of a composite after the trials reads those timings and
    runs the member on no row again."""
    weights, log = save_weights(tmp_path / "enc.safetensors"), tmp_path / "rows.log"
    spec = counting_spec(tmp_path, weights, log, hyperparameters={"batch_size": [32, 128]})
    _, _, latencies = start_features(spec, digits, runner).wait()
    described = MemberDescription("enc", "checkpoint", "flat", counting_params(log), "frozen")
    assert set(latencies) == {timing_key(described, 32), timing_key(described, 128)}
    for timed in latencies.values():
        assert set(timed) == set(LATENCIES) and 0 < timed["latency_ms_p50"] <= timed["latency_ms_p95"]
    ran = sum(logged_rows(log))
    assert ran > digits.rows, "the timing ran the member beyond the rows"
    plan = replace(counting_plan(digits, weights, log), batch_size=128)
    cost = Costs(digits, True, latencies).of(plan, {}, lambda: build_model(plan))
    assert sum(logged_rows(log)) == ran, "the member was not timed again"
    assert cost["latency_ms_p50"] > latencies[timing_key(described, 128)]["latency_ms_p50"], "the member's and the head's"


@pytest.mark.parametrize("operator", ["stacking", "concat_mlp"])
def test_trial_on_cached_features_trains_exactly_like_one_without(tmp_path, digits, runner, operator):
    """The same plan, backbone run in the trial or features from the cache (several shards a split): the
    same metrics and weights, no backbone in the cached trial, and no frozen weights in what a checkpoint keeps."""
    weights, log = save_weights(tmp_path / "enc.safetensors"), tmp_path / "rows.log"
    plan = counting_plan(digits, weights, log, operator)
    features, [report] = cache_features(tmp_path, digits, weights, log, runner)
    assert report.rows_computed == report.rows == digits.rows and sum(logged_rows(log)) == digits.rows
    assert len(features["enc"].splits["train"]) == 16, "1,077 training rows in 16 shards of 68 (the last 57)"
    log.unlink()

    direct: list[dict] = []
    model = fit(plan, digits, on_epoch=lambda e, m, *_: direct.append(m))
    assert sum(logged_rows(log)) == len(digits.splits["train"]) + len(digits.splits["val"])
    log.unlink()
    cached: list[dict] = []
    stand_in = fit(plan, digits, on_epoch=lambda e, m, *_: cached.append(m), features=features)
    assert not log.exists(), "the cached trial never ran the backbone"
    assert [m["val_log_loss"] for m in cached] == pytest.approx([m["val_log_loss"] for m in direct], abs=1e-6)
    assert not any(k.startswith("members.0.") for k in trained_state(model))
    for k, v in trained_state(model).items():
        torch.testing.assert_close(v, trained_state(stand_in)[k], atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in stand_in.members[0].parameters()) == 0


def test_a_fold_of_the_training_split_reads_the_cached_features_of_its_own_rows(tmp_path, digits, runner):
    """Out-of-fold refits (``ensemble.cv``): a model trained on two folds of train from cached features
    trains and predicts the held-out fold as one that runs the backbone on those rows."""
    from search.candidates.out_of_fold import HELD_OUT, fold_data
    from trainables.data import stratified_folds
    from trainables.training import predict_split

    weights, log = save_weights(tmp_path / "enc.safetensors"), tmp_path / "rows.log"
    plan = counting_plan(digits, weights, log, "concat_mlp")
    features, _ = cache_features(tmp_path, digits, weights, log, runner)
    held = np.flatnonzero(stratified_folds(digits.splits["train"].labels, 3).numpy() == 0)
    data, fold_features = fold_data(digits, features, held)
    assert len(data.splits["train"]) + len(data.splits[HELD_OUT]) == len(digits.splits["train"]) and len(data.splits[HELD_OUT]) == len(held)
    log.unlink()
    cached = fit(plan, data, features=fold_features)
    cached_proba = predict_split(cached, plan, data, HELD_OUT, fold_features)
    assert not log.exists(), "the fold's rows came from the cache"
    direct = fit(plan, data)
    direct_proba = predict_split(direct, plan, data, HELD_OUT, None)
    torch.testing.assert_close(cached_proba, direct_proba, atol=1e-5, rtol=1e-5)


def test_texts_are_cached_shortest_first_and_each_row_reads_its_own_features(tmp_path, runner, tiny_hf_dir):
    """A text column's shards hold its texts in order of length (a shard's batch pads least); every
    split, and a fold picked from one, still reads each row's own features: those of the member run
    on that text alone."""
    texts = [" ".join(["odd", "even", "digit"][i % 3] for _ in range(1 + (i * 7) % 13)) for i in range(300)]
    rows = {"train": range(0, 180), "val": range(180, 240), "test": range(240, 300)}
    data = Dataset({n: Split({"text": [texts[i] for i in r]}, torch.tensor([i % 2 for i in r])) for n, r in rows.items()}, ["a", "b"])
    params = {"model": str(tiny_hf_dir), "max_length": 16}
    member = {"name": "words", "kind": "hf_text", "input": "text", "params": params, "train": "frozen"}
    spec = parse_spec(
        {"name": "texts", "data": {"source": "digits"}, "members": [member], "fusion": {"operators": {"stacking": {}}},
         "budget": {"num_samples": 1}, "storage": str(tmp_path / "store"), "measure_cost": False},
        tmp_path,
    )
    features, _, _ = start_features(spec, data, runner).wait()
    cached = features["words"]
    alone = build_member("words", "hf_text", "text", BuildContext("text", ()), params, "frozen")
    for name, split in data.splits.items():
        column = split.inputs["text"]
        in_shards = [column[i] for i in np.argsort(cached.places[name])]
        assert [len(t) for t in in_shards] == sorted(len(t) for t in column), f"{name}: shards hold the texts shortest first"
        assert in_shards != column, "the split's own order is not its texts' lengths"
        direct = torch.cat([run_member(alone, alone.prepare({"text": [text]})) for text in column]).numpy()
        np.testing.assert_allclose(cached.rows(name).take(range(len(split))), direct, atol=1e-5)
    fold = np.array([5, 170, 0, 99, 42])
    picked = replace(cached, picks={"fold": ("train", fold)}).rows("fold").take(range(len(fold)))
    direct = torch.cat([run_member(alone, alone.prepare({"text": [data.splits["train"].inputs["text"][i]]})) for i in fold]).numpy()
    np.testing.assert_allclose(picked, direct, atol=1e-5)


def test_second_request_reads_the_cache(tmp_path, digits, runner):
    weights, log = save_weights(tmp_path / "enc.safetensors"), tmp_path / "rows.log"
    first, [computed] = cache_features(tmp_path, digits, weights, log, runner)
    again, [read] = cache_features(tmp_path, digits, weights, log, runner)
    assert computed.rows_computed == digits.rows and read.rows_computed == 0
    assert sum(logged_rows(log)) == digits.rows
    for split in digits.splits:
        rows = range(len(digits.splits[split]))
        np.testing.assert_array_equal(first["enc"].rows(split).take(rows), again["enc"].rows(split).take(rows))
    other = save_weights(tmp_path / "other.safetensors", seed=1)
    _, [third] = cache_features(tmp_path, digits, other, log, runner)
    assert third.rows_computed == digits.rows, "other weights: other entries"


def test_a_member_that_fails_in_the_pass_is_that_members_failure(tmp_path, digits, runner):
    """A backbone that cannot read its input fails the pass as ``MemberFailed``, naming the member and
    the cause, wherever its shards ran."""
    from safetensors.torch import save_file

    from tests.counting import counting_encoder

    save_file(counting_encoder("unused", inputs=10).state_dict(), str(tmp_path / "narrow.safetensors"))
    spec = counting_spec(tmp_path, tmp_path / "narrow.safetensors", tmp_path / "rows.log", measure_cost=False)
    spec.members[0].params["args"]["inputs"] = 10  # the digits' flat input has 64 values
    with pytest.raises(MemberFailed) as failed:
        start_features(spec, digits, runner).wait()
    assert failed.value.member == "enc" and "mat1 and mat2 shapes cannot be multiplied" in failed.value.message


def test_the_driver_threads_build_each_member_once_for_the_composites_after_the_trials(tmp_path, digits, monkeypatch):
    """On the embedded instance the pass runs on the driver's threads: while the driver shares frozen
    members, each member is built once, on the CPU, and it is the module every composite built
    afterwards in the driver gets (the candidates, the logged models)."""
    import trainables.members as members

    weights, log = save_weights(tmp_path / "enc.safetensors"), tmp_path / "rows.log"
    spec = counting_spec(tmp_path, weights, log, measure_cost=False)
    made: list[str] = []
    build = members.build_member
    monkeypatch.setattr(members, "build_member", lambda name, *args: made.append(name) or build(name, *args))
    with members.sharing_frozen_members():
        start_features(spec, digits, DriverThreads(2, 1)).wait()
        [recipe] = recipes(spec.members, spec.seed, digits)
        built = recipe.member()
    assert made == ["enc"], "two threads ran the shards of one member, built once"
    assert built is recipe.build("cpu")[0] and next(built.parameters()).device.type == "cpu"
    assert sum(logged_rows(log)) == digits.rows


def test_a_member_that_trains_does_not_use_the_cache(tmp_path, digits):
    weights, log = save_weights(tmp_path / "enc.safetensors"), tmp_path / "rows.log"
    plan = counting_plan(digits, weights, log)
    features = {"enc": CachedMember(16, {}), "mlp": CachedMember(32, {})}
    assert set(frozen_features(plan, features)) == {"enc"}, "mlp trains in this plan"
    tuned = replace(plan, composite=replace(plan.composite, members=[replace(plan.composite.members[0], policy="full"), plan.composite.members[1]]))
    assert frozen_features(tuned, features) == {}


WHILE_THE_TRIALS_TRAIN = """
import sys
from pathlib import Path
from search.run.features import build_frozen_members, recipes
from search.spec.schema import parse_spec
from trainables.data import load_dataset
from trainables.members import sharing_frozen_members
from trainables.sources import SourceOptions

spec = parse_spec({
    "name": "warm", "data": {"source": "digits"},
    "members": [{"name": "effnet", "kind": "efficientnet_lite0", "input": "image", "params": {"image_size": 32}, "train": "frozen"},
                {"name": "mlp", "kind": "mlp", "input": "flat"}],
    "fusion": {"operators": {"weighted": {}}}, "budget": {"num_samples": 1}, "storage": sys.argv[1],
}, Path("."))
data = load_dataset("digits", SourceOptions(), 0.2, 0.2, seed=0)
before = "torchvision" in sys.modules
with sharing_frozen_members():
    build_frozen_members(spec, data)
    [recipe] = recipes(spec.members, spec.seed, data)
    shared = recipe.member() is recipe.member()
print(before, "torchvision.transforms.v2" in sys.modules, shared)
"""


def test_the_driver_builds_frozen_members_and_loads_what_their_preparation_imports(tmp_path):
    """What the driver does on a thread while the trials train: each member the cache serves is built
    (the composites made after the search then share it) and a row of its input prepared, so that
    the libraries preparation imports (torchvision, to resize the digits for EfficientNet-Lite0)
    are not loaded when MLflow first checks the champion on raw rows."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", WHILE_THE_TRIALS_TRAIN, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["False", "True", "True"], "torchvision loaded by the warm-up, the member built once"
