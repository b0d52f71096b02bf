"""Content digests (sha256) of tensors and of modules' weights: the identity of what a file holds."""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor


def update(digest: "hashlib._Hash", tensor: Tensor) -> None:
    """Feed a tensor's dtype, shape and bytes to ``digest``."""
    tensor = tensor.detach().cpu().contiguous()
    digest.update(f"{tensor.dtype}{list(tensor.shape)}".encode())
    digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")


def tensor_digest(tensor: Tensor) -> str:
    digest = hashlib.sha256()
    update(digest, tensor)
    return digest.hexdigest()


def state_digest(state: dict[str, Tensor]) -> str:
    """sha256 over a state dict: every name, dtype, shape and value."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        update(digest, tensor)
    return digest.hexdigest()
