"""Shared fixtures: a small valid spec, written where a test wants it, and one finished search of it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml

pytest_plugins = ["tests.services"]  # the S3 and PostgreSQL server fixtures

TINY_SPEC: dict[str, Any] = {
    "name": "tiny-search",
    "seed": 3,
    "data": {"source": "digits", "splits": {"val": 0.2, "test": 0.2}},
    "members": [
        {"name": "cnn", "kind": "small_cnn", "input": "image", "params": {"channels": 16}},
        {"name": "mlp", "kind": "mlp", "input": "flat", "params": {"hidden": 64, "layers": 1}},
    ],
    "fusion": {
        "min_members": 1,
        "operators": {"weighted": {"weight": {"low": 0.2, "high": 1.0}}, "concat_mlp": {"hidden": [32, 64]}},
    },
    "hyperparameters": {"lr": {"low": 0.002, "high": 0.01, "log": True}, "epochs": 2, "batch_size": 64},
    "objective": {"metric": "val_log_loss", "mode": "min"},
    "budget": {"num_samples": 4, "max_concurrent": 2},
    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "resources": {"cpu": 1},
}


@pytest.fixture
def spec_dict() -> dict[str, Any]:
    return copy.deepcopy(TINY_SPEC)


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[[Any], Path]:
    def write(content: Any, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
        return path

    return write


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT and its WordPiece tokenizer, built here and saved as a Hugging Face folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory = tmp_path_factory.mktemp("tiny-bert")
    words = "zero one two three four five six seven eight nine even odd small large number digit looks like a an".split()
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(directory)
    config = BertConfig(
        vocab_size=5 + len(words), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny wav2vec2 (16 wide, one layer) and its feature extractor (16 kHz), built here and saved
    as a Hugging Face folder."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    directory = tmp_path_factory.mktemp("tiny-wav2vec2")
    config = Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 4),
        conv_kernel=(10, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, vocab_size=10,
    )
    torch.manual_seed(0)
    Wav2Vec2Model(config).save_pretrained(directory)
    Wav2Vec2FeatureExtractor(sampling_rate=16_000, return_attention_mask=False).save_pretrained(directory)
    return directory


@pytest.fixture(autouse=True)
def no_inherited_tracking_uri(monkeypatch):
    """Each test starts without $MLFLOW_TRACKING_URI: mlflow.set_tracking_uri (called by any search run
    in this process) sets it, and processes a test starts (drivers, Ray nodes) would inherit it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def run_search_in(root: Path, spec: dict[str, Any], name: str = "spec.yaml") -> Path:
    """Write ``spec`` (its storage under ``root``) and run it through the CLI with ``root`` as the
    working directory, as a user does; returns the spec's path."""
    import os

    import ray

    from search.cli import main

    spec_path = root / name
    spec_path.write_text(yaml.safe_dump({**spec, "storage": str(root / "store")}))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        code = main(["run", str(spec_path)])
    finally:
        os.chdir(cwd)
        ray.shutdown()
    assert code == 0
    return spec_path


@pytest.fixture(scope="session")
def searched(tmp_path_factory):
    """A finished search of ``TINY_SPEC`` run through the CLI (its spec, the spec's path and an MLflow
    client of its store), shared by the tests that read a search back."""
    from mlflow.tracking import MlflowClient

    from search.spec.schema import load_spec

    spec_path = run_search_in(tmp_path_factory.mktemp("search"), TINY_SPEC, "tiny.yaml")
    spec = load_spec(spec_path)
    return spec, spec_path, MlflowClient(spec.tracking_uri)
