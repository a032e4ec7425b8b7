"""Configs, presets, save/load round trips, transformers folders, and checkpoint errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import mmlc
from mmlc.config import MmlcConfig, apply_overrides
from mmlc.errors import CheckpointError, ConfigError
from mmlc.models import loading
from mmlc.models.presets import preset


def test_presets_validate_and_override():
    cfg = preset("videollm-online-8b")
    assert cfg.frames.tokens_per_frame == 10 and cfg.stream.fps == 2.0 and cfg.stream.threshold == 0.725
    assert cfg.vision.image_size == 384 and cfg.lm.hf["hidden_size"] == 4096
    tiny = apply_overrides(preset("tiny"), {"threshold": 0.5, "frames__grid": 3, "lm.hf.num_hidden_layers": 2})
    assert tiny.stream.threshold == 0.5 and tiny.frames.tokens_per_frame == 10 and tiny.lm.hf["num_hidden_layers"] == 2
    assert MmlcConfig.from_dict(json.loads(json.dumps(tiny.to_dict()))) == tiny


@pytest.mark.parametrize("overrides,field", [
    ({"threshold": 2.0}, "stream.threshold"), ({"fps": 0}, "stream.fps"), ({"grid": -1}, "frames.grid"),
    ({"temporal": "none"}, "vision.hf.num_channels"), ({"trigger": "often"}, "stream.trigger"),
    ({"nonsense": 1}, "nonsense"), ({"stream.nonsense": 1}, "stream.nonsense"),
])
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        apply_overrides(preset("tiny"), overrides)


def test_unknown_preset_and_init():
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("huge")
    with pytest.raises(ConfigError, match="init"):
        mmlc.load("tiny-test", init="zeros")
    with pytest.raises(CheckpointError, match="neither a preset"):
        mmlc.load("no-such-model-anywhere")


def test_random_init_any_preset_on_meta_device():
    """The 8B layout builds without weights (on the meta device: no memory)."""
    from mmlc.models.streaming_lm import StreamingLM

    with torch.device("meta"):
        model = StreamingLM(preset("videollm-online-8b"))
    n = sum(p.numel() for p in model.parameters())
    assert 8.0e9 < n < 8.6e9  # SigLIP-L (~0.3B) + Llama-3-8B (~8.0B)


def test_save_load_round_trip(tiny_model, frames, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    loaded = mmlc.load(tmp_path / "m")
    assert loaded.config == tiny_model.config
    for (k, a), (_, b) in zip(tiny_model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
    a, b = tiny_model.stream(threshold=0.0), loaded.stream(threshold=0.0)
    for f in frames[:3]:
        a.push_frame(f)
        b.push_frame(f)
        torch.testing.assert_close(a.last_logits, b.last_logits)
    assert a.ask("what colour is the circle?").text == b.ask("what colour is the circle?").text


def test_checkpoint_folder_errors(tiny_model, tmp_path):
    folder = tiny_model.save_pretrained(tmp_path / "m")
    (folder / "model.safetensors").rename(tmp_path / "weights.bak")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        mmlc.load(folder)
    (tmp_path / "weights.bak").rename(folder / "model.safetensors")
    (folder / "tokenizer.json").rename(tmp_path / "tok.bak")
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        mmlc.load(folder)
    (tmp_path / "tok.bak").rename(folder / "tokenizer.json")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["lm"]["hf"]["hidden_size"] = 48
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="has shape"):
        mmlc.load(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        mmlc.load(folder)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        mmlc.load(folder)


def test_truncated_weights_file(tiny_model, tmp_path):
    folder = tiny_model.save_pretrained(tmp_path / "m")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="cannot be read as safetensors"):
        mmlc.load(folder)


def test_default_model_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "DEFAULT_MODEL", tmp_path)
    with pytest.raises(CheckpointError, match="mmlc train --recipe tiny"):
        mmlc.load()


def test_load_from_transformers_folders(tmp_path, frames, tokenizer):
    """A tiny random SigLIP vision model + a tiny Llama saved with save_pretrained, plus connector weights."""
    from transformers import LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    vision = SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                  num_attention_heads=4, image_size=16, patch_size=4))
    vision.save_pretrained(tmp_path / "vision")
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    lm.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    connector = {"connector.fc1.weight": torch.randn(32, 32), "connector.fc1.bias": torch.zeros(32),
                 "connector.fc2.weight": torch.randn(32, 32), "connector.fc2.bias": torch.zeros(32)}
    save_file(connector, str(tmp_path / "connector.safetensors"))

    model = mmlc.load(vision=tmp_path / "vision", lm=tmp_path / "lm", weights=tmp_path / "connector.safetensors")
    torch.testing.assert_close(model.connector.fc1.weight, connector["connector.fc1.weight"])
    torch.testing.assert_close(model.lm.lm_head.weight, lm.lm_head.weight)
    assert model.config.frames.temporal == "none" and model.config.vision.num_channels == 3
    session = model.stream(threshold=0.0)
    for f in frames[:2]:
        session.push_frame(f)
    assert session.stats()["frames_seen"] == 2
    # round trip through our own format
    model.save_pretrained(tmp_path / "mine")
    again = mmlc.load(tmp_path / "mine")
    torch.testing.assert_close(again.vision.state_dict()["embeddings.patch_embedding.weight"],
                               vision.state_dict()["embeddings.patch_embedding.weight"])


def test_transformers_folder_errors(tmp_path):
    (tmp_path / "vision").mkdir()
    (tmp_path / "lm").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        mmlc.load(vision=tmp_path / "vision", lm=tmp_path / "lm")
    (tmp_path / "vision" / "config.json").write_text("{}")
    (tmp_path / "lm" / "config.json").write_text("{}")
    (tmp_path / "vision" / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="safetensors only"):
        mmlc.load(vision=tmp_path / "vision", lm=tmp_path / "lm")
    with pytest.raises(ConfigError, match="both vision=DIR and lm=DIR"):
        mmlc.load(vision=tmp_path / "vision")
