"""A KV cache for streams: preallocated, grown by doubling, cropped in place.

transformers' ``DynamicLayer`` appends with ``torch.cat``, which re-allocates and copies the whole
cache at every forward: a stream feeds one frame (a few tokens) per forward, so at 10 minutes of
2 fps video (about 7,000 cached tokens for mmlc-tiny) each frame copied the full cache once more
than attention reads it, and per-frame latency grew with stream length for that reason alone.
:class:`GrowingLayer` writes the new keys/values into spare capacity (amortised O(new tokens)) and
returns views of the filled part; capacity doubles when it runs out. ``crop_to`` shortens in place
and ``drop`` removes a span (sliding windows, memory and compression rewrite parts of the cache).

Measured with ``mmlc bench`` before and after (README, Benchmarks).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

MIN_CAPACITY = 256


class GrowingLayer(DynamicLayer):
    """One layer's keys/values (B, H, capacity, D) with a fill length."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.length = 0
        cap = max(MIN_CAPACITY, 2 * key_states.shape[-2])
        self._k = key_states.new_empty(*key_states.shape[:-2], cap, key_states.shape[-1])
        self._v = value_states.new_empty(*value_states.shape[:-2], cap, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        end = self.length + n
        if end > self._k.shape[-2]:
            self._grow(max(2 * self._k.shape[-2], end))
        self._k[..., self.length:end, :].copy_(key_states)
        self._v[..., self.length:end, :].copy_(value_states)
        self.length = end
        self.keys, self.values = self._k[..., :end, :], self._v[..., :end, :]
        return self.keys, self.values

    def _grow(self, capacity: int) -> None:
        k = self._k.new_empty(*self._k.shape[:-2], capacity, self._k.shape[-1])
        v = self._v.new_empty(*self._v.shape[:-2], capacity, self._v.shape[-1])
        k[..., :self.length, :].copy_(self._k[..., :self.length, :])
        v[..., :self.length, :].copy_(self._v[..., :self.length, :])
        self._k, self._v = k, v

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def crop_to(self, length: int) -> None:
        """Keep the first ``length`` tokens."""
        if self.is_initialized:
            self.length = max(0, min(length, self.length))
            self.keys, self.values = self._k[..., :self.length, :], self._v[..., :self.length, :]

    def drop(self, start: int, end: int) -> None:
        """Remove cached tokens ``[start, end)``; later tokens move down (they keep their RoPE positions)."""
        if not self.is_initialized or end <= start:
            return
        tail = self.length - end
        if tail > 0:
            self._k[..., start:start + tail, :] = self._k[..., end:self.length, :].clone()
            self._v[..., start:start + tail, :] = self._v[..., end:self.length, :].clone()
        self.crop_to(start + max(tail, 0))

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        self.crop_to(self.get_seq_length() + tokens_to_remove)

    def reset(self) -> None:
        self.keys = self.values = None
        self.length = 0
        self.is_initialized = False

    @property
    def capacity(self) -> int:
        return self._k.shape[-2] if self.is_initialized else 0


def append_words(cache: DynamicCache, words: torch.Tensor) -> torch.Tensor:
    """Append the tag words (B, n, Vw) of ``n`` new tokens to ``cache.copy_words`` (the copy head's,
    :mod:`mmlc.models.copy`) and return all of them (B, L, Vw). As :class:`GrowingLayer` does for keys
    and values, the words live in a buffer with spare capacity (``cache.copy_buffer``) and
    ``copy_words`` is a view of its filled part, so a frame costs O(its tokens), not a copy of the
    whole cache's words."""
    before = getattr(cache, "copy_words", None)
    n0 = 0 if before is None else before.shape[1]
    end = n0 + words.shape[1]
    buf = getattr(cache, "copy_buffer", None)
    if (buf is None or before is None or buf.shape[1] < end or buf.shape[0] != words.shape[0]
            or buf.dtype != words.dtype or buf.device != words.device or before.data_ptr() != buf.data_ptr()):
        grown = words.new_empty(words.shape[0], max(MIN_CAPACITY, 2 * end), words.shape[2])
        if n0:
            grown[:, :n0] = before
        buf = grown
    buf[:, n0:end] = words
    cache.copy_buffer, cache.copy_words = buf, buf[:, :end]
    return cache.copy_words


def drop_tokens(cache: DynamicCache, start: int, end: int) -> None:
    """Remove tokens ``[start, end)`` from every layer of ``cache`` (growing or transformers' dynamic),
    and from the tag words the copy head keeps on it (``cache.copy_words``, :mod:`mmlc.models.copy`)."""
    words = getattr(cache, "copy_words", None)
    buf = getattr(cache, "copy_buffer", None)
    if words is not None and buf is not None and words.data_ptr() == buf.data_ptr() and end > start:
        n, end = words.shape[1], min(end, words.shape[1])
        tail = n - end
        if tail > 0:
            buf[:, start:start + tail] = buf[:, end:n].clone()
        cache.copy_words = buf[:, :start + max(tail, 0)]
    elif words is not None:
        cache.copy_words = torch.cat([words[:, :start], words[:, end:]], dim=1)
    for layer in cache.layers:
        if isinstance(layer, GrowingLayer):
            layer.drop(start, end)
        elif getattr(layer, "is_initialized", False) and layer.keys is not None and layer.keys.numel():
            layer.keys = torch.cat([layer.keys[..., :start, :], layer.keys[..., end:, :]], dim=-2)
            layer.values = torch.cat([layer.values[..., :start, :], layer.values[..., end:, :]], dim=-2)


def crop_tokens(cache: DynamicCache, length: int) -> None:
    """Keep the first ``length`` tokens of ``cache`` (and of its ``copy_words``)."""
    words = getattr(cache, "copy_words", None)
    if words is not None:
        cache.copy_words = words[:, :length]
    cache.crop(length - cache.get_seq_length())


def growing_cache(config) -> DynamicCache:
    """A ``DynamicCache`` whose layers are :class:`GrowingLayer` (one per decoder layer of ``config``)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
