"""Content digests (sha256) of tensors and of modules' weights: the identity of what a file holds."""

from __future__ import annotations

import hashlib
import weakref

import torch
from torch import Tensor, nn


def update(digest: "hashlib._Hash", tensor: Tensor) -> None:
    """Feed a tensor's dtype, shape and bytes to ``digest``."""
    tensor = tensor.detach().cpu().contiguous()
    digest.update(f"{tensor.dtype}{list(tensor.shape)}".encode())
    digest.update(tensor.view(-1).view(torch.uint8).numpy() if tensor.numel() else b"")


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


# Each module's digest with the state it was computed on: each tensor (the module's own) and its version.
_KNOWN: "weakref.WeakKeyDictionary[nn.Module, tuple[list[tuple[str, Tensor, int]], str]]" = weakref.WeakKeyDictionary()


def module_digest(module: nn.Module) -> str:
    """``state_digest`` of ``module``'s state dict, computed again only when a tensor of it changed
    (another tensor in its place, or this one written in place since: torch counts a tensor's
    writes; not a write through ``.data``, which nothing here makes): a frozen backbone that several
    candidates and saves share is read once (100 MB, ~0.1 s)."""
    state = module.state_dict(keep_vars=True)
    known = _KNOWN.get(module)
    if known is not None and len(known[0]) == len(state) and all(
        state.get(name) is tensor and tensor._version == version for name, tensor, version in known[0]
    ):
        return known[1]
    digest = state_digest(state)
    _KNOWN[module] = ([(name, tensor, tensor._version) for name, tensor in state.items()], digest)
    return digest
