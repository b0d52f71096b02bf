"""The pickle scan the champion tests rely on finds pickles whatever their name, and nothing else."""

from __future__ import annotations

import json
import pickle

import torch
from safetensors.torch import save_file

from tests.artifacts import pickles_in


def test_pickles_are_found_by_their_opcodes(tmp_path):
    (tmp_path / "model.bin").write_bytes(pickle.dumps({"a": 1}))
    (tmp_path / "old.dat").write_bytes(pickle.dumps([1, 2], protocol=0))
    torch.save({"w": torch.zeros(2)}, tmp_path / "weights.pt")
    (tmp_path / "composite.json").write_text(json.dumps({"members": []}))
    (tmp_path / "pyfunc_model.py").write_text("import os\nprint(1)\n")
    (tmp_path / "requirements.txt").write_text("mlflow==3.17\ntorch==2.14.1\n")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "weights.safetensors"))
    found = [p.replace(str(tmp_path) + "/", "") for p in pickles_in(tmp_path)]
    assert found == ["model.bin", "old.dat", "weights.pt:weights/data.pkl"]
