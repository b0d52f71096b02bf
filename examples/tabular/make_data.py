"""Build the mixed-table example: product listings with a photo, two texts, two numbers and two
categories, each row labelled with its market segment (budget, standard, premium). No download.

Each column says a little about the segment, none says enough alone:

- ``price`` (numeric): drawn around a segment's own level, the levels overlapping; 5% missing;
- ``brand`` (categorical): each of 12 brands sells mostly one segment (60% of its rows);
- ``title`` (text): names the segment in varied words in 40% of rows, else a neutral name;
- ``description`` (text): a hint in 25% of rows, else filler;
- ``photo`` (16x16 PNG): a frame tinted by segment in 40% of rows, else a random tint;
- ``weight`` (numeric) and ``country`` (categorical): no signal at all.

Run from anywhere:

    python examples/tabular/make_data.py            # writes examples/tabular/data/
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

SEGMENTS = ["budget", "standard", "premium"]
PRICE_LEVEL = [20.0, 35.0, 55.0]
WORDS = [["basic", "value", "economy", "simple"], ["classic", "everyday", "standard", "regular"], ["deluxe", "luxury", "signature", "premium"]]
THINGS = ["kettle", "lamp", "chair", "backpack", "blender", "jacket", "speaker", "watch"]
HINTS = [["built to a price", "no frills"], ["a solid all-rounder", "made for daily use"], ["hand finished", "crafted from the finest materials"]]
FILLER = ["ships in two days", "available in three colours", "see the size guide", "easy returns"]
TINTS = [(200, 60, 60), (60, 200, 60), (60, 60, 200)]
BRANDS = [f"brand_{i:02d}" for i in range(12)]
COUNTRIES = ["de", "fr", "it", "es", "pl"]


def photo(rng: np.random.Generator, tint: tuple[int, int, int]) -> bytes:
    """A 16x16 PNG: noise inside a 3-pixel frame of ``tint``."""
    pixels = rng.integers(0, 160, (16, 16, 3))
    pixels[:3], pixels[-3:], pixels[:, :3], pixels[:, -3:] = tint, tint, tint, tint
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def make_rows(rng: np.random.Generator, rows: int, folder: Path) -> pd.DataFrame:
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(rows):
        segment = int(rng.integers(3))
        brand_segment = segment if rng.random() < 0.6 else int(rng.integers(3))
        brand = BRANDS[4 * brand_segment + int(rng.integers(4))]
        thing = str(rng.choice(THINGS))
        title = f"{rng.choice(WORDS[segment])} {thing}" if rng.random() < 0.4 else f"{thing} {int(rng.integers(100, 999))}"
        description = str(rng.choice(HINTS[segment])) if rng.random() < 0.25 else str(rng.choice(FILLER))
        tint = TINTS[segment] if rng.random() < 0.4 else TINTS[int(rng.integers(3))]
        (folder / "photos" / f"{i:05d}.png").write_bytes(photo(rng, tint))
        price = "" if rng.random() < 0.05 else f"{PRICE_LEVEL[segment] * rng.lognormal(0.0, 0.35):.2f}"
        out.append({
            "photo": f"photos/{i:05d}.png", "title": title, "description": description, "price": price,
            "weight": f"{rng.uniform(0.2, 5.0):.2f}", "brand": brand, "country": str(rng.choice(COUNTRIES)), "segment": SEGMENTS[segment],
        })
    return pd.DataFrame(out)


def build(folder: Path, rows: int = 1500) -> Path:
    """Write ``products.csv`` and its photos into ``folder``; returns the table's path."""
    table = make_rows(np.random.default_rng(0), rows, folder)
    table.to_csv(folder / "products.csv", index=False)
    return folder / "products.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    args = parser.parse_args()
    path = build(args.out, args.rows)
    print(f"wrote {args.rows} rows to {path}")


if __name__ == "__main__":
    main()
