"""Per-member preprocessing: a raw input column -> the tensors one member reads.

A dataset holds each input raw (``Column``): numbers as one float tensor, images
as a list of ``ImageRef`` (a file path or encoded bytes, decoded when a batch needs
the pixels; decoded uint8 tensors (C, H, W) are accepted too), recordings as a list of
``AudioRef`` (the same, for sound), texts as a list of strings, numeric and categorical columns together as one ``Table``. Each member owns a ``Preprocess`` built from its own settings (a
torchvision weights' transforms, a tokenizer and a max length, ...), applied per
batch by the input pipeline (``trainables.pipeline``). Image members may augment
their training batches (``AUGMENTS``, torchvision.transforms.v2).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

if TYPE_CHECKING:
    from torchvision.transforms import v2

@dataclass(frozen=True)
class Table:
    """Numeric and categorical columns of the same rows: ``numbers`` float32 (N, numeric columns),
    NaN where a value is missing; ``categories`` object (N, categorical columns), strings or None."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    numbers: np.ndarray
    categories: np.ndarray

    @classmethod
    def of(cls, numeric: tuple[str, ...], categorical: tuple[str, ...], numbers: list[list[float]], categories: list[list[str | None]]) -> "Table":
        """A table from its cells, column by column: ``numbers`` one list per numeric column (NaN where
        missing), ``categories`` one per categorical column (None where missing), of equal length."""
        rows = len((numbers or categories or [[]])[0])
        cells = np.empty((rows, len(categorical)), dtype=object)
        for j, column in enumerate(categories):
            cells[:, j] = column
        return cls(numeric, categorical, np.array(numbers, dtype=np.float32).T.reshape(rows, len(numeric)), cells)

    def __len__(self) -> int:
        return len(self.numbers)

    def rows(self, rows: Sequence[int] | np.ndarray | Tensor) -> "Table":
        index = np.asarray(rows, dtype=np.int64)
        return Table(self.numeric, self.categorical, self.numbers[index], self.categories[index])


# A raw input column: a float tensor (N, ...), a list of images (``ImageRef`` or uint8 (C, H, W)), a list of
# strings, or a ``Table``.
Column = Tensor | list | Table
INPUT_KINDS = ("tensor", "image", "text", "table", "audio")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def column_kind(column: Column) -> str:
    """``tensor``, ``image``, ``text``, ``table`` or ``audio``: what a raw column holds."""
    if isinstance(column, Tensor):
        return "tensor"
    if isinstance(column, Table):
        return "table"
    if column and isinstance(column[0], str):
        return "text"
    if column and isinstance(column[0], AudioRef):
        return "audio"
    return "image"


def take(column: Column, rows: Sequence[int] | np.ndarray | Tensor) -> Column:
    """The given rows of a raw column."""
    if isinstance(column, Tensor):
        return column[torch.as_tensor(rows, dtype=torch.long)]
    if isinstance(column, Table):
        return column.rows(rows)
    return [column[int(i)] for i in rows]


def padding_order(column: Column) -> np.ndarray | None:
    """The column's rows in the order that pads least when prepared a batch at a time: texts by
    length (a batch of texts is padded to its longest; MiniLM ran 1,077 short texts in 5.5 s as
    they came, 3.5 s in this order); None for other columns, whose rows all prepare to one size."""
    if column_kind(column) != "text":
        return None
    return np.argsort([len(text) for text in column], kind="stable")


@dataclass(frozen=True)
class FileRef:
    """A row not decoded yet: a file path or its encoded bytes, and the sha256 of those bytes.

    The digest (taken when the row was checked) is what the feature cache's fingerprints read,
    so no pass over the pixels or samples is needed to know whether a file changed.
    """

    source: str | bytes
    digest: str

    @classmethod
    def read(cls, source: str | bytes) -> "FileRef":
        """The reference to ``source`` (a path or encoded bytes), its bytes digested."""
        return cls(source, hashlib.sha256(file_bytes(source)).hexdigest())

    def encoded(self) -> bytes:
        """The file's bytes."""
        return file_bytes(self.source)


def file_bytes(source: str | bytes) -> bytes:
    """Encoded bytes as they are, or a path's file read."""
    return source if isinstance(source, bytes) else Path(source).read_bytes()


