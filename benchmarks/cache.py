"""Benchmark: the same head-only search on a frozen MiniLM with the feature cache off, on (cold), and warm.

Each search is a fresh ``fusion-search run`` process with its own Ray, timed from launch to exit
(start-up, checks, the cache pass and champion logging included). The off and on arms alternate
which goes first and are repeated (``--repeats``); a warm search follows each cold one on the same
storage, where every feature is already on disk. Prints the whole-search ratio first, then the
mean trial time and the rows run through the MiniLM backbone (counted by the search); figures are
medians over the repeats.
"off": every trial loads MiniLM and encodes its train and val texts itself.
"on": one pass encodes every text once before the first trial; trials train heads.

    python -m benchmarks.cache [--trials 6] [--epochs 5] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import Measured, head_only_spec, run_spec, text_data


def median(runs: list[Measured], figure: str) -> float:
    return statistics.median(getattr(m, figure) for m in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    manifest = text_data()
    runs: dict[str, list[Measured]] = {"off": [], "on": [], "warm": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for label in ("off", "on") if repeat % 2 == 0 else ("on", "off"):
                folder = Path(tmp) / f"{label}-{repeat}"
                spec = {**head_only_spec(f"cache-{label}", manifest, args.trials, args.epochs), "feature_cache": label == "on"}
                runs[label].append(run_spec(spec, folder))
                if label == "on":
                    runs["warm"].append(run_spec({**spec, "name": "cache-warm"}, folder))
                print(f"repeat {repeat + 1}: {label} done", flush=True)
    print(f"\n{args.trials} head-only trials of {args.epochs} epochs on a frozen MiniLM, 2 at once; medians of {args.repeats} alternating repeats")
    off, on, warm = (median(runs[k], "wall_s") for k in ("off", "on", "warm"))
    print(f"whole search (launch to exit), cache on vs off:   {off / on:.2f}x faster")
    print(f"whole search (launch to exit), warm cache vs off: {off / warm:.2f}x faster")
    print(f"\n{'cache':<6} {'search s':>9} {'mean trial s':>13} {'backbone rows':>14}")
    for label, measured in runs.items():
        rows = statistics.median(m.metrics["search.backbone_rows"] for m in measured)
        print(f"{label:<6} {median(measured, 'wall_s'):>9.1f} {median(measured, 'mean_trial_s'):>13.2f} {int(rows):>14,}")
    trial = median(runs["off"], "mean_trial_s") / median(runs["on"], "mean_trial_s")
    print(f"\ntrial speed-up, cache on vs off: {trial:.1f}x  (target >= 20x)")
    rows = statistics.median(m.metrics["search.backbone_rows"] for m in runs["off"]) / max(
        statistics.median(m.metrics["search.backbone_rows"] for m in runs["on"]), 1
    )
    print(f"backbone rows, off / on:         {rows:.1f}x")


if __name__ == "__main__":
    main()
