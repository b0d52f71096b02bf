"""Build the sound + image + text example: spoken digits beside pictures of them (no download).

Each of 600 rows of ``data/manifest.csv`` has three inputs that each say something about one digit:

- ``speech``: the digit's name spoken by espeak-ng (Debian's speech synthesiser: ``apt-get install
  espeak-ng``), one of 5 English accents x 4 voices, at a random speed and pitch, with background
  noise at 5 to 20 dB below the speech: a WAV file in ``data/speech/``;
- ``image``: scikit-learn's 8x8 picture of the digit shrunk to 4x4 (``data/images/``): blurred;
- ``text``: whether the digit is drawn with a closed loop (0, 4, 6, 8, 9), 10% of the notes wrong.

None of the three is enough alone to read every row well. Run from anywhere:

    python examples/audio/make_data.py            # writes examples/audio/data/
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile
from PIL import Image
from sklearn.datasets import load_digits

from trainables.preprocess import resample

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbcwmd"]
VOICES = ["m1", "m3", "f2", "f4"]  # espeak-ng's voice variants
ROWS = 600
RATE = 16_000  # what the members read: written at it, the clips need no resampling in training
LOOPED = {0, 4, 6, 8, 9}
NOTES = {True: ["it has a loop", "drawn with a closed loop", "a digit with a hole"], False: ["no loop in it", "drawn with open strokes", "a digit without a hole"]}


def speak(word: str, accent: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """``word`` spoken by espeak-ng: mono samples at ``RATE``."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: apt-get install espeak-ng (or `make audio`, which installs it)")
    wav = subprocess.run(
        ["espeak-ng", "-v", f"{accent}+{voice}", "-s", str(speed), "-p", str(pitch), "--stdout", word], capture_output=True, check=True
    ).stdout
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    return resample(samples, rate, RATE)


def with_noise(samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The speech with white noise at 5 to 20 dB below its power, and up to a quarter second's room around it."""
    padded = np.pad(samples, (int(rng.integers(0, RATE // 4)), int(rng.integers(0, RATE // 4))))
    power = float(np.mean(samples**2)) or 1e-8
    snr = rng.uniform(5.0, 20.0)
    return (padded + rng.normal(0.0, np.sqrt(power / 10 ** (snr / 10)), len(padded))).astype(np.float32)


def note(label: int, rng: np.random.Generator, wrong: float = 0.1) -> str:
    """Whether the digit has a closed loop, in one of a few wordings, wrong with probability ``wrong``."""
    looped = (label in LOOPED) != (rng.random() < wrong)
    return str(rng.choice(NOTES[looped]))


def build(out: Path, seed: int = 0, rows: int = ROWS) -> Path:
    rng = np.random.default_rng(seed)
    digits = load_digits()
    for folder in ("speech", "images"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    picked = rng.choice(len(digits.target), size=rows, replace=False)
    records = []
    for i, index in enumerate(picked):
        label = int(digits.target[index])
        samples = speak(WORDS[label], str(rng.choice(ACCENTS)), str(rng.choice(VOICES)), int(rng.integers(120, 220)), int(rng.integers(20, 80)))
        soundfile.write(out / "speech" / f"{i:04d}.wav", with_noise(samples, rng), RATE)
        pixels = (digits.images[index] * (255.0 / 16.0)).round().astype(np.uint8)
        Image.fromarray(pixels).resize((4, 4), Image.BILINEAR).save(out / "images" / f"{i:04d}.png")
        records.append({"speech": f"speech/{i:04d}.wav", "image": f"images/{i:04d}.png", "text": note(label, rng), "label": label})
    manifest = out / "manifest.csv"
    pd.DataFrame(records).to_csv(manifest, index=False)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"wrote {build(args.out, args.seed)}")


if __name__ == "__main__":
    main()
