"""Benchmark: what domain adaptation buys on the two-domain example (``examples/domains``: digits
drawn with a pen, the source, and with a marker, the target, most marker rows unlabelled).

The example's spec twice, same budget, same seed, same data: once as it is (Optuna chooses among
no adaptation, CORAL, MMD and DANN and their weight) and once with adaptation off. For each, the
target and source test accuracy of the best trial, of its AdaBN variant and of the champion,
from the search's own test table.

    python -m benchmarks.domains [--trials 12]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.common import ROOT, run_spec
from benchmarks.quality import from_file
from examples.domains.make_data import build

ROWS = ("best trial", "adabn", "champion")  # adabn: the best trial with target batch-norm statistics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = build(folder / "data")
        spec = from_file(ROOT / "examples" / "domains" / "digits_domains.yaml")
        spec["data"]["path"] = str(path)
        spec["budget"]["num_samples"] = args.trials
        arms = {"adaptation searched": spec, "adaptation off": {**spec, "hyperparameters": {**spec["hyperparameters"], "adaptation": "none"}}}
        print(f"{'search':<22} {'row':<12} {'target test acc':>16} {'source test acc':>16}")
        for arm, arm_spec in arms.items():
            measured = run_spec(arm_spec, folder / arm.replace(" ", "_"))
            for row in (r for r in ROWS if f"{r} on target" in measured.test_table):
                target = measured.test_table[f"{row} on target"]["test_accuracy"]
                source = measured.test_table[f"{row} on source"]["test_accuracy"]
                print(f"{arm:<22} {row:<12} {target:>16.4f} {source:>16.4f}")
            print(f"{arm:<22} wall time {measured.wall_s:.0f} s", flush=True)


if __name__ == "__main__":
    main()
