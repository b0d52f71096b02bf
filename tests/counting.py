"""A member for tests that writes how many rows each forward pass of its backbone saw.

Used as a ``checkpoint`` member by import path (``tests.counting:counting_encoder``):
the log file is the independent counter that checks the feature cache runs a frozen
backbone once per sample per search, whatever process or node runs it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn


class RowLog(nn.Module):
    def __init__(self, log: str) -> None:
        super().__init__()
        self.log = log

    def forward(self, x: Tensor) -> Tensor:
        with open(self.log, "a") as handle:  # one short append per call: whole lines even with several writers
            handle.write(f"{x.shape[0]}\n")
        return x


def counting_encoder(log: str, inputs: int = 64, width: int = 16) -> nn.Module:
    """A fixed projection (its last layer, a classifier, is stripped by the ``checkpoint`` member)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, width), nn.Tanh(), RowLog(log), nn.Linear(width, 10))


def logged_rows(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def save_weights(path: Path, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    save_file(counting_encoder("unused").state_dict(), str(path))
    return path
