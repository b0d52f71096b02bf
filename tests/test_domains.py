"""Cross-domain transfer: the adaptation terms against references written out here, the data's
domains (unlabelled target rows never trained on or scored), the bad inputs, and (slow) a real
two-domain search end to end through the CLI, read back from MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from search.cli import main
from search.spec.schema import load_spec
from search.run.preflight import load_data
from trainables.adaptation import Adapter
from trainables.data import ADAPT, Dataset

FUSION_SEARCH = str(Path(sys.executable).parent / "fusion-search")


# ------------------------------------------------------------------ the terms, against references


def coral_reference(source: np.ndarray, target: np.ndarray) -> float:
    """Deep CORAL (Sun & Saenko 2016): ||C_S - C_T||_F^2 / (4 d^2), C the unbiased covariance."""
    d = source.shape[1]
    return float(((np.cov(source, rowvar=False) - np.cov(target, rowvar=False)) ** 2).sum() / (4 * d * d))


def mmd_reference(source: np.ndarray, target: np.ndarray) -> float:
    """DAN's multi-kernel MMD as skada computes it: k(a, b) = sum_s exp(-||a - b|| / s) over 33
    bandwidths s = m 2^(i/2 - 8), m the median distance between source rows (pairs with themselves
    included); the biased estimate."""
    def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    pairs = np.sort(distances(source, source).ravel())
    median = pairs[(len(pairs) - 1) // 2] + 1e-7  # the lower middle value, as torch.median takes it
    sigmas = median * 2.0 ** (np.arange(33) / 2 - 8)

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.exp(-distances(a, b)[None] / sigmas[:, None, None]).sum(0)

    return float(kernel(source, source).mean() + kernel(target, target).mean() - 2 * kernel(source, target).mean())


def features(seed: int, rows: int = 48, width: int = 6, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, width, generator=generator, dtype=torch.float64) * scale + shift


def test_coral_is_the_reference_zero_for_one_distribution_and_grows_with_a_covariance_shift():
    source = features(0)
    adapter = Adapter("coral", 1.0, 6)
    assert adapter(source, source).item() == pytest.approx(0.0, abs=1e-9)
    values = []
    for scale in (1.0, 1.5, 2.0, 3.0):
        target = features(1, scale=scale)
        value = adapter(source, target).item()
        assert value == pytest.approx(coral_reference(source.numpy(), target.numpy()), rel=1e-4)
        values.append(value)
    assert values == sorted(values) and values[-1] > 10 * values[0]


def test_mmd_is_the_reference_and_grows_with_a_mean_shift():
    # 24 rows: torch.cdist computes distances directly up to 25 rows (beyond, through a matrix
    # product whose float32 error on a row's distance to itself the narrowest kernels magnify)
    source = features(0, rows=24)
    adapter = Adapter("mmd", 1.0, 6)
    values = []
    for shift in (0.0, 0.5, 1.5):
        target = features(1, rows=24, shift=shift)
        value = adapter(source, target).item()
        assert value == pytest.approx(mmd_reference(source.numpy(), target.numpy()), rel=1e-4)
        values.append(value)
    assert values == sorted(values)


def test_the_weight_scales_the_term():
    source, target = features(0), features(1, scale=2.0)
    assert Adapter("coral", 2.5, 6)(source, target).item() == pytest.approx(2.5 * Adapter("coral", 1.0, 6)(source, target).item())


def test_dann_reverses_the_gradient_into_the_features_and_trains_its_classifier_forwards():
    """The gradient reaching the features is minus the domain classifier's own; its classifier
    gets the plain gradient (it learns to tell the domains apart)."""
    torch.manual_seed(0)
    adapter = Adapter("dann", 1.0, 6)
    source, target = features(0).float().requires_grad_(), features(1, shift=1.0).float().requires_grad_()
    adapter(source, target).backward()
    reversed_source, head_grads = source.grad.clone(), [p.grad.clone() for p in adapter.parameters()]

    plain_source, plain_target = source.detach().clone().requires_grad_(), target.detach().clone().requires_grad_()
    adapter.zero_grad()
    joined = torch.cat([plain_source, plain_target])
    domains = torch.cat([torch.zeros(len(plain_source)), torch.ones(len(plain_target))])
    torch.nn.functional.binary_cross_entropy_with_logits(adapter.domain(joined).squeeze(-1), domains).backward()
    assert torch.allclose(reversed_source, -plain_source.grad)
    assert reversed_source.abs().sum() > 0
    for reversed_grad, p in zip(head_grads, adapter.parameters(), strict=True):
        assert torch.allclose(reversed_grad, p.grad)


def test_only_dann_has_parameters():
    assert [sum(p.numel() for p in Adapter(m, 1.0, 6).parameters()) > 0 for m in ("coral", "mmd", "dann")] == [False, False, True]


# ------------------------------------------------------------------ data with domains


def write_manifest(folder: Path, rows: list[dict[str, object]]) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, row in enumerate(rows):
        name = f"images/{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / name)
        row["image"] = name
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def domain_rows(source: int = 60, labelled_target: int = 20, unlabelled: int = 30) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = [{"text": f"source row {i}", "domain": "studio", "label": ["a", "b"][i % 2]} for i in range(source)]
    rows += [{"text": f"labelled target row {i}", "domain": "phone", "label": ["a", "b"][i % 2]} for i in range(labelled_target)]
    rows += [{"text": f"unlabelled target row {i}", "domain": "phone", "label": ""} for i in range(unlabelled)]
    return rows


def domain_spec(manifest: Path, **data: object) -> dict[str, object]:
    return {
        "name": "domains",
        "data": {
            "source": "manifest", "path": str(manifest),
            "columns": {"image": "image", "text": "text", "label": "label", "domain": "domain"},
            "domains": {"source": ["studio"], "target": ["phone"]},
            **data,
        },
        "members": [{"name": "cnn", "kind": "small_cnn", "input": "image", "params": {"channels": 4, "image_size": 8}}],
        "fusion": {"min_members": 1, "operators": {"weighted": {}}},
        "hyperparameters": {"epochs": 1, "adaptation": ["none", "coral"]},
        "budget": {"num_samples": 1},
    }


def test_unlabelled_target_rows_are_only_in_the_adapt_split(tmp_path, write_spec):
    spec = load_spec(write_spec(domain_spec(write_manifest(tmp_path, domain_rows()))))
    data = load_data(spec)
    texts = {name: list(split.inputs["text"]) for name, split in data.splits.items()}
    assert all(t.startswith("source") for t in texts["train"]), "training rows are the source's"
    assert sorted(texts[ADAPT]) == sorted(f"unlabelled target row {i}" for i in range(30))
    assert all(t.startswith("labelled target") for t in texts["val"]), "labelled target rows validate"
    assert not any(t.startswith("unlabelled") for name in ("train", "val", "test") for t in texts[name])
    target_test = [t for t, is_target in zip(texts["test"], data.domains.test_target, strict=True) if is_target]
    assert target_test and all(t.startswith("labelled target") for t in target_test)
    assert sorted(texts["val"] + target_test) == sorted(f"labelled target row {i}" for i in range(20))
    assert data.domains.validation == "target"
    assert data.domains.counts == {"source": 60, "target labelled": 20, "target unlabelled": 30}


def test_the_split_column_places_labelled_target_rows(tmp_path, write_spec):
    """With a split column, a labelled target row validates or tests where it says; one it puts in
    train is read without its label, beside the unlabelled ones."""
    rows = domain_rows(labelled_target=12, unlabelled=6)
    for i, row in enumerate(rows):
        row["split"] = ["train", "train", "train", "val", "test"][i % 5] if row["domain"] == "studio" else ["val", "test", "train"][i % 3]
    spec = domain_spec(write_manifest(tmp_path, rows))
    spec["data"]["columns"]["split"] = "split"
    data = load_data(load_spec(write_spec(spec)))
    texts = {name: list(split.inputs["text"]) for name, split in data.splits.items()}
    target = [r for r in rows if r["domain"] == "phone"]
    assert texts["val"] == [r["text"] for r in target if r["split"] == "val" and r["label"] != ""]
    target_test = [t for t, is_target in zip(texts["test"], data.domains.test_target, strict=True) if is_target]
    assert target_test == [r["text"] for r in target if r["split"] == "test" and r["label"] != ""]
    put_in_train = [r["text"] for r in target if r["split"] == "train" and r["label"] != ""]
    assert put_in_train and set(put_in_train) <= set(texts[ADAPT])
    assert all(t.startswith("source") for t in texts["train"])


def test_without_labelled_target_rows_the_source_validates(tmp_path, write_spec):
    spec = load_spec(write_spec(domain_spec(write_manifest(tmp_path, domain_rows(labelled_target=0)))))
    data = load_data(spec)
    assert data.domains.validation == "source"
    assert all(t.startswith("source") for t in data.splits["val"].inputs["text"])
    assert "no labelled target rows: the objective is computed on source validation rows" in data.domains.words()


NO_DOMAINS = {"columns": {"image": "image", "text": "text", "label": "label"}, "domains": None}
BAD = [
    ({"domains": {"source": ["studio", "scanner"], "target": ["phone"]}}, {}, "data.domains.source: no row has domain 'scanner'"),
    ({"domains": {"source": ["studio"], "target": ["phone", "tablet"]}}, {}, "data.domains.target: no row has domain 'tablet'"),
    ({"domains": {"source": ["studio"], "target": ["studio"]}}, {}, "domain 'studio' is in both source and target"),
    ({**NO_DOMAINS, "adaptation": "none"}, {}, "empty label (a row without one belongs to a target domain: set data.columns.domain)"),
    ({}, {"unlabelled": 0}, "hyperparameters.adaptation: the data has no target rows without a label"),
    ({"columns": {"image": "image", "text": "text", "label": "label", "domain": "region"}}, {}, "no column 'region'"),
]


@pytest.mark.parametrize("data,rows,expected", BAD, ids=["absent source", "absent target", "in both", "no domain column", "nothing to adapt to", "no such column"])
def test_bad_domains_are_one_line_before_any_trial(tmp_path, write_spec, capsys, data, rows, expected):
    changes = dict(data)
    adaptation = changes.pop("adaptation", None)
    spec = domain_spec(write_manifest(tmp_path, domain_rows(**rows)), **changes)
    spec["data"] = {k: v for k, v in spec["data"].items() if v is not None}
    if adaptation is not None:
        spec["hyperparameters"]["adaptation"] = adaptation
    assert main(["validate", str(write_spec(spec))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_adaptation_without_domains_is_refused(spec_dict, write_spec, capsys):
    spec_dict["hyperparameters"]["adaptation"] = "coral"
    assert main(["validate", str(write_spec(spec_dict))]) == 2
    assert "adaptation needs target rows: set data.columns.domain and data.domains" in capsys.readouterr().err


# ------------------------------------------------------------------ a real two-domain search


@pytest.mark.slow
def test_a_two_domain_search_reports_each_domain_and_serves_a_plain_champion(tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from examples.domains.make_data import build

    manifest = build(tmp_path / "data")
    spec = yaml.safe_load((Path(__file__).parents[1] / "examples" / "domains" / "digits_domains.yaml").read_text())
    spec["data"]["path"] = str(manifest)
    spec["members"] = spec["members"][:1]  # the CNN: a quick search
    spec.update(storage=str(tmp_path / "store"), budget={"num_samples": 4, "max_concurrent": 2})
    spec["hyperparameters"].update(epochs=2, adaptation=["coral", "dann", "none"])
    spec["scheduler"] = {"type": "fifo"}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    done = subprocess.run([FUSION_SEARCH, "run", str(path)], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "validation: target (labelled target rows)" in done.stdout
    assert "target rows labelled and" in done.stdout

    loaded = load_spec(path)
    client = MlflowClient(loaded.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(loaded.name).experiment_id], max_results=50)
    parent = next(r for r in runs if r.data.tags["fusion_search.role"] == "search")
    trials = [r for r in runs if r.data.tags["fusion_search.role"] == "trial"]
    assert {r.data.params.get("adaptation", "none") for r in trials} - {"none"}, "some trial adapted"
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, "test_table.json", str(tmp_path))).read_text())
    models = [label for label in table if " on " not in label]
    assert "champion" in models
    for label in models:
        assert {f"{label} on source", f"{label} on target"} <= set(table), label
    assert {"adabn", "adabn on target", "best trial on target"} <= set(table), "the AdaBN candidate is a row"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/domain_projection.png" in artifacts
    panels = json.loads(Path(client.download_artifacts(parent.info.run_id, "domain_projection.json", str(tmp_path))).read_text())
    assert panels and panels[-1]["label"] == "best trial" and all(len(p["source"]) and len(p["target"]) and p["gap"] > 0 for p in panels)
    data = load_data(loaded)
    target_rows = int(data.domains.test_target.sum())
    champion = table["champion on target"]["test_accuracy"]
    assert round(champion * target_rows) == pytest.approx(champion * target_rows, abs=1e-6), "a share of the target test rows"

    mlflow.set_tracking_uri(loaded.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{loaded.name}@champion")
    frame = pd.DataFrame({"image": [str(manifest.parent / f"images/{i:04d}.png") for i in range(5)]})
    predicted = np.asarray(model.predict(frame))
    assert predicted.shape == (5, 10) and np.allclose(predicted.sum(axis=1), 1.0, atol=1e-5), "class probabilities, as without domains"
    assert [i.name for i in model.metadata.get_input_schema().inputs] == ["image"], "it reads the image alone: no domain, nothing of training"


# ------------------------------------------------------------------ training with a term


def digits_with_target_rows() -> Dataset:
    """The digits with an ``adapt`` split: the test rows drawn brighter and shifted, labelled with a
    class that does not exist (any supervised loss that read them would fail)."""
    from trainables.data import Split, load_dataset
    from trainables.sources import SourceOptions

    data = load_dataset("digits", SourceOptions(), 0.2, 0.2, seed=0)
    test = data.splits["test"]
    shifted = {"image": (test.inputs["image"] * 0.5 + 0.4).roll(1, dims=-1), "flat": test.inputs["flat"] * 0.5 + 0.4}
    data.splits[ADAPT] = Split(shifted, torch.full_like(test.labels, 10_000))
    return data


def adapting_plan(data, adaptation: str, epochs: int = 2):
    from trainables.composite import CompositeDescription, MemberDescription
    from trainables.training import TrialPlan

    composite = CompositeDescription(
        members=[MemberDescription("cnn", "small_cnn", "image", {"channels": 8}), MemberDescription("mlp", "mlp", "flat", {"hidden": 32})],
        operator="concat_mlp", operator_params={"hidden": 16}, num_classes=data.num_classes, class_names=data.class_names,
        inputs=data.inputs, dropout=0.1,
    )
    return TrialPlan(composite, lr=3e-3, weight_decay=1e-4, epochs=epochs, batch_size=128, seed=5, adaptation=adaptation, adaptation_weight=1.0)


@pytest.mark.parametrize("adaptation", ["coral", "mmd", "dann"])
def test_a_term_changes_training_and_never_reads_target_labels(adaptation):
    from trainables.training import fit

    data = digits_with_target_rows()
    plain = fit(adapting_plan(data, "none", epochs=1), data)
    adapted = fit(adapting_plan(data, adaptation, epochs=1), data)
    assert any(not torch.equal(a, b) for a, b in zip(plain.state_dict().values(), adapted.state_dict().values(), strict=True))
    assert plain.state_dict().keys() == adapted.state_dict().keys(), "the model's shape does not change"


def test_a_dann_trial_resumes_exactly_with_its_domain_classifier(tmp_path):
    """1 epoch, checkpoint, restore, 1 more == 2 straight epochs: the same weights, and the same
    domain classifier (kept in the checkpoint beside the model)."""
    from trainables.checkpoint import restore_checkpoint, write_checkpoint
    from trainables.training import BestWeights, fit

    data = digits_with_target_rows()
    plan = adapting_plan(data, "dann")
    straight = {}
    full = fit(plan, data, on_epoch=lambda e, m, model, opt, out: straight.update(adapter=out.adapter))

    best = BestWeights("val_log_loss", "min")

    def after_one(epoch, metrics, model, optimizer, outputs):
        best.update(epoch, metrics, model)
        write_checkpoint(tmp_path / "ckpt", epoch, model, optimizer, best, {}, None, outputs.adapter)

    fit(adapting_plan(data, "dann", epochs=1), data, on_epoch=after_one)
    model, optimizer, start, _, adapter = restore_checkpoint(tmp_path / "ckpt", plan, BestWeights("val_log_loss", "min"))
    assert start == 2 and adapter is not None
    resumed = fit(plan, data, model=model, optimizer=optimizer, start_epoch=start, adapter=adapter)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(straight["adapter"].state_dict().values(), adapter.state_dict().values(), strict=True):
        assert torch.equal(a, b)
