"""Members: every kind builds and runs, weights come from where users keep them, policies freeze the right parts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_model, save_file, save_model

from trainables.members import MEMBERS, BuildContext, Member, build_member, parameter_blocks, torchvision_weights_file
from trainables.preprocess import decode_image

TENSOR_IMAGE = BuildContext("tensor", (1, 8, 8))
FILE_IMAGE = BuildContext("image", (3,))
TEXT = BuildContext("text", ())
TEXTS = ["an even number", "looks like a large odd digit", ""]


def images(n: int = 3) -> list[torch.Tensor]:
    """RGB uint8 images of different sizes, as image files decode."""
    return [torch.randint(0, 256, (3, 20 + 7 * i, 30 - 3 * i), dtype=torch.uint8) for i in range(n)]


@torch.no_grad()
def run(member: Member, column) -> torch.Tensor:
    return member.eval()(member.prepare({"x": column}))


@pytest.mark.parametrize(
    "kind,context,params,column",
    [
        ("mlp", BuildContext("tensor", (64,)), {"hidden": 32}, torch.rand(3, 64)),
        ("small_cnn", TENSOR_IMAGE, {"channels": 8}, torch.rand(3, 1, 8, 8)),
        ("small_cnn", FILE_IMAGE, {"channels": 8, "image_size": 16}, images()),
        ("torchvision", TENSOR_IMAGE, {"arch": "resnet18", "image_size": 32}, torch.rand(3, 1, 8, 8)),
        ("torchvision", FILE_IMAGE, {"arch": "mobilenet_v3_small", "image_size": 32}, images()),
        ("efficientnet_lite0", FILE_IMAGE, {"image_size": 32}, images()),
        ("checkpoint", FILE_IMAGE, {"factory": "torchvision.models:mobilenet_v3_small", "args": {"num_classes": 5}, "image_size": 32}, images()),
    ],
    ids=["mlp", "cnn-tensor", "cnn-files", "torchvision-tensor", "torchvision-files", "efficientnet-lite0", "checkpoint"],
)
def test_member_features(kind, context, params, column):
    member = build_member("m", kind, "x", context, params)
    features = run(member, column)
    assert features.shape == (3, member.width) and torch.isfinite(features).all()


def test_registry_lists_kinds():
    assert {"mlp", "small_cnn", "torchvision", "hf_text", "minilm", "checkpoint", "efficientnet_lite0"} <= set(MEMBERS.names())


def test_members_refuse_inputs_they_cannot_read():
    with pytest.raises(ValueError, match="reads text inputs, not image"):
        build_member("t", "minilm", "x", FILE_IMAGE, {})
    with pytest.raises(ValueError, match="set params.image_size"):
        build_member("c", "small_cnn", "x", FILE_IMAGE, {})
    with pytest.raises(ValueError, match="reads tensor inputs, not text"):
        build_member("m", "mlp", "x", TEXT, {})


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_torchvision_weights_from_local_file(tmp_path, fmt):
    """A plain torchvision state dict (classifier included) loads into the member."""
    torch.manual_seed(1)
    reference = torchvision.models.get_model("resnet18", weights=None, num_classes=10).eval()
    path = tmp_path / f"resnet18.{fmt}"
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, str(path)) if fmt == "safetensors" else torch.save(state, path)
    member = build_member("r", "torchvision", "image", TENSOR_IMAGE, {"arch": "resnet18", "image_size": 32}, weights=path).eval()
    x = torch.rand(2, 1, 8, 8)
    prepared = member.prepare({"image": x})
    reference.fc = torch.nn.Identity()
    assert torch.allclose(member(prepared), reference(prepared["r.x"]), atol=1e-5)


def test_torchvision_weights_enum_from_the_local_cache(tmp_path, monkeypatch):
    """``weights: DEFAULT`` reads torchvision's cache file (weights_only) and uses the weights' transforms."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    weights = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT
    cached = torchvision_weights_file(weights)
    params = {"arch": "mobilenet_v3_small", "weights": "DEFAULT"}
    with pytest.raises(FileNotFoundError, match="not in the torch hub cache"):
        build_member("v", "torchvision", "image", FILE_IMAGE, params)
    torch.manual_seed(2)
    reference = torchvision.models.mobilenet_v3_small().eval()
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    member = build_member("v", "torchvision", "image", FILE_IMAGE, params).eval()
    assert (member.preprocess.resize, member.preprocess.crop) == (256, 224)
    prepared = member.prepare({"image": images(2)})
    assert prepared["v.x"].shape == (2, 3, 224, 224)
    reference.classifier[-1] = torch.nn.Identity()
    assert torch.allclose(member(prepared), reference(prepared["v.x"]), atol=1e-5)


def test_weights_that_do_not_fit_are_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"something.else": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="weights lack"):
        build_member("m", "mlp", "x", BuildContext("tensor", (4,)), {"hidden": 8}, weights=path)


def test_checkpoint_member_class_by_import_path_with_its_weights(tmp_path):
    torch.manual_seed(3)
    reference = torchvision.models.mobilenet_v3_small(num_classes=4).eval()
    path = tmp_path / "mine.pt"
    torch.save(reference.state_dict(), path)
    params = {"factory": "torchvision.models.mobilenet_v3_small", "args": {"num_classes": 4}, "image_size": 32}
    member = build_member("c", "checkpoint", "x", FILE_IMAGE, params, weights=path).eval()
    prepared = member.prepare({"x": images(2)})
    reference.classifier[-1] = torch.nn.Identity()
    assert torch.allclose(member(prepared), reference(prepared["c.x"]), atol=1e-5)
    with pytest.raises(ValueError, match="cannot import 'no_such_package'"):
        build_member("c", "checkpoint", "x", FILE_IMAGE, {"factory": "no_such_package:Net", "image_size": 32})


