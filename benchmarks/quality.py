"""Benchmark: is the champion at least as good as the best thing it was made from? For each search,
the validation objective of the champion against the best member alone (each member alone is a
trial of the search, and a candidate), side by side, and the test split's rows.

    python -m benchmarks.quality [SPEC ...]

Without specs: the demo (``examples/digits.yaml``), the image + text example (its data built first;
about 15 minutes on 2 cores), a generated set where one member reads the signal and the other
pure noise (``benchmarks.generated``) and scikit-learn's breast cancer set, binary, on F1 of the
malignant class (``benchmarks.public``). Each is searched from scratch, in a new process;
``--only NAME`` runs one of them.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import ROOT, Measured, parent_json, run_spec, text_data
from benchmarks.generated import signal_and_noise, signal_and_noise_spec
from benchmarks.public import breast_cancer, breast_cancer_spec


def from_file(path: Path) -> dict[str, Any]:
    spec = yaml.safe_load(path.read_text())
    if "path" in spec.get("data", {}):
        spec["data"]["path"] = str((path.parent / spec["data"]["path"]).resolve())
    spec.pop("storage", None)
    return spec


def default_specs(folder: Path) -> list[dict[str, Any]]:
    text_data()  # the image + text example's data, built on first use
    generated = signal_and_noise(folder / "signal_and_noise.npz", rows=500, noise_width=256)
    return [
        from_file(ROOT / "examples" / "digits.yaml"),
        from_file(ROOT / "examples" / "multimodal" / "digits_multimodal.yaml"),
        signal_and_noise_spec(generated, trials=8),
        breast_cancer_spec(breast_cancer(folder / "breast_cancer.npz")),
    ]


def report(name: str, measured: Measured, stored: dict[str, Any]) -> None:
    """The champion's validation value against each member alone's, then the test rows."""
    metric = stored["objectives"]["objectives"][0]["metric"]
    key = f"best_{metric}"
    minimise = stored["objectives"]["objectives"][0]["mode"] == "min"
    rows = {c["candidate"]: c for c in stored["candidates"] if c["row"]}
    alone = {label: row[key] for label, row in rows.items() if label.endswith(" alone")}
    champion = next(c for c in stored["candidates"] if c["champion"])
    best_label = (min if minimise else max)(alone, key=alone.get) if alone else None
    print(f"\n{name}: {metric} on validation")
    for label, value in alone.items():
        print(f"  {label:<26} {value:.4f}{'  (best member alone)' if label == best_label else ''}")
    print(f"  {'champion: ' + champion['candidate']:<26} {champion[key]:.4f}")
    if best_label is not None:
        gap = champion[key] - alone[best_label]
        holds = gap <= 1e-12 if minimise else gap >= -1e-12
        print(f"  champion - best member alone: {gap:+.4f} ({'at least as good' if holds else 'WORSE'})")
    name_of = metric.removeprefix("val_")
    extra = [] if name_of in ("accuracy", "log_loss") else [name_of]
    print(f"  test split: {'model':<26} {'accuracy':>9} {'log-loss':>9}" + "".join(f" {n:>9}" for n in extra))
    for label, row in measured.test_table.items():
        print(f"              {label:<26} {row['test_accuracy']:>9.4f} {row['test_log_loss']:>9.4f}" + "".join(f" {row[f'test_{n}']:>9.4f}" for n in extra))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", type=Path, help="spec files (default: the demo, the image + text example, the generated set, breast cancer)")
    parser.add_argument("--only", help="of the default searches, the one of this name")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        specs = [from_file(p) for p in args.specs] if args.specs else default_specs(Path(tmp))
        specs = [s for s in specs if args.only in (None, s["name"])]
        for spec in specs:
            folder = Path(tmp) / spec["name"]
            measured = run_spec(spec, folder)
            report(spec["name"], measured, parent_json(folder, spec["name"], "candidates.json"))


if __name__ == "__main__":
    main()
