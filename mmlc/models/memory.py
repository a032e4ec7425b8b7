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

Status: the module, its state and its gradients are built and tested; it is not yet wired into
StreamSession nor trained (the memory-streaming issue does both).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmlc.errors import ConfigError


@dataclass
class MemoryConfig:
    """Sizes of the bridge (VideoLLaMB: 32 memory tokens, 1 layer, 8 heads)."""

    tokens: int = 32
    layers: int = 1
    heads: int = 8
    mlp_ratio: float = 4.0
    max_cached: int = 64       # memories the retriever may attend to (oldest dropped beyond)

    def __post_init__(self):
        for name in ("tokens", "layers", "heads", "max_cached"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"memory.{name} must be a positive integer, got {value!r}")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"memory.mlp_ratio must be > 0, got {self.mlp_ratio!r}")


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

    def __init__(self, width: int, config: MemoryConfig | None = None):
        super().__init__()
        self.config = config or MemoryConfig()
        c = self.config
        if width % c.heads:
            raise ConfigError(f"memory.heads={c.heads} must divide the vision width {width}")
        self.width = width
        self.initial = nn.Parameter(torch.randn(c.tokens, width) * width ** -0.5)
        self.blocks = nn.ModuleList(_Block(width, c.heads, c.mlp_ratio) for _ in range(c.layers))
        self.retriever = _Block(width, c.heads, c.mlp_ratio)
        self.norm = nn.LayerNorm(width)

    def initial_memory(self, batch: int = 1) -> torch.Tensor:
        return self.initial[None].expand(batch, -1, -1)

    def fold(self, memory: torch.Tensor, scene: torch.Tensor, cache: torch.Tensor | None = None) -> torch.Tensor:
        """One scene step. ``memory`` (B, m, Dv), ``scene`` (B, n, Dv) frame tokens of the scene,
        ``cache`` (B, k, Dv) earlier memories flattened (or None). Returns the new memory (B, m, Dv)."""
        if scene.ndim != 3 or memory.ndim != 3 or scene.shape[-1] != self.width or memory.shape[-1] != self.width:
            raise ValueError(f"memory {tuple(memory.shape)} and scene {tuple(scene.shape)} must be (B, *, {self.width})")
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
        return [state.add_scene(s) for s in scenes]


class MemoryState:
    """The running memory of one stream and its retrieval cache (bounded by ``max_cached``)."""

    def __init__(self, bridge: MemoryBridge, batch: int = 1):
        self.bridge = bridge
        self.memory = bridge.initial_memory(batch)
        self.cache: list[torch.Tensor] = []
        self.scenes = 0

    def add_scene(self, scene_tokens: torch.Tensor) -> torch.Tensor:
        """Fold a closed scene's frame tokens (B, n, Dv) or (n, Dv); returns the new memory (B, m, Dv)."""
        if scene_tokens.ndim == 2:
            scene_tokens = scene_tokens[None]
        cache = torch.cat(self.cache, dim=1) if self.cache else None
        self.memory = self.bridge.fold(self.memory, scene_tokens.to(self.memory.dtype), cache)
        self.cache.append(self.memory)
        if len(self.cache) > self.bridge.config.max_cached:
            self.cache.pop(0)
        self.scenes += 1
        return self.memory
