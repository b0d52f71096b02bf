"""The GPU path of one trial, without Ray: a composite (small CNN + MLP + a ResNet-18 trained in
full at 32 px, fused by concat + MLP) trained on digits with fp32, bf16 and fp16 autocast (fp16 with
a gradient scaler), on the CUDA device when there is one and on the CPU, side by side in one run.

Prints, per precision and device: seconds per epoch (after the first, which warms up), the final
validation log-loss and accuracy, and the GPU's peak memory; then the ratios against CPU fp32.
Needs torch, torchvision, numpy, scikit-learn and safetensors (no Ray, MLflow or Optuna), so it runs on
a bare accelerator machine: ``python3 -m benchmarks.gpu_check``.
"""

from __future__ import annotations

import time

import torch

from trainables.composite import CompositeDescription, MemberDescription
from trainables.data import load_dataset
from trainables.sources import SourceOptions
from trainables.training import TrialPlan, fit

EPOCHS = 4


def plan(data, precision: str) -> TrialPlan:
    members = [
        MemberDescription("cnn", "small_cnn", "image", {"channels": 32}),
        MemberDescription("mlp", "mlp", "flat", {"hidden": 256, "layers": 2}),
        MemberDescription("resnet", "torchvision", "image", {"arch": "resnet18", "image_size": 32}, "full"),
    ]
    description = CompositeDescription(members, "concat_mlp", {"hidden": 128}, data.num_classes, data.class_names, data.inputs)
    return TrialPlan(description, lr=3e-3, weight_decay=1e-4, epochs=EPOCHS, batch_size=128, seed=0, precision=precision)


def run(data, precision: str) -> dict[str, float]:
    times: list[float] = []
    last: dict[str, float] = {}
    started = [time.perf_counter()]

    def on_epoch(epoch, metrics, model, *_):
        now = time.perf_counter()
        times.append(now - started[0])
        started[0] = now
        last.update(metrics)

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    fit(plan(data, precision), data, on_epoch=on_epoch)
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    return {"s_per_epoch": sum(times[1:]) / max(1, len(times) - 1), "val_log_loss": last["val_log_loss"], "val_accuracy": last["val_accuracy"], "peak_mib": peak}


def main() -> None:
    data = load_dataset("digits", SourceOptions(), 0.2, 0.2, seed=0)
    print(f"torch {torch.__version__}; CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}; {data.rows} rows", flush=True)
    rows = {}
    if torch.cuda.is_available():
        for precision in ("fp32", "bf16", "fp16"):
            rows[f"cuda {precision}"] = run(data, precision)
            print(f"cuda {precision}: {rows[f'cuda {precision}']}", flush=True)
    visible = torch.cuda.is_available
    torch.cuda.is_available = lambda: False  # the CPU arm of the same code (pick_device reads this)
    try:
        for precision in ("fp32", "bf16"):
            rows[f"cpu {precision}"] = run(data, precision)
            print(f"cpu {precision}: {rows[f'cpu {precision}']}", flush=True)
    finally:
        torch.cuda.is_available = visible
    base = rows["cpu fp32"]["s_per_epoch"]
    print(f"\n{'arm':<10} {'s/epoch':>8} {'vs cpu fp32':>12} {'val_log_loss':>13} {'val_acc':>8} {'peak MiB':>9}")
    for name, row in rows.items():
        print(f"{name:<10} {row['s_per_epoch']:8.3f} {base / row['s_per_epoch']:11.2f}x {row['val_log_loss']:13.4f} {row['val_accuracy']:8.4f} {row['peak_mib']:9.0f}")
        assert row["val_log_loss"] == row["val_log_loss"], f"{name}: NaN loss"


if __name__ == "__main__":
    main()
