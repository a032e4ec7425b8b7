"""CachedDecoder: the state and model calls every session shares (stream and chat).

It owns the KV cache and the true position counter (RoPE positions continue from the number of
tokens fed, whatever the cache later holds), feeds chunks of the model's layout into the cache one
forward pass at a time, and greedy-decodes replies into the same cache. Subclasses add what is
specific: the frame clock and decisions (:class:`~mmlc.streaming.session.StreamSession`), image
turns (:class:`~mmlc.streaming.chat.ChatSession`).
"""

from __future__ import annotations

import math
import time

import torch
from transformers import DynamicCache

from mmlc.errors import ConfigError
from mmlc.models.layout import Chunk
from mmlc.streaming.kv import growing_cache

# growing: preallocated, doubled when full (mmlc.streaming.kv); dynamic: transformers' torch.cat cache
KV_CACHES = ("growing", "dynamic")


class CachedDecoder:
    """KV cache + position + greedy replies over a shared, stateless model."""

    def __init__(self, model, *, max_reply_tokens: int = 48, system: str | None = None,
                 keep_history: bool = False, profile: bool = False, kv_cache: str = "growing"):
        if kv_cache not in KV_CACHES:
            raise ConfigError(f"kv_cache {kv_cache!r} is unknown: use one of {KV_CACHES}")
        if max_reply_tokens < 1:
            raise ConfigError(f"max_reply_tokens must be >= 1, got {max_reply_tokens!r}")
        self.model = model
        self.layout = model.layout
        self.max_reply_tokens = int(max_reply_tokens)
        self.system = system
        self.keep_history = keep_history
        self.profile = profile
        self.kv_cache = kv_cache
        vocab = model.lm.get_input_embeddings().weight.shape[0]
        lay = self.layout
        banned = [lay.bos_id, lay.frame_id, lay.memory_id, lay.interval_id, lay.user_id, lay.assistant_id]
        self._reply_mask = torch.zeros(vocab, dtype=torch.bool, device=model.device)
        self._reply_mask[banned] = True

    def _reset_cache(self) -> None:
        config = getattr(self.model.lm, "config", None)
        self.cache = growing_cache(config) if self.kv_cache == "growing" else DynamicCache(config=config)
        self.position = 0          # true number of tokens fed (RoPE positions continue from here)
        self._started = False
        self.prefix_length = 0     # cached tokens of the prefix (bos + system): never cropped or dropped
        self._last_item: str | None = None   # "frame" | "text" | None (nothing since the prefix)
        # With keep_history: every fed id and frame-token block, to replay the context in one forward.
        self.history_ids: list[int] = []
        self.history_frames: list[torch.Tensor] = []
        self.history_tags: list[int] = []   # per history id: its image tag (-100: none)
        # With profile: per-reply timings (seconds), read by ``mmlc bench``.
        self.reply_times: list[dict] = []

    @property
    def kv_length(self) -> int:
        return self.cache.get_seq_length() if self._started else 0

    def _generate(self, logits: torch.Tensor, start: float = 0.0, kind: str = "reply", t: float = 0.0) -> str:
        """Greedy-decode a reply into the cache; always leaves a closed turn (``{end}`` fed).

        With ``profile``, records the time to the first token (from ``start``: prompt forward
        included) and the mean time per further token.
        """
        ids: list[int] = []
        end = self.layout.end_id
        first = None
        for _ in range(self.max_reply_tokens):
            nxt = int(logits.masked_fill(self._reply_mask, -math.inf).argmax())
            if first is None:
                first = time.perf_counter()
            if nxt == end:
                break
            ids.append(nxt)
            logits = self._forward_ids([nxt])
        self._forward_ids([end], need_logits=False)
        self._last_item = "text"
        if self.profile:
            done = time.perf_counter()
            self.reply_times.append({"t": t, "kind": kind, "first_token_s": first - start, "tokens": len(ids) + 1,
                                     "per_token_s": (done - first) / (len(ids) + 1)})
        return self.layout.decode(ids)

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self._forward_ids(self.layout.prefix(self.system).ids, need_logits=False)
            self.prefix_length = self.kv_length

    def _forward(self, chunk: Chunk, frame_tokens: torch.Tensor | None = None,
                 frame_words: torch.Tensor | None = None) -> torch.Tensor:
        return self._forward_ids(chunk.ids, frame_tokens, tags=chunk.tags, frame_words=frame_words)

    @torch.inference_mode()
    def _forward_ids(self, ids: list[int], frame_tokens: torch.Tensor | None = None,
                     need_logits: bool = True, memory_tokens: torch.Tensor | None = None,
                     tags: list[int] | None = None, frame_words: torch.Tensor | None = None,
                     memory_words: torch.Tensor | None = None) -> torch.Tensor | None:
        """Append ``ids`` to the cache at the true positions; logits (V,) of the last one. ``tags``: per
        id, a token whose embedding is added there (-100: none), as :attr:`Chunk.tags`. ``frame_words`` /
        ``memory_words``: the tag words of the frame / memory tokens, for a model with a copy head
        (:meth:`StreamingLM.forward`)."""
        self._start()
        dev = self.model.device
        input_ids = torch.tensor([ids], device=dev)
        positions = torch.arange(self.position, self.position + len(ids), device=dev)[None]
        extra = {} if tags is None else {"tags": torch.tensor([tags], device=dev)}
        extra.update({k: v for k, v in (("frame_words", frame_words), ("memory_words", memory_words)) if v is not None})
        out = self.model(input_ids, frame_tokens=frame_tokens, memory_tokens=memory_tokens, position_ids=positions,
                         cache=self.cache, logits_to_keep=1, **extra)
        self.position += len(ids)
        if self.keep_history:
            self.history_tags += list(tags) if tags is not None else [-100] * len(ids)
            self.history_ids += list(ids)
            if frame_tokens is not None:
                self.history_frames.append(frame_tokens.reshape(-1, frame_tokens.shape[-1]))
        return out.logits[0, -1] if need_logits else None
