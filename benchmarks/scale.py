"""Benchmark: one short search at growing data sizes, against the floor a hand-written loop reaches.

Two arms, each a search (``fusion-search run`` in a child process) of 2 trials of 2 epochs, one at a
time with 2 CPUs, fused by concat + MLP:

- image: a small CNN trained from scratch on the pictures, a frozen EfficientNet-Lite0 through the
  feature cache and a frozen MiniLM on the captions (``benchmarks.make_images`` JPEGs);
- audio: ``audio_cnn`` trained from scratch on one-second clips and a frozen YAMNet through the
  feature cache (``benchmarks.make_sounds`` WAV files).

Printed side by side for each arm and size:

- peak PSS of the whole process tree (driver, Ray, trial workers, loader workers), and the frozen
  features (rows x widths x 4 bytes, memory-mapped) apart;
- training rows per second in the trials, and in a bare torch ``DataLoader`` loop over the same
  files with the same CNN and the same number of loader workers;
- image arm only: the cache pass's rows per second, and a bare batched forward pass of each backbone
  over a sample of the same rows (the time both take over all rows, one after the other on every
  core); time from launch to the first trial on a 600-row set with EfficientNet at 128 px, against
  one plain single-threaded pass of both backbones over it.

    python -m benchmarks.scale [--arms image audio] [--rows 5000 40000] [--size 96] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import soundfile

import pandas as pd
import torch
import yaml
from mlflow.tracking import MlflowClient
from torch import nn
from torchvision.transforms.v2 import functional as TF

from benchmarks import make_images, make_sounds
from benchmarks.memory import Sampler, mib
from trainables.members import BuildContext, build_member
from trainables.preprocess import decode_image

EFFNET_WIDTH, MINILM_WIDTH, YAMNET_WIDTH = 1280, 384, 1024
SAMPLE_ROWS = 2048  # rows the bare loops time (a rate, so a sample of the rows is enough)
IMAGE_CNN = {"channels": 32, "image_size": 48}
AUDIO_CNN = {"seconds": 1.0, "channels": 16, "mels": 40, "window": 512}


@dataclass(frozen=True)
class Arm:
    """What differs between the image and the audio arm: the data, the members (the first one
    trains, the others are frozen and cached) and the bare loop's dataset and CNN."""

    build: Callable[[Path, int, int], Path]  # (folder, rows, picture size) -> manifest
    members: Callable[[int], list[dict[str, Any]]]  # EfficientNet's size -> the spec's members
    columns: dict[str, str] | None
    cached_width: int  # the frozen members' features a row
    files: Callable[[Path, pd.DataFrame], torch.utils.data.Dataset]
    context: BuildContext  # the input of the member that trains (the first), for the bare loop


def image_members(effnet_size: int) -> list[dict[str, Any]]:
    return [
        {"name": "cnn", "kind": "small_cnn", "input": "image", "params": IMAGE_CNN},
        {"name": "effnet", "kind": "efficientnet_lite0", "input": "image", "params": {"image_size": effnet_size}, "train": "frozen"},
        {"name": "text", "kind": "minilm", "input": "text", "params": {"max_length": 16}, "train": "frozen"},
    ]


def audio_members(_effnet_size: int) -> list[dict[str, Any]]:
    return [
        {"name": "cnn", "kind": "audio_cnn", "input": "audio", "params": AUDIO_CNN},
        {"name": "yamnet", "kind": "yamnet", "input": "audio", "params": {"seconds": 1.0}, "train": "frozen"},
    ]


def spec(name: str, arm: Arm, manifest: Path, storage: Path, effnet_size: int) -> dict:
    members = arm.members(effnet_size)
    data = {"source": "manifest", "path": str(manifest), **({"columns": arm.columns} if arm.columns else {})}
    return {
        "name": name,
        "seed": 0,
        "data": data,
        "members": members,
        "fusion": {"min_members": len(members), "members_alone": False, "operators": {"concat_mlp": {"hidden": 64}}},
        "hyperparameters": {"lr": 0.003, "weight_decay": 0.0001, "dropout": 0.1, "epochs": 2, "batch_size": 128},
        "budget": {"num_samples": 2, "max_concurrent": 1},
        "scheduler": {"type": "fifo"},
        "resources": {"cpu": 2},
        "report": {"baselines": False},
        "storage": str(storage),
    }


@dataclass
class Searched:
    rows: int
    peak_pss: int
    peak_process_rss: int
    train_rows_per_s: float
    cache_rows_per_s: float  # rows x cached members a second
    first_trial_s: float
    wall_s: float


