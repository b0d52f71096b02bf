"""Build the image + text example data from scikit-learn's digits (no download).

Each of the 1,797 digits becomes a row of ``data/manifest.csv``: an 8x8 PNG in
``data/images/`` with a random block of it blanked out (so the picture alone is
ambiguous) and a short text that states one or two facts about the digit, its
parity and/or whether it is below five, in varied wording, 10% of facts wrong (so
the text alone narrows the digit to two or three candidates at best). Fusing both
is the only way to read the label well. Run from anywhere:

    python examples/multimodal/make_data.py            # writes examples/multimodal/data/
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

PARITY = {
    True: ["an even number", "divisible by two", "it is even", "even"],
    False: ["an odd number", "not divisible by two", "it is odd", "odd"],
}
SIZE = {
    True: ["a small digit", "less than five", "below five", "one of the low digits"],
    False: ["a large digit", "five or more", "at least five", "one of the high digits"],
}
OPENINGS = ["", "The writer says: ", "Note: ", "Hint: ", "Label note - "]


def describe(digit: int, rng: np.random.Generator, noise: float) -> str:
    """One or two facts about ``digit``, each wrong with probability ``noise``."""
    facts = []
    even, small = digit % 2 == 0, digit < 5
    which = rng.choice(["parity", "size", "both"], p=[0.25, 0.25, 0.5])
    if which in ("parity", "both"):
        truth = even if rng.random() >= noise else not even
        facts.append(rng.choice(PARITY[truth]))
    if which in ("size", "both"):
        truth = small if rng.random() >= noise else not small
        facts.append(rng.choice(SIZE[truth]))
    return f"{rng.choice(OPENINGS)}{' and '.join(facts)}."


def occlude(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blank a random 4x8 or 8x4 block (a half of the digit), as a smudge would."""
    out = image.copy()
    if rng.random() < 0.5:
        top = int(rng.integers(0, 5))
        out[top : top + 4, :] = 0
    else:
        left = int(rng.integers(0, 5))
        out[:, left : left + 4] = 0
    return out


def build(out: Path, seed: int = 0, noise: float = 0.1) -> Path:
    rng = np.random.default_rng(seed)
    digits = load_digits()
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        pixels = (occlude(image, rng) * (255.0 / 16.0)).round().astype(np.uint8)
        name = f"images/{i:04d}.png"
        Image.fromarray(pixels).save(out / name)
        rows.append({"image": name, "text": describe(int(label), rng, noise), "label": int(label)})
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"wrote {build(args.out, args.seed)}")


if __name__ == "__main__":
    main()
