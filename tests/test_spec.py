"""Spec validation: every bad input is one line naming the field, exit code 2, nothing started."""

from __future__ import annotations

import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from search.cli import main
from search.errors import SpecError
from search.spec.schema import load_spec, parse_spec
from search.run.record import open_experiment


def mutate(path: str, value: Any) -> Callable[[dict], None]:
    """Set (or, with ``...``, delete) the dotted ``path`` of a spec dict."""

    def apply(spec: dict) -> None:
        *parents, last = path.split(".")
        node: Any = spec
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is ...:
            del node[int(last) if isinstance(node, list) else last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return apply


BAD_SPECS = [
    ("missing name", mutate("name", ...), "name: required field is missing"),
    ("missing budget", mutate("budget", ...), "budget: required field is missing"),
    ("unknown top-level field", mutate("colour", "blue"), "colour: unknown field"),
    ("bad name", mutate("name", "has space"), "name:"),
    ("num_samples zero", mutate("budget.num_samples", 0), "budget.num_samples:"),
    ("num_samples not a number", mutate("budget.num_samples", "many"), "budget.num_samples:"),
    ("unknown member kind", mutate("members.0.kind", "transformer9000"), "members[0].kind: unknown member kind 'transformer9000'"),
    ("unknown member param", mutate("members.1.params", {"width": 3}), "members[1].params.width:"),
    ("missing torchvision arch", mutate("members.1", {"name": "tv", "kind": "torchvision", "input": "image"}), "members[1].params.arch:"),
    ("unknown torchvision arch", mutate("members.1", {"name": "tv", "kind": "torchvision", "input": "image", "params": {"arch": "resnet999"}}), "members[1].params.arch: torchvision has no"),
    ("duplicate member names", mutate("members.1.name", "cnn"), "members: name 'cnn' is used twice"),
    ("no members", mutate("members", []), "members:"),
    ("frozen is now a policy", mutate("members.0.frozen", True), "members[0].frozen: unknown field"),
    ("unknown training policy", mutate("members.0.train", "perhaps"), "members[0].train: training policy must be frozen, full or last_N"),
    ("policy list with a bad entry", mutate("members.0.train", ["frozen", "last_0"]), "members[0].train: training policy must be"),
    ("lr_scale zero", mutate("members.0.lr_scale", 0), "members[0].lr_scale: 0 is not a learning-rate multiplier"),
    ("unknown torchvision weights", mutate("members.1", {"name": "tv", "kind": "torchvision", "input": "image", "params": {"arch": "resnet18", "weights": "IMAGENET9K"}}), "members[1].params.weights: resnet18 has no weights 'IMAGENET9K' (known: IMAGENET1K_V1, DEFAULT)"),
    ("torchvision weights not cached", mutate("members.1", {"name": "tv", "kind": "torchvision", "input": "image", "params": {"arch": "resnet18", "weights": "DEFAULT"}}), "members[1].params.weights: ResNet18_Weights.IMAGENET1K_V1 is not in the torch hub cache"),
    ("two kinds of weights", mutate("members.1", {"name": "tv", "kind": "torchvision", "input": "image", "params": {"arch": "resnet18", "weights": "DEFAULT"}, "weights": "w.pt"}), "members[1].weights: give params.weights"),
    ("missing hf folder", mutate("members.1", {"name": "t", "kind": "hf_text", "input": "text", "params": {"model": "./no-such-model"}}), "members[1].params.model: no such folder"),
    ("hf name offline and not cached", mutate("members.1", {"name": "t", "kind": "hf_text", "input": "text", "params": {"model": "acme/no-such-model"}}), "members[1].params.model: 'acme/no-such-model' is not a local folder and not in the Hugging Face cache"),
    ("checkpoint class not importable", mutate("members.1", {"name": "c", "kind": "checkpoint", "input": "image", "params": {"factory": "acme_nets:Net"}}), "members[1].params.factory: cannot import 'acme_nets'"),
    ("member reads the wrong kind of input", mutate("members.1", {"name": "t", "kind": "minilm", "input": "image"}), "members[1] (t): cannot run on input 'image' (tensor [1, 8, 8]): member kind 'minilm' reads text inputs, not tensor"),
    ("unknown operator", mutate("fusion.operators", {"voodoo": {}}), "unknown fusion operator 'voodoo'"),
    ("a member width of the wrong type", mutate("members.1", {"name": "t", "kind": "tabular", "input": "table", "params": {"hidden": {"low": 8.5, "high": 64}}}), "members[1].params.hidden: takes integers"),
    ("a searched member that may be frozen", mutate("members.1", {"name": "t", "kind": "tabular", "input": "table", "train": ["frozen", "full"]}), "members[1].params.hidden: is searched, but the member may be frozen"),
    ("a numeric column that is the label", mutate("data", {"source": "manifest", "path": "m.csv", "columns": {"numeric": ["price", "label"]}}), "data.columns.numeric: 'label' is the label column"),
    ("a column named 'table' beside a table", mutate("data", {"source": "manifest", "path": "m.csv", "columns": {"text": ["table"], "categorical": "brand"}}), "data.columns.categorical: input 'table' is named twice (the input numeric and categorical columns form is 'table')"),
    ("no operators", mutate("fusion.operators", {}), "fusion.operators:"),
    ("unknown operator param", mutate("fusion.operators.concat_mlp", {"depth": 3}), "fusion.operators.concat_mlp.depth:"),
    ("float for int param", mutate("fusion.operators.concat_mlp", {"hidden": {"low": 1.5, "high": 8}}), "fusion.operators.concat_mlp.hidden: takes integers"),
    ("bad choice", mutate("fusion.operators.weighted", {"pool": ["median"]}), "fusion.operators.weighted.pool: takes"),
    ("min_members too large", mutate("fusion.min_members", 3), "fusion.min_members:"),
    ("inverted range", mutate("hyperparameters.lr", {"low": 0.1, "high": 0.01}), "hyperparameters.lr: low:"),
    ("log range from zero", mutate("hyperparameters.weight_decay", {"low": 0.0, "high": 0.1, "log": True}), "hyperparameters.weight_decay: low: a log range needs low > 0"),
    ("range missing high", mutate("hyperparameters.lr", {"low": 0.1}), "hyperparameters.lr: high: required"),
    ("epochs as text", mutate("hyperparameters.epochs", "ten"), "hyperparameters.epochs:"),
    ("negative batch size", mutate("hyperparameters.batch_size", -4), "hyperparameters.batch_size:"),
    ("dropout out of range", mutate("hyperparameters.dropout", 1.5), "hyperparameters.dropout:"),
    ("empty choice list", mutate("hyperparameters.batch_size", []), "hyperparameters.batch_size: a list of choices must not be empty"),
    ("unknown objective", mutate("objective.metric", "f1"), "objective.metric:"),
    ("objective direction", mutate("objective.mode", "max"), "objective.mode: val_log_loss must be minimised"),
    ("empty objective list", mutate("objective", []), "objective: give one objective ({metric, mode}) or a non-empty list of them"),
    ("objective as a word", mutate("objective", ["val_log_loss"]), "objective[0]: expected {metric, mode}, got 'val_log_loss'"),
    ("cost as the first objective", mutate("objective", [{"metric": "latency_ms_p95"}]), "objective[0].metric: the first objective picks each trial's best epoch"),
    ("cost maximised", mutate("objective", [{"metric": "val_accuracy"}, {"metric": "size_mb", "mode": "max"}]), "objective[1].mode: size_mb must be minimised, not maximised"),
    ("unknown second objective", mutate("objective", [{"metric": "val_accuracy"}, {"metric": "flops"}]), "objective[1].metric: 'flops' is not one of"),
    ("objective twice", mutate("objective", [{"metric": "val_accuracy"}, {"metric": "val_accuracy"}]), "objective: val_accuracy is listed twice"),
    ("unknown constraint", mutate("constraints", {"latency": {"max": 20}}), "constraints.latency: not a metric a trial reports"),
    ("constraint without bound", mutate("constraints", {"params_m": {}}), "constraints.params_m.max: give min, max or both"),
    ("inverted constraint", mutate("constraints", {"val_accuracy": {"min": 0.9, "max": 0.5}}), "constraints.val_accuracy.min: 0.9 is greater than max (0.5)"),
    ("cost needed but not measured", lambda s: s.update(measure_cost=False, constraints={"size_mb": {"max": 10}}), "measure_cost: false, but the search needs size_mb"),
    ("unknown sampler", mutate("sampler", "cmaes"), "sampler: 'cmaes' is not a sampler (samplers: tpe, nsga2, random)"),
    ("select with one objective", mutate("select", "knee"), "select: 'knee' picks a point of a Pareto front: it needs several objectives"),
    ("select an unknown rule", mutate("select", "fastest"), "select: 'fastest' is not a rule (rules: first, knee)"),
    ("grace period too long", mutate("scheduler.grace_period", 5), "scheduler.grace_period:"),
    ("unknown scheduler", mutate("scheduler.type", "pbt"), "scheduler.type:"),
    ("negative gpu", mutate("resources.gpu", -1), "resources.gpu:"),
    ("splits leave nothing", mutate("data.splits", {"val": 0.5, "test": 0.45}), "data.splits.test:"),
    ("unknown data source", mutate("data.source", "imagenet"), "data.source: unknown data source 'imagenet'"),
    ("missing data file", mutate("data", {"source": "npz", "path": "nowhere.npz"}), "data.path: no such file"),
    ("npz without path", mutate("data", {"source": "npz"}), "data.path: the npz source needs"),
    ("manifest without path", mutate("data", {"source": "manifest"}), "data.path: the manifest source needs a file"),
    ("imagefolder not a folder", mutate("data", {"source": "imagefolder", "path": "nowhere"}), "data.path: no such folder"),
    ("no input columns", mutate("data", {"source": "manifest", "path": "m.csv", "columns": {"image": None, "text": None}}), "data.columns.image: name an image, text, audio, numeric or categorical column"),
    ("bad rows policy", mutate("data.bad_rows", "ignore"), "data.bad_rows:"),
    ("duplicate classes", mutate("data.classes", ["a", "a"]), "data.classes: class names must be distinct"),
    ("missing weights file", mutate("members.0.weights", "missing.safetensors"), "members[0].weights: no such file"),
    ("input the data lacks", mutate("members.0.input", "audio"), "members[0].input: the data has no input 'audio'"),
    ("negative ensemble rounds", mutate("ensemble", {"rounds": -1}), "ensemble.rounds:"),
    ("zero ensemble top_k", mutate("ensemble", {"top_k": 0}), "ensemble.top_k:"),
    ("one fold", mutate("ensemble", {"cv": 1}), "ensemble.cv: 1 fold is no cross-validation"),
    ("feature_cache not a switch", mutate("feature_cache", "sometimes"), "feature_cache:"),
    ("reuse_actors not a switch", mutate("resources.reuse_actors", "maybe"), "resources.reuse_actors:"),
    ("unknown augmentation", mutate("members.0.augment", "mixup"), "members[0].augment: 'mixup' is not an augmentation (known: none, flip_crop, trivialaugment, randaugment, shift_gain, noise_snr10, noise_snr20, noise_snr30, specaugment)"),
    ("augmentation list with a bad entry", mutate("members.0.augment", ["none", "cutout"]), "members[0].augment: 'cutout' is not an augmentation"),
    ("augmentation as a range", mutate("members.0.augment", {"low": 0, "high": 1}), "members[0].augment: give an augmentation"),
    ("augmenting an always frozen member", mutate("members.0", {"name": "cnn", "kind": "small_cnn", "input": "image", "train": "frozen", "augment": "flip_crop"}), "members[0].augment: augmentation applies to members that train, and this one is always frozen"),
    ("augmenting numbers", mutate("members.1.augment", ["none", "flip_crop"]), "members[1].augment: 'flip_crop' does not apply to mlp, which reads tensor (it takes none)"),
    ("unknown precision", mutate("resources.precision", "fp8"), "resources.precision:"),
    ("fp16 without a GPU", mutate("resources.precision", "fp16"), "resources.precision: fp16 needs a GPU (resources.gpu > 0)"),
    ("negative data workers", mutate("resources.data_workers", -1), "resources.data_workers:"),
    ("unknown merge method", mutate("weight_fusion", {"merges": ["slerp"]}), "weight_fusion.merges[0]: Input should be 'linear', 'ties' or 'dare'"),
    ("no merge evaluations", mutate("weight_fusion", {"merge_trials": 0}), "weight_fusion.merge_trials:"),
    ("student of an unknown member", mutate("distill", {"members": ["cnn", "bert"]}), "distill.members: 'bert' is not a member (members: cnn, mlp)"),
    ("label weight above one", mutate("distill", {"label_weight": 1.5}), "distill.label_weight: give the share of the true labels in the targets (0 to 1)"),
    ("zero temperature", mutate("distill", {"temperature": 0}), "distill.temperature: give a temperature above 0"),
    ("no temperatures", mutate("distill", {"temperature": []}), "distill.temperature: give a temperature above 0, or a non-empty list of them"),
    ("threshold outside (0, 1)", mutate("decision_threshold", 1.5), "decision_threshold: 1.5 is not between 0 and 1"),
    ("threshold of a probability metric", mutate("decision_threshold", "val_roc_auc"), "decision_threshold: 'val_roc_auc' is not auto, a number between 0 and 1 or a metric of predicted classes (val_accuracy,"),
    ("threshold on ten classes", mutate("decision_threshold", "val_f1_macro"), "decision_threshold: 'val_f1_macro' applies to two classes; the data has 10"),
    ("an input named twice", mutate("data.columns", {"image": ["photo", "notes"], "text": ["notes"]}), "data.columns.text: input 'notes' is named twice (column names must be distinct)"),
    ("unknown class weight", mutate("hyperparameters.class_weight", "heavy"), "hyperparameters.class_weight: 'heavy' is not one of none, balanced"),
    ("class weight choice with a bad entry", mutate("hyperparameters.class_weight", ["none", "inverse"]), "hyperparameters.class_weight: 'inverse' is not one of none, balanced"),
    ("unknown metric", mutate("objective", {"metric": "val_f2"}), "objective.metric: 'val_f2' is not one of val_log_loss, val_accuracy, val_balanced_accuracy"),
    ("positive-class metric on ten classes", mutate("objective", {"metric": "val_f1"}), "objective[0].metric: val_f1 is the positive class's, for two classes; the data has 10 (use val_f1_macro)"),
    ("positive-class constraint on ten classes", mutate("constraints", {"val_recall": {"min": 0.5}}), "constraints.val_recall: val_recall is the positive class's, for two classes; the data has 10 (use val_recall_macro)"),
]


@pytest.mark.parametrize("mutation,expected", [b[1:] for b in BAD_SPECS], ids=[b[0] for b in BAD_SPECS])
def test_bad_spec_is_one_line_exit_2(spec_dict, write_spec, capsys, mutation, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("torch.hub._hub_dir", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    (tmp_path / "w.pt").write_bytes(b"")
    mutation(spec_dict)
    path = write_spec(spec_dict)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert expected in err
    # names the file; errors found while loading the data or building the members name the data file or the member
    assert str(path) in err or "data" in expected or "cannot run on input" in expected or "does not apply to" in expected


@pytest.mark.parametrize(
    "text,expected",
    [("name: [unclosed", "line 1"), ("- just\n- a list\n", "expected a mapping"), ("", "expected a mapping")],
)
def test_unparseable_spec(write_spec, capsys, text, expected):
    path = write_spec(text)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err


def test_missing_spec_file(capsys, tmp_path):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "no such spec file" in capsys.readouterr().err


def test_bad_run_starts_nothing(spec_dict, write_spec, tmp_path, monkeypatch):
    """A bad spec given to `run` exits 2 from a real process and leaves no store, study or Ray session."""
    monkeypatch.chdir(tmp_path)
    spec_dict["members"][0]["kind"] = "nope"
    spec_dict["storage"] = str(tmp_path / "store")
    path = write_spec(spec_dict)
    proc = subprocess.run(
        [sys.executable, "-m", "search.cli", "run", str(path)], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "members[0].kind" in proc.stderr
    assert not (tmp_path / "store").exists()
    assert "ray" not in proc.stderr.lower()


def test_good_spec_and_relative_paths(spec_dict, write_spec, tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    spec_dict["members"][0]["weights"] = "w.safetensors"
    path = write_spec(spec_dict)
    spec = load_spec(path)
    assert spec.members[0].weights == weights.resolve()
    assert spec.objectives.first.key == "best_val_log_loss" and not spec.objectives.tradeoff and not spec.measures_cost
    assert spec.tracking_uri.startswith("sqlite:///") and spec.tracking_uri.endswith("fusion_runs/mlflow.db")
    spec_dict["members"][0].pop("weights")
    assert main(["validate", str(write_spec(spec_dict))]) == 0
    assert "OK" in capsys.readouterr().out


EXAMPLES = sorted(p for p in (Path(__file__).parents[1] / "examples").rglob("*.yaml") if "fusion_runs" not in p.parts)  # not what a run there wrote


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_specs_validate_with_their_data(example, tmp_path, capsys):
    """Every spec under examples/ passes ``validate``: data read and checked, members built and run
    on two rows. An example with a ``make_data.py`` beside it gets the data that script writes."""
    copy = tmp_path / example.name
    copy.write_text(example.read_text())
    maker = example.parent / "make_data.py"
    if maker.exists():
        namespace = runpy.run_path(str(maker))
        namespace["build"](tmp_path / "data")
    assert main(["validate", str(copy)]) == 0, capsys.readouterr().err
    assert f"{copy}: OK: search {load_spec(copy).name!r}" in capsys.readouterr().out


def test_examples_include_the_multimodal_and_tabular_ones():
    assert {"digits", "digits_multimodal", "products"} <= {p.stem for p in EXAMPLES}


def test_run_refuses_resources_this_machine_lacks(spec_dict, write_spec, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    spec_dict["resources"] = {"cpu": 4096}
    spec_dict["storage"] = str(tmp_path / "store")
    assert main(["run", str(write_spec(spec_dict))]) == 2
    assert "resources.cpu: a trial asks for 4096 CPUs" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_npz_data_source(spec_dict, write_spec, tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    np.savez(tmp_path / "mine.npz", signal=rng.normal(size=(60, 5)).astype(np.float32), label=labels, class_names=np.array(["a", "b", "c"]))
    spec_dict["data"] = {"source": "npz", "path": "mine.npz"}
    spec_dict["members"] = [{"name": "m", "kind": "mlp", "input": "signal"}]
    assert main(["validate", str(write_spec(spec_dict))]) == 0
    assert "train 36, val 12, test 12" in capsys.readouterr().out

    (tmp_path / "mine.npz").write_bytes(b"not a zip file")
    assert main(["validate", str(write_spec(spec_dict))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data.path: ") and "mine.npz" in err and len(err.splitlines()) == 1

    np.savez(tmp_path / "mine.npz", signal=np.zeros((4, 2), np.float32))
    assert main(["validate", str(write_spec(spec_dict))]) == 2
    assert "no 'label' array" in capsys.readouterr().err



def test_member_that_cannot_read_its_input_fails_before_ray(spec_dict, write_spec, capsys):
    """inception_v3 needs images of at least 75 px: caught by the preflight, not by every trial."""
    spec_dict["members"][1] = {"name": "inc", "kind": "torchvision", "input": "image", "params": {"arch": "inception_v3", "image_size": 32}}
    assert main(["validate", str(write_spec(spec_dict))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: members[1] (inc): cannot run on input 'image' (tensor [1, 8, 8]): ")


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_binary_spec_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"name: x\n\xff\xfe\x00\x01")
    assert main(["validate", str(path)]) == 2
    assert one_line(capsys) == f"error: {path}: not a text (UTF-8) file: byte 8 is 0xff"


def test_a_data_path_in_a_symlink_loop_is_one_line(spec_dict, write_spec, tmp_path, capsys):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    spec_dict["data"] = {"source": "manifest", "path": "a"}
    assert main(["validate", str(write_spec(spec_dict))]) == 2
    assert "data.path: cannot follow a: Symlink loop" in one_line(capsys)


def test_an_echoed_value_is_capped(spec_dict, write_spec, capsys):
    """A YAML alias of under 1 KB can stand for millions of characters; the error line stays short."""
    spec_dict["fusion"]["operators"] = {"x" * 100_000: {}}
    assert main(["validate", str(write_spec(spec_dict))]) == 2
    err = one_line(capsys)
    assert len(err) < 600 and err.endswith(" characters)")


def test_pickled_weights_are_refused_naming_the_file_and_why(spec_dict, write_spec, tmp_path, capsys):
    torch.save({"weight": torch.zeros(2), "payload": Evil()}, tmp_path / "evil.pt")
    spec_dict["members"][0]["weights"] = "evil.pt"
    assert main(["validate", str(write_spec(spec_dict))]) == 2
    err = one_line(capsys)
    assert f"{tmp_path / 'evil.pt'}: refused to load: it holds pickled Python objects" in err and "Unsupported global" in err


class Evil:
    def __reduce__(self) -> tuple:
        return print, ("unpickled!",)


def test_ctrl_c_during_validate_is_one_line_and_exit_130(spec_dict, write_spec):
    command = [str(Path(sys.executable).parent / "fusion-search"), "validate", str(write_spec(spec_dict))]
    validate = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # in the command, importing the data's and members' libraries
    validate.send_signal(signal.SIGINT)
    _, err = validate.communicate(timeout=60)
    assert validate.returncode == 130 and err.strip() == "interrupted: fusion-search validate stopped", err


def test_an_experiment_deleted_earlier_says_how_to_restore_it(spec_dict, tmp_path):
    spec = parse_spec({**spec_dict, "storage": str(tmp_path / "store")}, tmp_path)
    client, experiment = open_experiment(spec)
    client.delete_experiment(experiment)
    with pytest.raises(SpecError, match=rf"tracking.experiment: MLflow experiment 'tiny-search' was deleted; restore it \(mlflow experiments restore --experiment-id {experiment}\)"):
        open_experiment(spec)
