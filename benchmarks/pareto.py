"""Benchmark: what a faster model costs in accuracy, on the multimodal example (image + text).

    python -m benchmarks.pareto [--trials N]

Three searches of the multimodal spec, each from scratch, on the objectives
``[val_log_loss, latency_ms_p95]``:

1. without constraints: its Pareto front, and its champion (the best validation log-loss);
2. with ``latency_ms_p95 <= champion's / 2``;
3. with ``latency_ms_p95 <= champion's / 5``.

It prints the first search's front and, side by side, each champion's test accuracy, test
log-loss, p95 latency (one row, measured in its trials) and size. Latencies are measured on this
machine's CPU while another trial may run beside (``max_concurrent: 2``): read them as ratios.
About 30 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import ROOT, Measured, parent_json, run_spec, text_data

SPEC = ROOT / "examples" / "multimodal" / "digits_multimodal.yaml"
OBJECTIVES = [{"metric": "val_log_loss", "mode": "min"}, {"metric": "latency_ms_p95", "mode": "min"}]


def spec_for(name: str, trials: int, constraints: dict[str, Any]) -> dict[str, Any]:
    spec = yaml.safe_load(SPEC.read_text())
    spec.pop("storage")
    spec["data"]["path"] = str(text_data())
    spec.update(name=name, objective=OBJECTIVES, constraints=constraints, report={"baselines": False})
    spec["budget"]["num_samples"] = trials
    return spec


def front_of(root: Path, name: str) -> list[dict[str, Any]]:
    """The front the search logged (``pareto/pareto.json``), best log-loss first."""
    front = [c for c in parent_json(root / name, name, "pareto/pareto.json")["candidates"] if c["on_front"]]
    return sorted(front, key=lambda c: c["best_val_log_loss"])


def row(label: str, measured: Measured) -> str:
    test, metrics = measured.test_table["champion"], measured.metrics
    return (
        f"{label:<34} {test['test_accuracy']:>9.4f} {test['test_log_loss']:>9.4f} "
        f"{metrics['champion.latency_ms_p95']:>12.2f} {metrics['champion.size_mb']:>8.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16, help="trials per search (default: the example's 16)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        free = run_spec(spec_for("pareto-free", args.trials, {}), root / "pareto-free")
        latency = free.metrics["champion.latency_ms_p95"]
        front = front_of(root, "pareto-free")
        budgets = {factor: latency / factor for factor in (2, 5)}
        held: dict[int, Measured] = {}
        for factor, budget in budgets.items():
            try:
                held[factor] = run_spec(spec_for(f"pareto-{factor}x", args.trials, {"latency_ms_p95": {"max": budget}}), root / f"pareto-{factor}x")
            except SystemExit as failed:  # no trial met the budget: the search says so and registers nothing
                print(f"{factor}x budget ({budget:.2f} ms): {str(failed).strip().splitlines()[-1]}")
    print(f"\nPareto front without constraints ({len(front)} candidates), best validation log-loss first:")
    print(f"{'candidate':<16} {'fusion':<40} {'val log-loss':>12} {'p95 ms':>8}")
    for c in front:
        print(f"{c['candidate']:<16} {c['fusion']:<40} {c['best_val_log_loss']:>12.4f} {c['latency_ms_p95']:>8.2f}")
    print("\nChampions, test split (latency: one row, p95, as its trials measured it):")
    print(f"{'search':<34} {'accuracy':>9} {'log-loss':>9} {'p95 ms':>12} {'size MB':>8}")
    print(row("no constraint", free))
    for factor, measured in held.items():
        print(row(f"latency_ms_p95 <= {budgets[factor]:.2f} ({factor}x faster)", measured))
    for factor, measured in held.items():
        speedup = latency / measured.metrics["champion.latency_ms_p95"]
        lost = free.test_table["champion"]["test_accuracy"] - measured.test_table["champion"]["test_accuracy"]
        print(f"{factor}x budget: champion {speedup:.1f}x faster for {100 * lost:+.1f} accuracy points lost")


if __name__ == "__main__":
    main()
