"""Sequence packing for training: the real tokens of a right-padded batch as one row, attention per example.

A training batch holds examples of very different lengths (a 20-frame crop beside a whole episode), and
padding every row to the longest wastes much of a step: in a batch of the ``words`` stage, 4,345 real
tokens sat in 9 x 1,069 = 9,621 padded places. The LM's projections, MLPs and norms work token by token,
so they can run on the real tokens alone; attention must not mix the examples. So the batch is packed:

- the real tokens of every row, in order, become one row of N tokens (``pack``);
- position ids restart at 0 for each example (RoPE sees what it saw in its own row);
- attention runs per example on its own span, causal (``packed_attention``, registered with
  transformers' ``AttentionInterface`` as ``mmlc_packed`` and switched on only inside :func:`packed`);
- the outputs go back to their rows (``unpack``) for whatever reads positions (the look loss, the copy
  head).

Every real token computes exactly what it computed in its padded row (the same operations on the same
numbers, to float rounding: ``tests/test_train_speed.py`` compares the loss and the gradients), as
varlen attention (FlashAttention's ``cu_seqlens``; transformers' ``DataCollatorWithFlattening``) does on
GPUs, here with one causal SDPA call per example.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

PACKED = "mmlc_packed"


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     segments: list[tuple[int, int]] | None = None, **kwargs):
    """Attention over a packed row: query/key/value (1, H, N, d); each ``segments`` span [a, b) attends
    causally to itself only. Without ``segments``: ordinary SDPA. Returns ((1, N, H, d), None), as
    transformers' attention functions do."""
    if segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"packed attention takes one packed row, got a batch of {query.shape[0]}")
    outs = [sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, dropout=dropout,
                                   scaling=scaling, is_causal=True)[0] for a, b in segments]
    return torch.cat(outs, dim=1), None


AttentionInterface.register(PACKED, packed_attention)


class Packing:
    """How a right-padded batch (mask (B, L): ones, then zeros) packs into one row and back."""

    def __init__(self, mask: torch.Tensor):
        self.shape = tuple(mask.shape)
        self.where = mask.bool()                                        # (B, L)
        lengths = self.where.sum(1).tolist()
        ends = torch.tensor(lengths).cumsum(0).tolist()
        self.segments = [(end - n, end) for n, end in zip(lengths, ends) if n > 0]
        self.position_ids = torch.cat([torch.arange(n, device=mask.device) for n in lengths if n > 0])[None]  # (1, N)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, ...) -> (1, N, ...): the real positions, row by row."""
        return x[self.where][None]

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(1, N, ...) -> (B, L, ...), zeros at the padding."""
        out = x.new_zeros((*self.shape, *x.shape[2:]))
        out[self.where] = x[0]
        return out


@contextmanager
def packed(lm):
    """Within this block, ``lm`` (a transformers causal LM) attends with :func:`packed_attention`; its own
    attention implementation comes back afterwards, also on an error."""
    config = lm.config
    before = config._attn_implementation
    config._attn_implementation = PACKED
    try:
        yield
    finally:
        config._attn_implementation = before