def test_packaged_efficientnet_lite0_is_pretrained():
    """The packaged ImageNet weights load (not a random init): BatchNorm statistics are not the defaults."""
    member = build_member("e", "efficientnet_lite0", "x", FILE_IMAGE, {"image_size": 64})
    assert member.width == 1280
    assert not torch.allclose(member.backbone._bn0.running_var, torch.ones_like(member.backbone._bn0.running_var))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_hf_text_member_from_a_local_folder(tiny_hf_dir, pooling):
    from transformers import AutoModel, AutoTokenizer

    member = build_member("t", "hf_text", "text", TEXT, {"model": str(tiny_hf_dir), "pooling": pooling, "max_length": 8})
    prepared = member.prepare({"text": TEXTS})
    assert prepared["t.input_ids"].shape[1] <= 8
    features = member.eval()(prepared)
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_hf_dir), AutoModel.from_pretrained(tiny_hf_dir).eval()
    encoded = tokenizer(TEXTS, padding=True, truncation=True, max_length=8, return_tensors="pt")
    hidden = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    expected = hidden[:, 0] if pooling == "cls" else (hidden * mask).sum(1) / mask.sum(1)
    assert torch.allclose(features, expected, atol=1e-5)


def test_packaged_minilm_gives_real_sentence_embeddings():
    """all-MiniLM-L6-v2 from the package: paraphrases are closer than unrelated sentences."""
    member = build_member("t", "minilm", "text", TEXT, {}).eval()
    assert member.width == 384
    texts = ["the digit is a small even number", "a little even numeral", "the weather is rainy in Paris"]
    with torch.no_grad():
        features = torch.nn.functional.normalize(member(member.prepare({"text": texts})), dim=-1)
    similar, unrelated = float(features[0] @ features[1]), float(features[0] @ features[2])
    assert similar > unrelated + 0.2


@pytest.mark.parametrize(
    "policy,trainable",
    [("frozen", []), ("last_1", ["layer.1"]), ("last_2", ["layer.0", "layer.1"]), ("full", ["embeddings", "layer.0", "layer.1"])],
)
def test_training_policy(tiny_hf_dir, policy, trainable):
    member = build_member("t", "hf_text", "text", TEXT, {"model": str(tiny_hf_dir)}, policy=policy)
    names = {n for n, p in member.backbone.named_parameters() if p.requires_grad}
    for part in ("embeddings", "layer.0", "layer.1"):
        assert any(part in n for n in names) == (part in trainable), part
    member.train()
    assert all(not block.training for block in member.fixed_blocks)
    assert member.backbone.training == (policy != "frozen")


def test_a_frozen_image_backbone_infers_channels_last_with_the_same_features(tmp_path):
    """A frozen backbone of a kind that allows it only infers: its convolutions' weights are laid out
    channels-last (faster on CPU), its features are those of the same weights in the default layout,
    and its weights save to and load from safetensors as any other. Your own module (``checkpoint``),
    which may view a convolution's output as flat, keeps the default layout."""
    torch.manual_seed(0)
    frozen = build_member("e", "efficientnet_lite0", "x", FILE_IMAGE, {"image_size": 32}, policy="frozen")
    trains = build_member("e", "efficientnet_lite0", "x", FILE_IMAGE, {"image_size": 32}, policy="full")
    trains.load_state_dict(frozen.state_dict())
    convolutions = [m.weight for m in frozen.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions and all(w.is_contiguous(memory_format=torch.channels_last) for w in convolutions)
    assert not all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in trains.modules() if isinstance(m, torch.nn.Conv2d))
    column = images()
    torch.testing.assert_close(run(frozen, column), run(trains, column), atol=1e-4, rtol=1e-4)
    save_model(frozen, str(tmp_path / "m.safetensors"))
    load_model(trains, str(tmp_path / "m.safetensors"))
    torch.testing.assert_close(run(frozen, column), run(trains, column), atol=1e-4, rtol=1e-4)
    own = build_member("c", "checkpoint", "x", FILE_IMAGE, {"factory": "torchvision.models:mobilenet_v3_small", "image_size": 32}, policy="frozen")
    assert all(m.weight.is_contiguous() for m in own.modules() if isinstance(m, torch.nn.Conv2d))


def test_blocks_follow_the_network_from_input_to_output():
    resnet = torchvision.models.resnet18()
    blocks = parameter_blocks(resnet)
    assert blocks[0] is resnet.conv1 and blocks[-1] is resnet.fc and resnet.layer4[1] in blocks


def test_decode_image_reads_files_bytes_and_arrays(tmp_path):
    from PIL import Image

    path = tmp_path / "a.png"
    Image.new("L", (5, 4), color=200).save(path)
    from_path, from_bytes = decode_image(str(path)), decode_image(Path(path).read_bytes())
    assert from_path.shape == (3, 4, 5) and from_path.dtype == torch.uint8 and torch.equal(from_path, from_bytes)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(OSError):
        decode_image(str(tmp_path / "bad.png"))
