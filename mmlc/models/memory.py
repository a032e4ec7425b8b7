"""Recurrent memory bridge (VideoLLaMB, arXiv 2409.01071, section 3.2), at the vision width.

A stream is cut into scenes (:mod:`mmlc.streaming.scenes`). Each closed scene is folded into ``m``
memory tokens by a small transformer over ``[memory ; scene frame tokens]``; the memory part of the
output is the next memory (recurrence: scene s sees what scenes 1..s-1 left in the memory). A
retriever then refreshes it by cross-attention over the cache of every earlier scene's memory,
which counters the forgetting of plain recurrence (VideoLLaMB's "memory cache with retrieval")::

    M'_s = Bridge([M_{s-1} ; X_s])[:m]                 (self-attention layers, pre-norm)
    M_s  = M'_s + CrossAttn(q=M'_s, kv=[M_1 .. M_{s-1}])
    cache <- cache + [M_s]                            (at most ``max_cached`` entries, oldest dropped)

``M_0`` is learned. The output stays at the vision width so that the model's connector projects it
to the LM width like frame tokens, and the LM reads it at memory placeholder tokens.

Order inside a scene: the bridge's self-attention sees a set of tokens, so each scene token gets two
learned embeddings added first: its slot in the frame (pooled token, grid cell) and the age of its
frame (frames before the scene's last, capped at ``max_age - 1``). Without them "the colour the square
had last" and "a colour it had once" are indistinguishable.

Streaming with memory (``model.stream(memory=True)``, :mod:`mmlc.streaming.session`) folds each
closed scene and keeps its memory in the LM context; training (``memory`` stage of the tiny recipe)
runs the same fold through the same layout.
"""

from __future__ import annotations

import torch
from torch import nn

from mmlc.config import MemoryConfig
from mmlc.errors import ConfigError

__all__ = ["MemoryBridge", "MemoryConfig", "MemoryState"]


class _Block(nn.Module):
    """Pre-norm transformer block; with ``context`` it cross-attends instead of self-attending."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        kv = h if context is None else context
        x = x + self.attn(h, kv, kv, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class MemoryBridge(nn.Module):
    """Folds scenes into memory tokens; see the module docstring for the recurrence."""

    def __init__(self, width: int, config: MemoryConfig | None = None, slots: int = 1):
        super().__init__()
        self.config = config or MemoryConfig(tokens=32)
        c = self.config
        if c.tokens < 1:
            raise ConfigError(f"memory.tokens = {c.tokens}: a memory bridge needs at least 1 memory token")
        if width % c.heads:
            raise ConfigError(f"memory.heads={c.heads} must divide the vision width {width}")
        self.width = width
        self.initial = nn.Parameter(torch.randn(c.tokens, width) * width ** -0.5)
        self.slot = nn.Parameter(torch.zeros(slots, width))
        self.age = nn.Parameter(torch.zeros(c.max_age, width))
        self.blocks = nn.ModuleList(_Block(width, c.heads, c.mlp_ratio) for _ in range(c.layers))
        self.retriever = _Block(width, c.heads, c.mlp_ratio)
        self.norm = nn.LayerNorm(width)

    def initial_memory(self, batch: int = 1) -> torch.Tensor:
        return self.initial[None].expand(batch, -1, -1)

    def scene_tokens(self, scene: torch.Tensor) -> torch.Tensor:
        """Frame tokens (B, F, T, Dv) -> (B, F*T, Dv) with slot and age embeddings added; (B, n, Dv) is
        read as n one-token frames."""
        if scene.ndim == 3:
            scene = scene[:, :, None]
        if scene.ndim != 4 or scene.shape[-1] != self.width:
            raise ValueError(f"scene {tuple(scene.shape)} must be (B, frames, tokens, {self.width}) or (B, *, {self.width})")
        b, f, t, _ = scene.shape
        if t > self.slot.shape[0]:
            raise ValueError(f"scene frames have {t} tokens but the bridge was built for {self.slot.shape[0]} a frame")
        age = torch.arange(f - 1, -1, -1, device=scene.device).clamp_max(self.age.shape[0] - 1)
        x = scene + self.slot[:t][None, None] + self.age[age][None, :, None]
        return x.reshape(b, f * t, self.width)

    def fold(self, memory: torch.Tensor, scene: torch.Tensor, cache: torch.Tensor | None = None) -> torch.Tensor:
        """One scene step. ``memory`` (B, m, Dv), ``scene`` the scene's frame tokens (B, F, T, Dv) (or
        (B, n, Dv)), ``cache`` (B, k, Dv) earlier memories flattened (or None). Returns the new memory."""
        if memory.ndim != 3 or memory.shape[-1] != self.width:
            raise ValueError(f"memory {tuple(memory.shape)} must be (B, *, {self.width})")
        scene = self.scene_tokens(scene.to(memory.dtype))
        m = memory.shape[1]
        x = torch.cat([memory, scene], dim=1)
        for block in self.blocks:
            x = block(x)
        new = x[:, :m]
        if cache is not None and cache.shape[1] > 0:
            new = self.retriever(new, context=cache)
        return self.norm(new)

    def forward(self, scenes: list[torch.Tensor]) -> list[torch.Tensor]:
        """Fold scenes in order from the initial memory (training); the memory after each scene."""
        state = MemoryState(self, batch=scenes[0].shape[0] if scenes else 1)
        return [state.add_batch(s) for s in scenes]


class MemoryState:
    """The running memory of one stream and its retrieval cache (bounded by ``max_cached``)."""

    def __init__(self, bridge: MemoryBridge, batch: int = 1):
        self.bridge = bridge
        self.memory = bridge.initial_memory(batch)
        self.cache: list[torch.Tensor] = []
        self.scenes = 0

    def add_scene(self, scene_tokens: torch.Tensor) -> torch.Tensor:
        """Fold a closed scene's frame tokens (F, T, Dv) (a flat (n, Dv): n one-token
        frames); returns the new memory (B, m, Dv)."""
        if scene_tokens.ndim == 2:
            scene_tokens = scene_tokens[None, :, None]
        elif scene_tokens.ndim == 3:
            scene_tokens = scene_tokens[None]
        return self.add_batch(scene_tokens)

    def add_batch(self, scene_tokens: torch.Tensor) -> torch.Tensor:
        """Fold a batch of scenes, (B, F, T, Dv) or (B, n, Dv); returns the new memory (B, m, Dv)."""
        cache = torch.cat(self.cache, dim=1) if self.cache else None
        self.memory = self.bridge.fold(self.memory, scene_tokens, cache)
        self.cache.append(self.memory)
        if len(self.cache) > self.bridge.config.max_cached:
            self.cache.pop(0)
        self.scenes += 1
        return self.memory
