"""Write a synthetic sound data set of N rows: one-second 16 kHz WAV clips of 8 classes.

A class is a pitch (4, a fifth apart) and a rhythm (a steady tone or two beeps); each clip has its
own start, loudness, slight detune and noise 0 to 15 dB below the tone, so a short clip cut from
the middle may miss a beep. The scale benchmark's audio arm reads it:

    python -m benchmarks.make_sounds OUT --rows 40000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile

from benchmarks.make_images import write_manifest

RATE = 16_000
PITCHES = (220.0, 330.0, 495.0, 742.5)
RHYTHMS = ("steady", "beeps")


def clip(index: int, seed: int, seconds: float) -> tuple[np.ndarray, str]:
    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(len(PITCHES) * len(RHYTHMS)))
    pitch, rhythm = PITCHES[label % len(PITCHES)], RHYTHMS[label // len(PITCHES)]
    t = np.arange(int(RATE * seconds)) / RATE
    tone = np.sin(2 * np.pi * pitch * rng.uniform(0.97, 1.03) * t + rng.uniform(0, 2 * np.pi))
    if rhythm == "beeps":
        start = rng.uniform(0.0, 0.3)
        tone *= ((t > start) & (t < start + 0.2)) | ((t > start + 0.45) & (t < start + 0.65))
    noise = rng.standard_normal(len(t)) * np.sqrt(np.mean(tone**2) + 1e-6) * 10 ** (-rng.uniform(0, 15) / 20)
    return (rng.uniform(0.1, 0.5) * (tone + noise)).astype(np.float32), f"{pitch:g}hz-{rhythm}"


def write_range(job: tuple[Path, int, int, int, int]) -> list[tuple[str, ...]]:
    folder, start, stop, seed, _size = job
    rows = []
    for index in range(start, stop):
        samples, label = clip(index, seed, 1.0)
        name = f"clips/{index // 1000:03d}/{index:06d}.wav"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(folder / name, np.clip(samples, -1, 1), RATE, subtype="PCM_16")
        rows.append((name, label))
    return rows


def build(folder: Path, rows: int, seed: int = 0) -> Path:
    """Write ``rows`` clips under ``folder`` and return the manifest (columns clip, label); kept if already there."""
    return write_manifest(folder, rows, ("clip", "label"), write_range, seed, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build(args.out, args.rows, args.seed))


if __name__ == "__main__":
    main()
