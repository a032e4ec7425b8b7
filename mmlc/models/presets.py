"""Named model presets, each a function returning a fresh :class:`MmlcConfig`.

- ``tiny``: the CPU-sized layout of the embedded default model mmlc-tiny (64 px frames read at
  128 px by a small ResNet tower that also sees the previous frame, 1 + 2x2 tokens a frame and 1 + 4x4
  a chat image, tagged with its number; a 4-layer Llama; a memory bridge of 16 tokens). The last
  stage of the ``tiny`` recipe moves frames to 1 + 4x4 (``Stage.frames_grid``; the bridge keeps folding
  1 + 2x2, ``memory.grid``), so the shipped model's config.json reads 4x4 frames; this preset is the
  layout its training starts from. A 3-layer SigLIP tower (patch 8 at 64 px) was tried first: after 700 auxiliary steps it
  read the room and the object count but not which shape had which colour (chance level). A ResNet
  at 64 px (a 16x16 map after its stem) was no better; at 128 px its map keeps the shapes' outlines.
- ``tiny-test``: the smallest random layout, for tests (hidden 32, 2 layers, 16 px frames).
- ``videollm-online-8b``: VideoLLM-online's layout: SigLIP-L/384 + Llama-3-8B, 1 + 3x3 tokens a
  frame, 2 fps, threshold 0.725 (random weights with ``init="random"``; real ones from local folders).
"""

from __future__ import annotations

from typing import Callable

from mmlc.config import (ConnectorConfig, FramesConfig, LMConfig, MemoryConfig, MmlcConfig, StreamConfig,
                         TemplateConfig, VisionConfig)
from mmlc.errors import ConfigError


def _siglip(hidden: int, layers: int, heads: int, mlp: int, image: int, patch: int, channels: int) -> dict:
    return {"model_type": "siglip_vision_model", "hidden_size": hidden, "intermediate_size": mlp,
            "num_hidden_layers": layers, "num_attention_heads": heads, "image_size": image,
            "patch_size": patch, "num_channels": channels, "vision_use_head": True}


def _resnet(stem: int, widths: list[int], depths: list[int], channels: int) -> dict:
    return {"model_type": "resnet", "num_channels": channels, "embedding_size": stem, "hidden_sizes": widths,
            "depths": depths, "layer_type": "basic", "downsample_in_first_stage": False}


def _llama(vocab: int, hidden: int, layers: int, heads: int, kv_heads: int, mlp: int, **extra) -> dict:
    cfg = {"model_type": "llama", "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": mlp,
           "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
           "max_position_embeddings": 8192, "tie_word_embeddings": True}
    cfg.update(extra)
    return cfg


def tiny() -> MmlcConfig:
    return MmlcConfig(
        name="tiny",
        vision=VisionConfig(hf=_resnet(stem=32, widths=[64, 96, 128], depths=[1, 1, 1], channels=6), size=128),
        frames=FramesConfig(pooled=True, grid=2, temporal="prev_frame", image_tags=True, image_grid=4),
        connector=ConnectorConfig(hidden=256),
        lm=LMConfig(hf=_llama(vocab=512, hidden=256, layers=4, heads=4, kv_heads=4, mlp=768)),
        template=TemplateConfig(),
        stream=StreamConfig(fps=2.0, threshold=0.725, max_reply_tokens=48),
        memory=MemoryConfig(tokens=16, layers=1, heads=8, max_memories=32, max_scene_seconds=32.0),
    )


def tiny_test() -> MmlcConfig:
    return MmlcConfig(
        name="tiny-test",
        vision=VisionConfig(hf=_siglip(hidden=32, layers=2, heads=4, mlp=64, image=16, patch=4, channels=6)),
        frames=FramesConfig(pooled=True, grid=2, temporal="prev_frame"),
        connector=ConnectorConfig(hidden=0),
        lm=LMConfig(hf=_llama(vocab=512, hidden=32, layers=2, heads=4, kv_heads=2, mlp=64)),
        stream=StreamConfig(max_reply_tokens=8),
        memory=MemoryConfig(tokens=4, layers=1, heads=4, max_memories=4, max_scene_seconds=4.0),
    )


def videollm_online_8b() -> MmlcConfig:
    return MmlcConfig(
        name="videollm-online-8b",
        vision=VisionConfig(hf=_siglip(hidden=1024, layers=24, heads=16, mlp=4096, image=384, patch=14, channels=3)),
        frames=FramesConfig(pooled=True, grid=3, temporal="none"),
        connector=ConnectorConfig(hidden=0),
        lm=LMConfig(hf=_llama(vocab=128256, hidden=4096, layers=32, heads=32, kv_heads=8, mlp=14336,
                              rope_theta=500000.0, tie_word_embeddings=False, rms_norm_eps=1e-5)),
        stream=StreamConfig(fps=2.0, threshold=0.725, max_reply_tokens=128),
        memory=MemoryConfig(tokens=32, layers=1, heads=8),   # VideoLLaMB's bridge sizes
    )


PRESETS: dict[str, Callable[[], MmlcConfig]] = {
    "tiny": tiny,
    "tiny-test": tiny_test,
    "videollm-online-8b": videollm_online_8b,
}


def preset(name: str) -> MmlcConfig:
    """The config of preset ``name`` (a fresh object each call)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}': choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
