"""Where a composite computes and in which dtype: the device a trial was given, and the precisions
a spec may ask for (``resources.precision``). Light on purpose: the spec reads ``PRECISIONS``."""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def pick_device() -> torch.device:
    """CUDA when Ray gave this process a GPU (it sets CUDA_VISIBLE_DEVICES), else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype ``precision`` computes in on ``device`` (None: fp32). ``auto``: bf16 on a GPU
    that has it, else fp16 on a GPU, fp32 on the CPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a GPU (use bf16 or fp32 on the CPU)")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
