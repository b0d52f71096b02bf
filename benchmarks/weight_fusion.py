"""Benchmark: champions made in weight space and by distillation, against the best trial and the ensemble.

    python -m benchmarks.weight_fusion [--trials N]

Two searches, each from scratch, each asking for a student (``distill``): the digits demo
(``examples/digits.yaml``) and the image + text example (``examples/multimodal``). For each it
prints, side by side, the best trial, the Caruana ensemble, the greedy soup, the best merge (on
validation, of linear / TIES / DARE), the checkpoint average and the student: test accuracy, test
log-loss, p95 latency of one row and size, with the ratios the targets name (the soup against the
best trial; the student against a k-trial ensemble: within 1 accuracy point at no more than 1/k of
its latency). A soup, merge or checkpoint average is one composite of a trial's structure and is
costed as that structure (measured once); the ensemble and the student are measured on their own.
Latencies are this machine's CPU: read them as ratios. About 15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import ROOT, Measured, parent_json, run_spec, text_data

SPECS = {"digits": ROOT / "examples" / "digits.yaml", "multimodal": ROOT / "examples" / "multimodal" / "digits_multimodal.yaml"}
MERGES = ("linear merge", "ties merge", "dare merge")
ROWS = ("best trial", "ensemble", "greedy soup", "best merge", "checkpoint average", "student")


def spec_for(which: str, trials: int | None) -> dict[str, Any]:
    spec = yaml.safe_load(SPECS[which].read_text())
    spec.pop("storage")
    if which == "multimodal":
        spec["data"]["path"] = str(text_data())
    spec.update(
        name=f"weights-{which}", report={"baselines": False},
        weight_fusion=spec.get("weight_fusion") or {"ingredients": 3},
        distill=spec.get("distill") or {"temperature": 1.0, "label_weight": 0.5},
    )
    if trials is not None:
        spec["budget"]["num_samples"] = trials
    return spec


def best_merge(measured: Measured) -> str | None:
    """The merge with the best validation log-loss."""
    made = [m for m in MERGES if m in measured.test_table]
    return min(made, key=lambda m: measured.metrics[f"{m.replace(' ', '_')}.val_log_loss"]) if made else None


def table(which: str, measured: Measured, made: dict[str, Any]) -> list[str]:
    merge = best_merge(measured)
    lines = [f"\n{which}: {len(measured.trials)} trials, search {measured.wall_s:.0f} s", f"{'model':<28} {'accuracy':>9} {'log-loss':>9} {'p95 ms':>8} {'size MB':>8}"]
    for label in ROWS:
        key = merge if label == "best merge" else label
        row = measured.test_table.get(key or "")
        if row is None:
            lines.append(f"{label:<28} {'(none: ' + why_none(label, made) + ')'}")
            continue
        shown = f"{label} ({key})" if label == "best merge" else label
        lines.append(f"{shown:<28} {row['test_accuracy']:>9.4f} {row['test_log_loss']:>9.4f} {row['latency_ms_p95']:>8.2f} {row['size_mb']:>8.1f}")
    lines.append(f"champion: {measured_champion(measured)}")
    lines += targets(measured, made)
    return lines


def why_none(label: str, made: dict[str, Any]) -> str:
    if label == "ensemble":
        return "selection kept the best trial alone"
    if label == "greedy soup":
        return "no two candidate trials share a structure"
    if label == "best merge":
        return "no candidate trains a weight the best trial trains from the same start"
    return "fewer than two checkpoints" if label == "checkpoint average" else "not made"


def measured_champion(measured: Measured) -> str:
    """Which row the champion is: the one whose test log-loss its own evaluation reproduces."""
    champion = measured.test_table["champion"]
    rows = {label: row for label, row in measured.test_table.items() if label != "champion" and "latency_ms_p95" in row}
    same = min(rows, key=lambda label: abs(rows[label]["test_log_loss"] - champion["test_log_loss"]))
    return f"{same} (test accuracy {champion['test_accuracy']:.4f})"


def targets(measured: Measured, made: dict[str, Any]) -> list[str]:
    """The issue's targets, each as measured: the soup against the best trial, the student against the ensemble."""
    table, lines = measured.test_table, []
    best = table["best trial"]
    for extra in made.get("ingredients_trained", []):
        lines.append(f"soup ingredient {extra['trial']}: lr {extra['lr']:.3g}, validation {extra['val_score']:.4f}")
    if "greedy soup" in table:
        soup = table["greedy soup"]
        ingredients = next(v for v in made["variants"] if v["label"] == "greedy soup")["ingredients"]
        lines.append(
            f"greedy soup of {len(ingredients)} trial(s) - best trial: accuracy {100 * (soup['test_accuracy'] - best['test_accuracy']):+.2f} pts, "
            f"latency x{soup['latency_ms_p95'] / best['latency_ms_p95']:.2f}"
        )
    if "student" in table:
        student = table["student"]
        teacher = next(v for v in made["variants"] if v["label"] == "student")["teacher"]
        against = table.get("ensemble", best)
        lines.append(
            f"student - teacher ({'ensemble of ' + str(len(teacher)) if len(teacher) > 1 else 'the best trial'}): accuracy "
            f"{100 * (student['test_accuracy'] - against['test_accuracy']):+.2f} pts, latency x{student['latency_ms_p95'] / against['latency_ms_p95']:.2f} "
            f"(1/k = {1 / len(teacher):.2f}), size x{student['size_mb'] / against['size_mb']:.2f}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=None, help="trials per search (default: each example's own)")
    parser.add_argument("--only", choices=sorted(SPECS), default=None, help="run one of the two searches")
    args = parser.parse_args()
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for which in [args.only] if args.only else list(SPECS):
            spec = spec_for(which, args.trials)
            folder = Path(tmp) / which
            measured = run_spec(spec, folder)
            part = table(which, measured, parent_json(folder, spec["name"], "weight_fusion.json"))
            print("\n".join(part), flush=True)
            lines += part
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