class ImageRef(FileRef):
    """An image row not decoded yet."""

    def decode(self, min_side: int | None = None) -> Tensor:
        return decode_image(self.source if isinstance(self.source, bytes) else Path(self.source), min_side)


class AudioRef(FileRef):
    """A recording not decoded yet (WAV, FLAC, Ogg/Vorbis or MP3: what libsndfile reads)."""

    def decode(self) -> tuple[np.ndarray, int]:
        """Its samples mixed to mono (float32 in [-1, 1]) and its sampling rate."""
        return decode_audio(self.source)


def decode_audio(source: str | bytes) -> tuple[np.ndarray, int]:
    """Mono float32 samples and the rate of a recording (a path or its encoded bytes)."""
    import soundfile

    samples, rate = soundfile.read(io.BytesIO(source) if isinstance(source, bytes) else source, dtype="float32", always_2d=True)
    return samples.mean(axis=1), int(rate)


def resample(samples: np.ndarray, rate: int, to: int) -> np.ndarray:
    """``samples`` at ``rate`` resampled to ``to`` (polyphase, with its anti-aliasing filter)."""
    if rate == to:
        return samples
    from scipy.signal import resample_poly

    common = np.gcd(rate, to)
    return resample_poly(samples, to // common, rate // common).astype(np.float32)


def clip(samples: np.ndarray, length: int) -> np.ndarray:
    """``length`` samples: the middle of a longer recording, a shorter one padded with silence at both ends."""
    if len(samples) >= length:
        start = (len(samples) - length) // 2
        return samples[start : start + length]
    before = (length - len(samples)) // 2
    return np.pad(samples, (before, length - len(samples) - before))


def crops(samples: np.ndarray, length: int, count: int) -> np.ndarray:
    """``count`` clips of ``length`` samples (count, length): one from the middle (``clip``), or
    several evenly spaced from the first sample to the last, covering the whole recording when
    count x length reaches its length; a recording no longer than a clip gives ``clip`` each time."""
    if count == 1 or len(samples) <= length:
        return np.stack([clip(samples, length)] * count)
    starts = np.linspace(0, len(samples) - length, count).round().astype(int)
    return np.stack([samples[start : start + length] for start in starts])


@dataclass(frozen=True)
class AudioPrep:
    """Recordings to a float batch of waveforms (N, count, rate x seconds): decoded, mixed to mono,
    resampled to ``rate``, and cut into ``count`` clips of ``seconds`` (``crops``) or padded. Audio
    members average their features over a recording's clips, in training and at evaluation alike."""

    rate: int = 16_000
    seconds: float = 1.0
    count: int = 1  # clips a recording
    fields: ClassVar[tuple[str, ...]] = ("x",)

    def __call__(self, column: Column) -> dict[str, Tensor]:
        return {"x": self.waveforms(column)}

    @property
    def augments(self) -> tuple[str, ...]:
        """The augmentations ``augment:`` may name for it (``AUDIO_AUGMENTS``)."""
        return tuple(AUDIO_AUGMENTS)

    def augmented(self, column: Column, name: str, seeds: Sequence[int]) -> dict[str, Tensor]:
        """``__call__`` with the augmentation ``name`` applied to each clip, seeded by its row's seed."""
        change = AUDIO_AUGMENTS[name]

        def row(clips: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            return np.stack([change(x, rng) for x in clips])

        batch = self.waveforms(column).numpy()
        return {"x": torch.from_numpy(np.stack([row(clips, np.random.default_rng(seed)) for clips, seed in zip(batch, seeds, strict=True)]).astype(np.float32))}

    @property
    def length(self) -> int:
        return int(round(self.rate * self.seconds))

    def waveforms(self, column: Column) -> Tensor:
        if column_kind(column) != "audio":
            raise ValueError(f"expects recordings, got a column of {column_kind(column)}s")
        return torch.from_numpy(np.stack([crops(resample(*ref.decode(), self.rate), self.length, self.count) for ref in column]))


def as_pixels(image: "ImageRef | Tensor", min_side: int | None = None) -> Tensor:
    """A uint8 (C, H, W) tensor for one image row, decoding a reference (see ``decode_image``)."""
    return image.decode(min_side) if isinstance(image, ImageRef) else image


def decode_image(value: Any, min_side: int | None = None) -> Tensor:
    """An RGB uint8 tensor (3, H, W) from a PIL image, encoded bytes, a file path or an array.

    ``min_side``: the caller resizes the shorter side to this next, so a JPEG may be decoded at a
    reduced scale (1/2, 1/4, 1/8: PIL's draft mode) as long as both sides stay at least this large.
    """
    if isinstance(value, np.ndarray):
        array = value if value.ndim == 3 else np.stack([value] * 3, axis=-1)
        if array.dtype != np.uint8:
            raise ValueError(f"an image array must be uint8 (H, W[, C]), got {array.dtype}")
        return torch.from_numpy(np.ascontiguousarray(array[..., :3])).permute(2, 0, 1)
    if isinstance(value, (bytes, bytearray)):
        value = Image.open(io.BytesIO(value))
    elif isinstance(value, (str, Path)):
        value = Image.open(value)
    if not isinstance(value, Image.Image):
        raise ValueError(f"cannot read an image from {type(value).__name__}")
    if min_side is not None and value.format == "JPEG":
        value.draft("RGB", (min_side, min_side))
    value.load()  # decode now: a truncated file fails here, not in a trial
    if value.mode.startswith("I"):  # 16- or 32-bit grey ("I;16", "I"): PIL's RGB would clip it to white
        value = Image.fromarray(sixteen_to_eight_bits(np.asarray(value)))
    return torch.from_numpy(np.asarray(value.convert("RGB")).copy()).permute(2, 0, 1)


def sixteen_to_eight_bits(grey: np.ndarray) -> np.ndarray:
    """16-bit grey levels (0..65535) as 8-bit ones (0..255); a 32-bit image must hold 16-bit values."""
    if grey.size and (grey.min() < 0 or grey.max() > 65535):
        raise ValueError(f"a 32-bit grey image with values {grey.min()}..{grey.max()}; only 16-bit ranges (0..65535) are read")
    return (grey.astype(np.uint32) >> 8).astype(np.uint8)


class Preprocess(Protocol):
    """Turns a raw column into the named tensors a member's backbone reads (in ``fields`` order)."""

    fields: ClassVar[tuple[str, ...]]

    def __call__(self, column: Column) -> dict[str, Tensor]: ...


@dataclass(frozen=True)
class TensorPrep:
    """Numbers as they are (float32)."""

    fields: ClassVar[tuple[str, ...]] = ("x",)

    def __call__(self, column: Column) -> dict[str, Tensor]:
        if not isinstance(column, Tensor):
            raise ValueError(f"expects a numeric input, got a column of {column_kind(column)}s")
        return {"x": column.float()}


@dataclass(frozen=True)
class ImagePrep:
    """Images to a float batch (N, channels, crop, crop): resize the shorter side, centre-crop, normalise.

    ``resize=None`` keeps a numeric image input's own size (images from files need a size).
    Grey inputs are repeated to three channels when the backbone wants three. ``pixels``
    and ``normalise`` are the two halves of ``__call__``: augmentation goes between them.
    """

    resize: int | None = None
    crop: int | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    channels: int | None = None
    fields: ClassVar[tuple[str, ...]] = ("x",)

    def __call__(self, column: Column) -> dict[str, Tensor]:
        return {"x": self.normalise(self.pixels(column))}

    @property
    def augments(self) -> tuple[str, ...]:
        """The augmentations ``augment:`` may name for it (``AUGMENTS`` but ``none``)."""
        return tuple(name for name, build in AUGMENTS.items() if build is not None)

    def augmented(self, column: Column, name: str, seeds: Sequence[int]) -> dict[str, Tensor]:
        """``__call__`` with the augmentation ``name`` applied to each image, seeded by its row's seed."""
        images = self.pixels(column)
        transform = augmentation(name, images.shape[-2:])
        augmented = []
        for image, seed in zip(images, seeds, strict=True):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                augmented.append(transform(image))
        return {"x": self.normalise(torch.stack(augmented))}

    def pixels(self, column: Column) -> Tensor:
        """Resized and cropped images as floats in [0, 1] (N, C, H, W); references are decoded here."""
        if isinstance(column, Tensor):
            if column.ndim != 4:
                raise ValueError(f"expects images (N, C, H, W), got a tensor of shape {list(column.shape)}")
            return self.resize_batch(column.float() if column.is_floating_point() else column.float() / 255.0)
        if column_kind(column) != "image":
            raise ValueError("expects images, got a column of texts")
        if self.resize is None:
            raise ValueError("images read from files need an image_size (they differ in size)")
        return torch.stack([self.resize_batch(as_pixels(image, self.resize)[None].float() / 255.0)[0] for image in column])

    def normalise(self, batch: Tensor) -> Tensor:
        if self.channels == 3 and batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return ((batch - mean) / std).contiguous()

    def resize_batch(self, batch: Tensor) -> Tensor:
        if self.resize is None:
            return batch
        functional = transforms_v2().functional
        batch = functional.resize(batch, [self.resize], antialias=True)
        return functional.center_crop(batch, [self.crop or self.resize])

    def out_shape(self, raw_shape: Sequence[int]) -> tuple[int, int, int]:
        """(C, H, W) of the prepared images for a raw input of ``raw_shape`` ((C,) for files)."""
        channels = self.channels or int(raw_shape[0])
        if self.resize is None:
            return channels, int(raw_shape[1]), int(raw_shape[2])
        side = self.crop or self.resize
        return channels, side, side


def transforms_v2() -> ModuleType:
    """``torchvision.transforms.v2``, imported when images are first prepared: importing torchvision
    takes about 1.5 s, which a trial reading cached features, or a command reading a spec, never needs."""
    from torchvision.transforms import v2

    return v2


def flip_crop(size: Sequence[int]) -> v2.Transform:
    """A random crop of 35-100% of the area, resized back, and a horizontal flip half the time."""
    v2 = transforms_v2()
    return v2.Compose([v2.RandomResizedCrop(list(size), scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip()])


# Augmentations of training images, by the name ``augment:`` takes; each is built for an image size
# and applied to one resized image (floats in [0, 1]) before normalisation.
AUGMENTS: dict[str, Callable[[Sequence[int]], v2.Transform] | None] = {
    "none": None,
    "flip_crop": flip_crop,
    "trivialaugment": lambda size: transforms_v2().TrivialAugmentWide(),
    "randaugment": lambda size: transforms_v2().RandAugment(),
}


def shift_gain(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The clip shifted in time by up to a tenth of its length (wrapping round) at a gain of -6 to +6 dB."""
    most = len(clip) // 10
    return np.roll(clip, int(rng.integers(-most, most + 1))) * 10.0 ** (rng.uniform(-6.0, 6.0) / 20.0)


def noise_at(snr_db: float) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    """``shift_gain``, then white noise at ``snr_db`` below the clip's power."""

    def noisy(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        clip = shift_gain(clip, rng)
        power = float(np.mean(clip**2)) or 1e-8
        return clip + rng.normal(0.0, np.sqrt(power / 10.0 ** (snr_db / 10.0)), len(clip))

    return noisy


MASKED = 0.1  # SpecAugment's masks: each up to this share of the clip's time and of its frequencies


def specaugment(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``shift_gain``, then SpecAugment's two masks on the waveform: a span of time silenced and a band
    of frequencies removed (its Fourier coefficients zeroed), each up to a tenth of the whole."""
    clip = shift_gain(clip, rng).copy()
    span = int(rng.integers(0, int(len(clip) * MASKED) + 1))
    start = int(rng.integers(0, len(clip) - span + 1))
    clip[start : start + span] = 0.0
    spectrum = np.fft.rfft(clip)
    band = int(rng.integers(0, int(len(spectrum) * MASKED) + 1))
    low = int(rng.integers(0, len(spectrum) - band + 1))
    spectrum[low : low + band] = 0.0
    return np.fft.irfft(spectrum, n=len(clip))


# Augmentations of training clips (waveforms at the member's rate), by the name ``augment:`` takes;
# each is given one clip and a generator seeded from (seed, epoch, row).
AUDIO_AUGMENTS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "shift_gain": shift_gain,
    "noise_snr10": noise_at(10.0),
    "noise_snr20": noise_at(20.0),
    "noise_snr30": noise_at(30.0),
    "specaugment": specaugment,
}


def augmentation(name: str, size: Sequence[int]) -> v2.Transform | None:
    """The transform ``augment: name`` applies to images of (H, W) ``size``; None for ``none``."""
    if name not in AUGMENTS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got {name!r}")
    build = AUGMENTS[name]
    return None if build is None else build(size)


@dataclass(frozen=True)
class TextPrep:
    """Texts to token ids and an attention mask, padded to the longest text up to ``max_length``."""

    tokenizer: Any
    max_length: int
    fields: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask")

    def __call__(self, column: Column) -> dict[str, Tensor]:
        if isinstance(column, Tensor) or column_kind(column) != "text":
            raise ValueError("expects texts")
        encoded = self.tokenizer(
            list(column), padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


MAX_CATEGORIES = 256  # a categorical column keeps at most this many of its most frequent values


def fit_table(table: Table, max_categories: int = MAX_CATEGORIES) -> dict[str, Any]:
    """What preparing a table needs, fitted on ``table`` (the training split): each numeric column's
    mean and standard deviation over its present values, each categorical column's values by
    frequency (the ``max_categories`` most frequent; the rest count as unseen)."""
    numeric = {}
    for i, name in enumerate(table.numeric):
        present = table.numbers[:, i][~np.isnan(table.numbers[:, i])]
        mean = float(present.mean()) if len(present) else 0.0
        std = float(present.std()) if len(present) else 1.0
        numeric[name] = [mean, std if std > 1e-12 else 1.0]
    categorical = {}
    for i, name in enumerate(table.categorical):
        values, counts = np.unique([v for v in table.categories[:, i] if v is not None], return_counts=True)
        order = sorted(zip(counts.tolist(), values.tolist(), strict=True), key=lambda cv: (-cv[0], cv[1]))
        categorical[name] = [value for _, value in order[:max_categories]]
    return {"numeric": numeric, "categorical": categorical}


@dataclass(frozen=True)
class TablePrep:
    """A table to what a tabular member reads, with statistics fitted on the training split
    (``fit_table``): ``numbers`` (N, 2 x numeric columns), each value standardised (0 where missing)
    beside its missing indicator; ``categories`` (N, categorical columns) int64 indices, where 0 is an
    unseen (or too rare) value, 1 a missing one and the known values follow."""

    numeric: tuple[tuple[str, float, float], ...]  # (column, mean, std)
    categorical: tuple[tuple[str, tuple[str, ...]], ...]  # (column, known values)
    fields: ClassVar[tuple[str, ...]] = ("numbers", "categories")

    @classmethod
    def fitted(cls, stats: dict[str, Any]) -> "TablePrep":
        return cls(
            tuple((name, float(m), float(s)) for name, (m, s) in stats["numeric"].items()),
            tuple((name, tuple(values)) for name, values in stats["categorical"].items()),
        )

    @property
    def cardinalities(self) -> list[int]:
        """How many indices each categorical column has (known values, unseen and missing)."""
        return [len(values) + 2 for _, values in self.categorical]

    def __call__(self, column: Column) -> dict[str, Tensor]:
        if not isinstance(column, Table):
            raise ValueError(f"expects a table of numeric and categorical columns, got a column of {column_kind(column)}s")
        numbers = np.zeros((len(column), 2 * len(self.numeric)), dtype=np.float32)
        for i, (name, mean, std) in enumerate(self.numeric):
            values = column.numbers[:, column.numeric.index(name)]
            missing = np.isnan(values)
            numbers[:, 2 * i] = np.where(missing, 0.0, (values - mean) / std)
            numbers[:, 2 * i + 1] = missing
        categories = np.zeros((len(column), len(self.categorical)), dtype=np.int64)
        for i, (name, values) in enumerate(self.categorical):
            index = {value: j + 2 for j, value in enumerate(values)}
            cells = column.categories[:, column.categorical.index(name)]
            categories[:, i] = [1 if cell is None else index.get(cell, 0) for cell in cells]
        return {"numbers": torch.from_numpy(numbers), "categories": torch.from_numpy(categories)}


def image_prep_from_weights(weights: Any, image_size: int | None, channels: int = 3) -> ImagePrep:
    """A torchvision weights' own transforms (resize, crop, mean, std); ``image_size`` overrides the sizes."""
    transforms = weights.transforms()
    resize = image_size or int(transforms.resize_size[0])
    crop = image_size or int(transforms.crop_size[0])
    return ImagePrep(resize, crop, tuple(transforms.mean), tuple(transforms.std), channels)
