"""Benchmark: the same head-only search on a frozen MiniLM with the feature cache off, on, and warm.

Prints, side by side from one run: search wall time, mean trial wall time and the
rows run through the MiniLM backbone (counted by the search), then the ratios.
"off": every trial loads MiniLM and encodes its train and val texts itself.
"on": one task encodes every text once before the first trial; trials train heads.
"warm": a second search over the same storage finds every feature on disk.

    python -m benchmarks.cache [--trials 6] [--epochs 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import ray

from benchmarks.common import head_only_spec, run_spec, text_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    manifest = text_data()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for label, cache, folder in (("off", False, "off"), ("on", True, "on"), ("warm", True, "on")):
            spec = {**head_only_spec(f"cache-{label}", manifest, args.trials, args.epochs), "feature_cache": cache}
            runs[label] = run_spec(spec, Path(tmp) / folder)
    ray.shutdown()
    print(f"\n{args.trials} head-only trials of {args.epochs} epochs on a frozen MiniLM, 2 at once")
    print(f"{'cache':<6} {'search s':>9} {'mean trial s':>13} {'backbone rows':>14}")
    for label, m in runs.items():
        print(f"{label:<6} {m.wall_s:>9.1f} {m.mean_trial_s:>13.2f} {int(m.metrics['search.backbone_rows']):>14,}")
    off, on, warm = runs["off"], runs["on"], runs["warm"]
    print(f"\ntrial speed-up, cache on vs off:   {off.mean_trial_s / on.mean_trial_s:.1f}x  (target >= 20x)")
    print(f"search speed-up, cache on vs off:  {off.wall_s / on.wall_s:.1f}x")
    print(f"search speed-up, warm cache vs off: {off.wall_s / warm.wall_s:.1f}x")
    rows = off.metrics["search.backbone_rows"] / max(on.metrics["search.backbone_rows"], 1)
    print(f"backbone rows, off / on:           {rows:.1f}x")


if __name__ == "__main__":
    main()
