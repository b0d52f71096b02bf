"""Benchmark: what a search costs per trial, with and without reuse_actors.

First, what a user waits for: the whole search's wall time (a fresh ``fusion-search run``
process, launch to exit: start-up, checks, the cache pass, trials and champion logging) over
its trials, next to the training and evaluation a trial does. Then the orchestration overhead
between the first trial's start and the last one's end: the share of the trial slots' time
(that span times the trials run at once) not spent training or evaluating (Ray scheduling,
process start, building the model, checkpointing, reporting, the searcher and MLflow logging);
"in trial" counts only each trial's own start to end. Two searches, each run with
``reuse_actors`` on and off:
  - "10 s trials": digits, a small CNN + MLP trained end to end, about 10 s per trial;
  - "head-only": fusion heads on a frozen, cached MiniLM (well under a second of maths each).

    python -m benchmarks.overhead [--head-trials 40]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import Measured, head_only_spec, run_spec, text_data


def ten_second_spec(name: str, trials: int) -> dict[str, Any]:
    return {
        "name": name,
        "seed": 0,
        "data": {"source": "digits"},
        "members": [
            {"name": "cnn", "kind": "small_cnn", "input": "image", "params": {"channels": 64}},
            {"name": "mlp", "kind": "mlp", "input": "flat", "params": {"hidden": 512, "layers": 2}},
        ],
        "fusion": {"min_members": 2, "operators": {"weighted": {}, "concat_mlp": {}}},
        "hyperparameters": {"lr": {"low": 0.001, "high": 0.01, "log": True}, "epochs": 10, "batch_size": 16},
        "budget": {"num_samples": trials, "max_concurrent": 2},
        "scheduler": {"type": "fifo"},
        "report": {"baselines": False},
    }


def line(label: str, m: Measured) -> str:
    work = sum(t.work_s for t in m.trials) / len(m.trials)
    return (
        f"{label:<28} {len(m.trials):>6} {m.wall_s:>8.1f} {m.wall_per_trial_s:>12.2f} {m.mean_trial_s:>9.2f} {work:>8.2f} "
        f"{100 * m.overhead_share:>9.1f}% {100 * m.in_trial_overhead_share:>9.1f}% {m.trials_per_hour:>11,.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6, help="10-second trials per run")
    parser.add_argument("--head-trials", type=int, default=40, help="head-only trials per run")
    args = parser.parse_args()
    manifest = text_data()
    results: dict[str, Measured] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for reuse in (True, False):
            tag = "reuse" if reuse else "no-reuse"
            resources = {"resources": {"cpu": 1, "reuse_actors": reuse}}
            spec = {**ten_second_spec(f"ten-{tag}", args.trials), **resources}
            results[f"10 s trials, {tag}"] = run_spec(spec, Path(tmp) / f"ten-{tag}")
            spec = {**head_only_spec(f"head-{tag}", manifest, args.head_trials, 3), **resources}
            results[f"head-only, {tag}"] = run_spec(spec, Path(tmp) / "head")  # one cache folder: filled once
    print(
        f"\n{'run':<28} {'trials':>6} {'search s':>8} {'search/trial':>12} {'trial s':>9} {'work s':>8} "
        f"{'overhead':>10} {'in trial':>10} {'trials/hour':>11}"
    )
    for label, m in results.items():
        print(line(label, m))
    for kind in ("10 s trials", "head-only"):
        on, off = results[f"{kind}, reuse"], results[f"{kind}, no-reuse"]
        ideal = sum(t.work_s for t in on.trials) / len(on.trials) / on.slots  # training and evaluation alone, slots kept full
        print(
            f"{kind}: whole search {on.wall_per_trial_s:.2f} s per trial with reuse_actors ({on.wall_per_trial_s / ideal:.1f}x the "
            f"{ideal:.2f} s of training and evaluation per trial per slot), {off.wall_per_trial_s:.2f} s without; "
            f"between first and last trial, overhead {100 * on.overhead_share:.1f}% with reuse, {100 * off.overhead_share:.1f}% without"
        )
    print("targets: overhead < 10% for ~10 s trials; >= 1,000 head-only trials/hour")


if __name__ == "__main__":
    main()
