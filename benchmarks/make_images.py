"""Write a synthetic image + text data set of N rows: JPEG pictures of coloured shapes and captions.

Each row's class is one of 12 (3 shapes x 4 colours). The picture shows the shape in its colour on
a noisy background of random tint; the caption names the colour or the shape (never both) in
varied wording, so neither the picture at low resolution nor the text alone settles every row.
Anyone can rebuild the scale benchmark's data with it:

    python -m benchmarks.make_images OUT --rows 40000 [--size 96]
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (210, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 210), "yellow": (220, 200, 40)}
TEMPLATES = ("a {} thing", "something {}", "the object is {}", "look: {}", "it is {}, mostly")


def row(index: int, seed: int) -> tuple[int, str]:
    rng = np.random.default_rng([seed, index])
    return int(rng.integers(len(SHAPES) * len(COLOURS))), str(TEMPLATES[int(rng.integers(len(TEMPLATES)))])


def picture(index: int, seed: int, size: int) -> tuple[Image.Image, str, str]:
    label, template = row(index, seed)
    shape, colour = SHAPES[label % len(SHAPES)], list(COLOURS)[label // len(SHAPES)]
    rng = np.random.default_rng([seed, index, 1])
    tint = rng.integers(60, 200, size=3)
    background = np.clip(rng.normal(tint, 40, size=(size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    r = int(size * rng.uniform(0.15, 0.35))
    cx, cy = (int(v) for v in rng.integers(r, size - r, size=2))
    fill = tuple(int(np.clip(c + rng.integers(-30, 30), 0, 255)) for c in COLOURS[colour])
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    caption = template.format(colour if rng.random() < 0.5 else shape)
    return image, caption, f"{shape}-{colour}"


def write_range(job: tuple[Path, int, int, int, int]) -> list[tuple[str, ...]]:
    folder, start, stop, seed, size = job
    rows = []
    for index in range(start, stop):
        image, caption, label = picture(index, seed, size)
        name = f"images/{index // 1000:03d}/{index:06d}.jpg"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / name, quality=90)
        rows.append((name, caption, label))
    return rows


Writer = Callable[[tuple[Path, int, int, int, int]], list[tuple[str, ...]]]


def write_manifest(folder: Path, rows: int, header: tuple[str, ...], write: Writer, seed: int, size: int) -> Path:
    """``rows`` rows written under ``folder`` by ``write`` (in parallel, 1,000 a job) and their
    manifest; kept if already there."""
    manifest = folder / "manifest.csv"
    if manifest.exists() and sum(1 for _ in manifest.open()) == rows + 1:
        return manifest
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(folder, s, min(s + 1000, rows), seed, size) for s in range(0, rows, 1000)]
    with multiprocessing.get_context("fork").Pool() as pool:
        written = [r for part in pool.map(write, jobs) for r in part]
    with manifest.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(header)
        out.writerows(written)
    return manifest


def build(folder: Path, rows: int, size: int = 96, seed: int = 0) -> Path:
    """Write ``rows`` rows under ``folder`` and return the manifest; kept if already there."""
    return write_manifest(folder, rows, ("image", "text", "label"), write_range, seed, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build(args.out, args.rows, args.size, args.seed))


if __name__ == "__main__":
    main()