def run_search(name: str, arm: Arm, manifest: Path, root: Path, effnet_size: int, sample_memory: bool = True) -> Searched:
    """Run the search in a child process, sampling its process tree's memory once a second (reading
    /proc costs CPU: the time-to-first-trial run samples nothing); read the rest from MLflow."""
    storage = root / f"{name}-store"
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec(name, arm, manifest, storage, effnet_size)))
    launched = time.time()
    command = [sys.executable, "-m", "search.cli", "run", str(path)]
    with open(root / f"{name}.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        with Sampler(process.pid, every_s=1.0 if sample_memory else 3600.0) as memory:
            process.wait()
    if process.returncode != 0:
        raise SystemExit(f"{name}: the search failed; see {root / f'{name}.log'}")
    wall = time.time() - launched
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    parent = next(r for r in runs if r.data.tags.get("fusion_search.role") == "search")
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    train_rows = int(parent.data.params["data.train_rows"])
    epoch_times = [m.value for t in trials for m in client.get_metric_history(t.info.run_id, "train_time_s")]
    rows = int(parent.data.params["data.rows"])
    cache_s = parent.data.metrics["search.feature_cache_s"]
    first = min(t.info.start_time for t in trials) / 1000.0 - launched
    return Searched(rows, memory.peak_pss, memory.peak_process_rss, train_rows / (sum(epoch_times) / len(epoch_times)), (len(arm.members(effnet_size)) - 1) * rows / cache_s, first, wall)


class Files(torch.utils.data.Dataset):
    """The hand-written loader's rows: a file read by ``read`` and a label index."""

    def __init__(self, paths: list[Path], labels: pd.Series, read: Callable[[Path], torch.Tensor]) -> None:
        classes = sorted(set(labels))
        self.paths, self.labels, self.read = paths, [classes.index(c) for c in labels], read

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.read(self.paths[i]), self.labels[i]


def read_picture(path: Path) -> torch.Tensor:
    """Decode a JPEG, resize, crop, scale (the small CNN's 48 px)."""
    image = TF.resize(decode_image(path).float() / 255.0, [48], antialias=True)
    return TF.center_crop(image, [48])


def read_clip(path: Path) -> torch.Tensor:
    """Decode a one-second 16 kHz WAV file: (1 clip, 16,000 samples)."""
    samples, _rate = soundfile.read(path, dtype="float32")
    return torch.from_numpy(np.asarray(samples))[None]


def picture_files(folder: Path, frame: pd.DataFrame) -> Files:
    return Files([folder / p for p in frame["image"]], frame["label"], read_picture)


def clip_files(folder: Path, frame: pd.DataFrame) -> Files:
    return Files([folder / p for p in frame["clip"]], frame["label"], read_clip)


ARMS = {
    "image": Arm(make_images.build, image_members, None, EFFNET_WIDTH + MINILM_WIDTH, picture_files, BuildContext("image", (3,))),
    "audio": Arm(
        lambda folder, rows, _size: make_sounds.build(folder, rows),
        audio_members,
        {"audio": "clip", "image": None, "text": None, "label": "label"},
        YAMNET_WIDTH,
        clip_files,
        BuildContext("audio", ()),
    ),
}


def bare_training(arm: Arm, manifest: Path, workers: int) -> float:
    """Rows per second of a plain DataLoader + the same CNN's training loop over the same files."""
    torch.set_num_threads(2)
    frame = pd.read_csv(manifest).head(SAMPLE_ROWS)
    first = arm.members(0)[0]
    cnn = build_member("cnn", first["kind"], first["input"], arm.context, first["params"])
    model = nn.Sequential(cnn.backbone, nn.Linear(cnn.width, frame["label"].nunique()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.003)
    loader = torch.utils.data.DataLoader(arm.files(manifest.parent, frame), batch_size=128, shuffle=True, num_workers=workers)
    started, seen = time.perf_counter(), 0
    for x, y in loader:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen / (time.perf_counter() - started)


@torch.no_grad()
def bare_forward(manifest: Path, effnet_size: int, threads: int) -> dict[str, float]:
    """Rows per second of a plain batched forward pass (decode or tokenise inline) of each backbone."""
    torch.set_num_threads(threads)
    frame = pd.read_csv(manifest).head(SAMPLE_ROWS)
    effnet = build_member("e", "efficientnet_lite0", "image", BuildContext("image", (3,)), {"image_size": effnet_size}, "frozen").eval()
    minilm = build_member("t", "minilm", "text", BuildContext("text", ()), {"max_length": 16}, "frozen").eval()
    rates = {}
    started = time.perf_counter()
    for i in range(0, len(frame), 256):
        images = [TF.resize(decode_image(manifest.parent / p).float() / 255.0, [effnet_size], antialias=True) for p in frame["image"][i : i + 256]]
        batch = (torch.stack([TF.center_crop(im, [effnet_size]) for im in images]) - 127 / 255) / (128 / 255)
        effnet.backbone(batch)
    rates["effnet"] = len(frame) / (time.perf_counter() - started)
    started = time.perf_counter()
    tokenizer = minilm.preprocess.tokenizer
    for i in range(0, len(frame), 256):
        encoded = tokenizer(list(frame["text"][i : i + 256]), padding="longest", truncation=True, max_length=16, return_tensors="pt")
        minilm.backbone(encoded["input_ids"], encoded["attention_mask"])
    rates["minilm"] = len(frame) / (time.perf_counter() - started)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=["image", "audio"])
    parser.add_argument("--rows", type=int, nargs="+", default=[5000, 40000])
    parser.add_argument("--size", type=int, default=96, help="the JPEGs' side in pixels")
    parser.add_argument("--effnet-size", type=int, default=96, help="EfficientNet's input size in the scale runs")
    parser.add_argument("--workdir", type=Path, default=None, help="keep data and runs here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for name in args.arms:
            arm = ARMS[name]
            searched: list[Searched] = []
            for rows in args.rows:
                manifest = arm.build(root / f"{name}-data-{rows}", rows, args.size)
                print(f"{name}, {rows:,} rows: searching ...", flush=True)
                searched.append(run_search(f"scale-{name}-{rows}", arm, manifest, root, args.effnet_size))
            bare_train = bare_training(arm, arm.build(root / f"{name}-data-{args.rows[0]}", args.rows[0], args.size), workers=1)
            print_arm(name, arm, searched, bare_train)
            if name == "image":
                image_costs(root, searched, args.size, args.effnet_size)


def print_arm(name: str, arm: Arm, searched: list[Searched], bare_train: float) -> None:
    members = ", ".join(m["name"] for m in arm.members(0))
    print(f"\n{name} arm: {members} (the first trains, the others frozen and cached)")
    print(f"{'rows':>8} {'peak PSS':>11} {'features':>10} {'PSS - features':>15} {'largest process':>16} {'train rows/s':>13} {'cache rows/s':>13} {'search s':>9}")
    for s in searched:
        print(
            f"{s.rows:>8,} {mib(s.peak_pss):>11} {mib(s.rows * arm.cached_width * 4):>10} {mib(s.peak_pss - s.rows * arm.cached_width * 4):>15} "
            f"{mib(s.peak_process_rss):>16} {s.train_rows_per_s:>13.0f} {s.cache_rows_per_s:>13.0f} {s.wall_s:>9.0f}"
        )
    low, high = searched[0], searched[-1]
    grow = (high.peak_pss - high.rows * arm.cached_width * 4) / (low.peak_pss - low.rows * arm.cached_width * 4)
    print(f"peak memory, features apart, {high.rows:,} vs {low.rows:,} rows: {grow:.2f}x  (target <= 1.25x)")
    trains = [s.train_rows_per_s / bare_train for s in searched]
    print(f"training throughput vs a bare DataLoader loop ({bare_train:.0f} rows/s, 1 worker): " + ", ".join(f"{t:.2f}x" for t in trains) + "  (target >= 0.8x)")


def image_costs(root: Path, searched: list[Searched], size: int, effnet_size: int) -> None:
    """The image arm's cache pass against bare forward passes, and the time to the first trial."""
    small = make_images.build(root / "image-data-600", 600, size)
    first = run_search("first-trial-600", ARMS["image"], small, root, 128, sample_memory=False)
    manifest = make_images.build(root / f"image-data-{searched[0].rows}", searched[0].rows, size)
    bare = bare_forward(manifest, effnet_size, threads=2)
    single = bare_forward(small, 128, threads=1)
    both = 2 / (1 / bare["effnet"] + 1 / bare["minilm"])  # rows/s of both backbones, one after the other
    caches = [s.cache_rows_per_s / both for s in searched]
    print(
        f"cache pass vs a bare batched forward pass (EfficientNet {bare['effnet']:.0f} rows/s, MiniLM {bare['minilm']:.0f} rows/s, 2 threads): "
        + ", ".join(f"{c:.2f}x" for c in caches) + "  (target >= 0.9x)"
    )
    one_pass = 600 / single["effnet"] + 600 / single["minilm"]
    print(
        f"time to first trial, 600 rows, EfficientNet at 128 px: {first.first_trial_s:.1f} s; one single-threaded pass of both "
        f"backbones: {one_pass:.1f} s; target <= {one_pass + 10:.1f} s"
    )


if __name__ == "__main__":
    main()
