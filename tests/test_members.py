"""Members: feature shapes, weights from local files, freezing."""

from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from trainables.members import MEMBERS, build_member


@pytest.mark.parametrize(
    "kind,input_shape,params",
    [("mlp", (64,), {"hidden": 32}), ("small_cnn", (1, 8, 8), {"channels": 8}), ("torchvision", (1, 8, 8), {"arch": "resnet18", "image_size": 32})],
)
def test_member_features(kind, input_shape, params):
    member = build_member("m", kind, "x", input_shape, params)
    features = member({"x": torch.rand(3, *input_shape)})
    assert features.shape == (3, member.width)


def test_registry_lists_kinds():
    assert {"mlp", "small_cnn", "torchvision"} <= set(MEMBERS.names())


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_torchvision_weights_from_local_file(tmp_path, fmt):
    """A plain torchvision state dict (classifier included) loads into the member."""
    torch.manual_seed(1)
    reference = torchvision.models.get_model("resnet18", weights=None, num_classes=10).eval()
    path = tmp_path / f"resnet18.{fmt}"
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, str(path)) if fmt == "safetensors" else torch.save(state, path)
    member = build_member("r", "torchvision", "image", (3, 32, 32), {"arch": "resnet18", "image_size": 32}, weights=path).eval()
    x = torch.rand(2, 3, 32, 32)
    reference.fc = torch.nn.Identity()
    assert torch.allclose(member({"image": x}), reference(x), atol=1e-5)


def test_weights_that_do_not_fit_are_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"something.else": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="weights lack"):
        build_member("m", "mlp", "x", (4,), {"hidden": 8}, weights=path)


def test_frozen_member_has_no_trainable_parameters_and_stays_in_eval():
    member = build_member("m", "small_cnn", "x", (1, 8, 8), {"channels": 8}, frozen=True)
    member.train()
    assert not any(p.requires_grad for p in member.parameters())
    assert not member.backbone.training
