"""Members: pretrained or from-scratch models that turn one input into features.

A member reads one named input of a batch (``image``, ``flat``, ...) and returns
features of shape ``(B, width)``. Factories are registered by kind; each takes the
shape of the input it reads plus its own parameters and returns the backbone and
its feature width. ``Member`` adds what every kind shares: which input it reads,
loading weights from a local file, and freezing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torchvision
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.nn import functional as F

from trainables.registry import Choice, IntRange, Registry

BackboneFactory = Callable[..., tuple[nn.Module, int]]
MEMBERS: Registry[BackboneFactory] = Registry("member kind")
register_member = MEMBERS.register


class Member(nn.Module):
    """A backbone bound to the input it reads; frozen members never train."""

    def __init__(self, name: str, backbone: nn.Module, input_key: str, width: int, frozen: bool) -> None:
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.input_key = input_key
        self.width = width
        self.frozen = frozen
        if frozen:
            self.backbone.requires_grad_(False)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.backbone(batch[self.input_key])

    def train(self, mode: bool = True) -> "Member":
        # A frozen backbone keeps its normalisation statistics and dropout off.
        super().train(mode and not self.frozen)
        return self


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Weights from safetensors or a torch state dict (never unpickles objects)."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def build_member(
    name: str,
    kind: str,
    input_key: str,
    input_shape: tuple[int, ...],
    params: dict[str, Any],
    frozen: bool = False,
    weights: Path | None = None,
) -> Member:
    """Build the member ``kind`` for an input of ``input_shape``; load ``weights`` if given."""
    backbone, width = MEMBERS.get(kind).factory(input_shape, **params)
    if weights is not None:
        # A wrapper names the module its weights files describe (``weights_module``).
        target = getattr(backbone, "weights_module", backbone)
        missing, _unexpected = target.load_state_dict(read_state_dict(weights), strict=False)
        if missing:
            raise ValueError(f"{weights}: weights lack {len(missing)} tensors of member {name!r}, e.g. {missing[0]}")
    return Member(name, backbone, input_key, width, frozen)


@register_member("mlp", params={"hidden": IntRange(32, 512, log=True), "layers": IntRange(1, 3)})
def mlp(input_shape: tuple[int, ...], hidden: int = 128, layers: int = 2) -> tuple[nn.Module, int]:
    """A multilayer perceptron over the flattened input."""
    in_features = 1
    for size in input_shape:
        in_features *= size
    blocks: list[nn.Module] = [nn.Flatten()]
    for _ in range(layers):
        blocks += [nn.Linear(in_features, hidden), nn.LayerNorm(hidden), nn.GELU()]
        in_features = hidden
    return nn.Sequential(*blocks), hidden


@register_member("small_cnn", params={"channels": Choice((16, 32, 64))})
def small_cnn(input_shape: tuple[int, ...], channels: int = 32) -> tuple[nn.Module, int]:
    """Two conv blocks and global average pooling, for small images (C, H, W)."""
    if len(input_shape) != 3:
        raise ValueError(f"small_cnn reads images (C, H, W), got an input of shape {input_shape}")

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    net = nn.Sequential(
        *block(input_shape[0], channels),
        *block(channels, channels),
        nn.MaxPool2d(2),
        *block(channels, 2 * channels),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return net, 2 * channels


class TorchvisionFeatures(nn.Module):
    """A torchvision classifier with its last linear layer removed.

    Grey images are repeated to three channels and resized to ``image_size`` so any
    architecture accepts them. A weights file holds the plain torchvision model's
    state dict (its classifier keys are ignored), hence ``weights_module``.
    """

    def __init__(self, model: nn.Module, image_size: int) -> None:
        super().__init__()
        self.model = model
        self.image_size = image_size

    @property
    def weights_module(self) -> nn.Module:
        return self.model

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return self.model(x)


def strip_classifier(model: nn.Module) -> int:
    """Replace the model's last ``nn.Linear`` by identity; return its input width."""
    last_name, last = None, None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_name, last = module_name, module
    if last_name is None or last is None:
        raise ValueError(f"{type(model).__name__} has no linear classifier to strip")
    parent = model.get_submodule(last_name.rpartition(".")[0]) if "." in last_name else model
    setattr(parent, last_name.rpartition(".")[2], nn.Identity())
    return last.in_features


@register_member("torchvision")
def torchvision_model(input_shape: tuple[int, ...], arch: str, image_size: int = 32) -> tuple[nn.Module, int]:
    """Any torchvision classification architecture by name (``torchvision.models.get_model``)."""
    model = torchvision.models.get_model(arch, weights=None)
    width = strip_classifier(model)
    return TorchvisionFeatures(model, image_size), width


def torchvision_architectures() -> list[str]:
    """Names ``torchvision.models.get_model`` accepts for classification."""
    return sorted(torchvision.models.list_models(module=torchvision.models))
