"""Members that read recordings (an ``audio`` input: ``AudioRef`` rows, decoded per batch by
``AudioPrep``: mono, at the member's rate, a clip of its length around the middle).

- ``audio_cnn``: log-mel spectrograms computed in torch (``mels`` bands, ``window`` samples a
  frame, searchable), then a small CNN trained from scratch;
- ``hf_audio``: a Hugging Face audio encoder by hub name or local folder (``AutoFeatureExtractor``
  + ``AutoModel``: wav2vec2, HuBERT, WavLM, AST, ...), its last hidden state averaged over time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from trainables.members import Backbone, BuildContext, MemberFacts, hf_text_files, needs_input, quiet_transformers, register_member
from trainables.preprocess import AudioPrep, Column
from trainables.registry import Choice, IntRange

LOG_FLOOR = 1e-6  # added to mel energies before the log: silence stays finite


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def mel_filterbank(rate: int, window: int, mels: int) -> Tensor:
    """Triangular filters (window // 2 + 1 frequency bins, ``mels`` bands) evenly spaced on the HTK mel scale up to rate / 2."""
    bins = np.linspace(0.0, rate / 2.0, window // 2 + 1)
    edges = 700.0 * (10.0 ** (np.linspace(0.0, hz_to_mel(np.array(rate / 2.0)), mels + 2) / 2595.0) - 1.0)
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - low) / np.maximum(centre - low, 1e-9)
    falling = (high - bins[None]) / np.maximum(high - centre, 1e-9)
    return torch.from_numpy(np.maximum(0.0, np.minimum(rising, falling)).T.astype(np.float32))


class LogMel(nn.Module):
    """Waveforms (N, T) -> log-mel spectrograms (N, 1, mels, frames); hop a quarter of the window."""

    def __init__(self, rate: int, window: int, mels: int) -> None:
        super().__init__()
        self.window_length = window
        self.register_buffer("window", torch.hann_window(window), persistent=False)
        self.register_buffer("filters", mel_filterbank(rate, window, mels), persistent=False)

    def forward(self, waveform: Tensor) -> Tensor:
        spectrum = torch.stft(waveform.float(), self.window_length, self.window_length // 4, window=self.window, return_complex=True)
        energies = torch.einsum("nft,fm->nmt", spectrum.abs().pow(2), self.filters)
        return torch.log(energies + LOG_FLOOR).unsqueeze(1)


@register_member("audio_cnn", params={"mels": IntRange(32, 128, log=True), "window": Choice((256, 400, 512, 1024))})
def audio_cnn(context: BuildContext, rate: int = 16_000, seconds: float = 1.0, mels: int = 64, window: int = 400, channels: int = 32) -> Backbone:
    """A small CNN on log-mel spectrograms, trained from scratch."""
    needs_input(context, "audio_cnn", "audio")

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

    net = nn.Sequential(
        LogMel(rate, window, mels),
        nn.BatchNorm2d(1),  # the log energies' scale, learned
        *block(1, channels),
        *block(channels, channels),
        *block(channels, 2 * channels),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return Backbone(net, 2 * channels, AudioPrep(rate, seconds))


@dataclass(frozen=True)
class ExtractorPrep:
    """Recordings as a Hugging Face feature extractor prepares them for its model: ``AudioPrep``'s
    clips at the extractor's rate, then the extractor (normalised samples, or filter-bank features)."""

    extractor: Any
    clips: AudioPrep
    fields: tuple[str, ...] = field(default=())

    def __call__(self, column: Column) -> dict[str, Tensor]:
        waveforms = self.clips.waveforms(column).numpy()
        prepared = self.extractor(list(waveforms), sampling_rate=self.clips.rate, return_tensors="pt")
        return {name: prepared[name] for name in self.fields}


class AudioEncoder(nn.Module):
    """A Hugging Face audio encoder, its last hidden state averaged over time."""

    def __init__(self, model: nn.Module, inputs: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.inputs = model, inputs

    def forward(self, *prepared: Tensor) -> Tensor:
        return self.model(**dict(zip(self.inputs, prepared, strict=True))).last_hidden_state.mean(dim=1)


@register_member("hf_audio", facts=MemberFacts(check_files=hf_text_files, local_paths=("model",)))
def hf_audio(context: BuildContext, model: str, seconds: float = 1.0) -> Backbone:
    """A Hugging Face audio encoder by hub name or local directory, at its feature extractor's rate."""
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    needs_input(context, "hf_audio", "audio")
    quiet_transformers()
    source = str(context.assets or model)
    extractor = AutoFeatureExtractor.from_pretrained(source)
    encoder = AutoModel.from_pretrained(source) if context.pretrained else AutoModel.from_config(AutoConfig.from_pretrained(source))
    clips = AudioPrep(int(extractor.sampling_rate), seconds)
    fields = tuple(name for name in extractor(np.zeros(clips.length, dtype=np.float32), sampling_rate=clips.rate, return_tensors="pt") if name in ("input_values", "input_features"))

    def save_assets(directory: Path) -> None:
        extractor.save_pretrained(directory)
        encoder.config.save_pretrained(directory)

    width = int(getattr(encoder.config, "hidden_size", 0) or getattr(encoder.config, "d_model"))
    return Backbone(AudioEncoder(encoder, fields), width, ExtractorPrep(extractor, clips, fields), save_assets=save_assets)
