"""A search over images whose decoded size is far above what any process of the search may hold.

3,000 JPEGs of 768 x 768 decode to 5 GiB of pixels (20 GiB as floats). The search runs as a real
``fusion-search run`` process on the embedded default (real Ray, MLflow, Optuna) while its whole
process tree is sampled from /proc: it must finish, no single process may pass 2 GiB, and the
whole tree (driver, Ray's services and workers, the trial and its loader worker) must stay under
3.5 GiB of PSS. Importing torch, Ray and MLflow alone puts a process near 1 GiB, so those limits
leave room for the search's own work and none for the pixels: before rows were streamed, the
driver alone held every decoded image.
"""

from __future__ import annotations

import subprocess
import sys
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from benchmarks.memory import Sampler, mib

pytestmark = pytest.mark.slow

ROWS, SIDE = 3000, 768
DECODED = ROWS * SIDE * SIDE * 3
PROCESS_LIMIT = 2 * 2**30
TREE_LIMIT = int(3.5 * 2**30)


def write_images(job: tuple[Path, int, int]) -> None:
    folder, start, stop = job
    ramp = np.linspace(0, 255, SIDE, dtype=np.float32)
    for i in range(start, stop):
        pixels = np.empty((SIDE, SIDE, 3), dtype=np.uint8)
        pixels[..., 0] = (ramp[None, :] * (i % 3 == 0)).astype(np.uint8)
        pixels[..., 1] = (ramp[:, None] * (i % 3 == 1)).astype(np.uint8)
        pixels[..., 2] = 80 + (i % 3) * 60
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=85)


def test_search_over_data_larger_than_memory_stays_bounded(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    with get_context("fork").Pool(2) as pool:
        pool.map(write_images, [(images, s, min(s + 500, ROWS)) for s in range(0, ROWS, 500)])
    pd.DataFrame({"image": [f"images/{i}.jpg" for i in range(ROWS)], "label": [i % 3 for i in range(ROWS)]}).to_csv(
        tmp_path / "manifest.csv", index=False
    )
    spec = {
        "name": "bounded",
        "data": {"source": "manifest", "path": "manifest.csv", "columns": {"text": None}},
        "members": [{"name": "cnn", "kind": "small_cnn", "input": "image", "params": {"channels": 8, "image_size": 16}}],
        "fusion": {"operators": {"weighted": {}}},
        "hyperparameters": {"lr": 0.01, "epochs": 1, "batch_size": 64},
        "budget": {"num_samples": 1},
        "scheduler": {"type": "fifo"},
        "resources": {"cpu": 2},
        "report": {"baselines": False},
        "storage": str(tmp_path / "store"),
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    with open(tmp_path / "run.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "search.cli", "run", str(path)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        with Sampler(process.pid) as memory:
            try:
                process.wait(timeout=600)
            except subprocess.TimeoutExpired:
                process.kill()
                raise
    output = (tmp_path / "run.log").read_text()
    assert process.returncode == 0, output[-3000:]
    assert "data: 3000 rows" in output and "champion" in output
    assert memory.samples > 20
    assert memory.peak_process_rss < PROCESS_LIMIT, f"a process reached {mib(memory.peak_process_rss)}"
    assert memory.peak_pss < TREE_LIMIT < DECODED * 0.75, f"the tree reached {mib(memory.peak_pss)} for {mib(DECODED)} of decoded pixels"
