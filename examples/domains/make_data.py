"""Build the two-domain example from scikit-learn's digits (no download).

Each of the 1,797 digits becomes a row of ``data/manifest.csv`` with a 16x16 PNG in ``data/images/``,
drawn in one of two styles, its ``domain`` column naming the style:

- ``pen`` (the source domain, every row labelled): light strokes on a dark page, as the data set has them;
- ``marker`` (the target domain): thicker strokes on a grainy page, shifted by up to two pixels. Most marker rows have no label (``label`` empty): a search may read them to adapt, never to
  score. A quarter of them keep their label: the target's validation and test rows.

A model trained on pen digits alone reads marker digits badly; the search's adaptation terms
(``hyperparameters.adaptation``) close part of that gap. Run from anywhere:

    python examples/domains/make_data.py            # writes examples/domains/data/
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter
from sklearn.datasets import load_digits

SIZE = 16
TARGET_SHARE = 0.5  # of the digits, drawn as markers
LABELLED_TARGET_SHARE = 0.25  # of the markers, with their label


def pen(image: np.ndarray) -> Image.Image:
    """The digit as the data set draws it, at 16x16."""
    return Image.fromarray((image * (255.0 / 16.0)).round().astype(np.uint8)).resize((SIZE, SIZE), Image.BILINEAR)


def marker(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Thick strokes on a grainy page, shifted by up to two pixels."""
    pixels = np.asarray(pen(image).filter(ImageFilter.MaxFilter(3)), dtype=np.float64)
    pixels = np.roll(pixels, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
    pixels += rng.normal(0.0, 18.0, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))


def build(out: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    digits = load_digits()
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        target = rng.random() < TARGET_SHARE
        picture = marker(image, rng) if target else pen(image)
        name = f"images/{i:04d}.png"
        picture.save(out / name)
        labelled = not target or rng.random() < LABELLED_TARGET_SHARE
        rows.append({"image": name, "domain": "marker" if target else "pen", "label": int(label) if labelled else ""})
    manifest = out / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"wrote {build(args.out, args.seed)}")


if __name__ == "__main__":
    main()
