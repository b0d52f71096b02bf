"""Benchmark: test-split quality of the best member alone, the uniform average, the best trial,
the selected ensemble and the champion, for each example spec (each searched from scratch).

    python -m benchmarks.quality [SPEC ...]    # default: examples/digits.yaml (the demo)

The multimodal example needs its data first (``python examples/multimodal/make_data.py``)
and takes about 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml

from benchmarks.common import ROOT, run_spec

ROWS = ("uniform average", "best trial", "ensemble", "champion")


def quality_rows(table: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The comparison rows of a search's test table: each member alone (the best one marked),
    the uniform average, the best trial, the selected ensemble (when it mixes trials), the champion."""
    alone = {k: v for k, v in table.items() if k.endswith(" alone")}
    best_member = min(alone, key=lambda k: alone[k]["test_log_loss"])
    rows = {f"{k} (best member)" if k == best_member else k: v for k, v in alone.items()}
    rows.update({k: table[k] for k in ROWS if k in table})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", type=Path, default=[ROOT / "examples" / "digits.yaml"])
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.specs:
            spec = yaml.safe_load(path.read_text())
            if "path" in spec.get("data", {}):
                spec["data"]["path"] = str((path.parent / spec["data"]["path"]).resolve())
            spec.pop("storage", None)
            results[path.name] = run_spec(spec, Path(tmp) / path.stem)
    for name, measured in results.items():
        print(f"\n{name} (test split)")
        print(f"{'model':<28} {'accuracy':>9} {'log-loss':>9}")
        for label, row in quality_rows(measured.test_table).items():
            print(f"{label:<28} {row['test_accuracy']:>9.4f} {row['test_log_loss']:>9.4f}")


if __name__ == "__main__":
    main()
