"""Benchmark: greedy ensemble selection over 50 trials x 10,000 validation rows x 10 classes, one core.

Prints the time of ``search.candidates.ensemble.greedy_selection`` (log-loss and accuracy) next to a
per-candidate loop over full probability arrays (the textbook way), and their ratio.

    python -m benchmarks.selection [--trials 50] [--rows 10000] [--rounds 25]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one core, as the target says

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from search.candidates.ensemble import greedy_selection  # noqa: E402
from trainables.metrics import EPS  # noqa: E402


def candidates(k: int, n: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(k, n, c)).astype(np.float32) * rng.uniform(1.0, 3.0, size=(k, 1, 1)).astype(np.float32)
    logits[:, np.arange(n), labels] += 1.5
    proba = np.exp(logits)
    return proba / proba.sum(axis=2, keepdims=True), labels


def loop_selection(proba: np.ndarray, labels: np.ndarray, rounds: int) -> np.ndarray:
    """Each round, each candidate: average the full (N, C) arrays and score log-loss."""
    total = np.zeros(proba.shape[1:], dtype=np.float64)
    counts = np.zeros(len(proba), dtype=np.int64)
    rows = np.arange(len(labels))
    for picked in range(rounds):
        losses = [-np.log(np.clip(((total + p) / (picked + 1))[rows, labels], EPS, 1.0)).mean() for p in proba]
        choice = int(np.argmin(losses))
        counts[choice] += 1
        total += proba[choice]
    return counts


def timed(function, *args) -> tuple[float, object]:  # noqa: ANN001
    best, out = float("inf"), None
    for _ in range(3):
        started = time.perf_counter()
        out = function(*args)
        best = min(best, time.perf_counter() - started)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=25)
    args = parser.parse_args()
    proba, labels = candidates(args.trials, args.rows, args.classes)
    fast, selection = timed(greedy_selection, proba, labels, args.rounds)
    accuracy, _ = timed(greedy_selection, proba, labels, args.rounds, "val_accuracy")
    slow, _ = timed(loop_selection, proba, labels, args.rounds)
    print(f"{args.trials} trials x {args.rows:,} rows x {args.classes} classes, {args.rounds} rounds, one thread")
    print(f"greedy_selection, log-loss:  {fast:.3f} s  (target < 2 s)   ensemble of {selection.size}")
    print(f"greedy_selection, accuracy:  {accuracy:.3f} s")
    print(f"per-candidate loop, log-loss: {slow:.3f} s")
    print(f"speed-up over the loop: {slow / fast:.1f}x")


if __name__ == "__main__":
    main()
