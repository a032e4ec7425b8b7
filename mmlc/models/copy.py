"""The copy head: one attention head of the LM points at the tokens whose tag words an answer needs,
and those words' logits are raised by what it attends to (``frames.copy_head``, ``frames.copy_scale``).

This is the pointer of pointer-generator networks (See, Liu and Manning, 2017, "Get To The Point:
Summarization with Pointer-Generator Networks": the output distribution mixes the vocabulary's with
the attention over the source), with the source's "words" being the soft tag words a frame or memory
token carries (:meth:`mmlc.models.reader.CellReader.tag_words`, ``scene_tag_words``) and the mixing
done in logit space with a fixed weight:

    logits[t] += copy_scale * sum_i a[t, i] * words[i] @ M

``a[t, i]`` is the chosen head's attention from position ``t`` to token ``i``, ``words[i]`` (Vw,) the tag
words token ``i`` carries (zero for text), ``M`` (Vw, V) puts each tag word on both of its token forms
("red" as a state answer starts, " red" as in "a red cross.") and a vowel-initial word also on the
article "an" (:func:`word_to_vocab`). It is added at text positions only: the frame decisions
(predicted at frame placeholders) are left as they are.

Why (README, Memory and NIAVH): after the look stages head 3.2 puts 0.77 of its attention on the tag
token of the needle's shape, and that tag's colour is right 0.92 of the time, yet what the head writes
into the logits (its direct logit attribution, :func:`mmlc.train.look.head_read_logits`) ranks the
same colour first whatever the tag says, and the answer falls back to a prior ("a blue diamond."). The
head already finds the needle; the copy makes finding it enough. It has no parameters: the scale was
chosen on teacher-forced needle answers (``benchmarks/copy_scale.py``).

With a KV cache the tag words of every cached token ride on the cache (``cache.copy_words``, (B, L, Vw)),
and :func:`mmlc.streaming.kv.drop_tokens` / :func:`~mmlc.streaming.kv.crop_tokens` cut them with the
keys, so a session's copy equals the one of a fresh forward over the same compacted sequence.
"""

from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import rotate_half


def parse_head(spec: str) -> tuple[int, int]:
    """ "3.2" -> (3, 2)."""
    layer, head = spec.split(".")
    return int(layer), int(head)


class AttentionTap:
    """Keeps the input (hidden states, rotary cos/sin) of the attention of the given layers during a
    forward: ``with AttentionTap(lm, [2, 3]) as tap: ...; tap.inputs[2]``. With ``final``, also the
    residual stream before the last norm (``tap.final``). Used by the copy head and by the look loss
    (:mod:`mmlc.train.look`)."""

    def __init__(self, lm, layers: list[int], final: bool = False):
        self.layers = lm.get_decoder().layers
        self.norm = lm.get_decoder().norm
        self.wanted = sorted(set(layers))
        self.inputs: dict[int, tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.final: torch.Tensor | None = None
        self._final = final and bool(self.wanted)
        self._handles = []

    def __enter__(self) -> "AttentionTap":
        for i in self.wanted:
            def keep(module, args, kwargs, i=i):
                hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
                self.inputs[i] = (hidden, kwargs["position_embeddings"])
            self._handles.append(self.layers[i].self_attn.register_forward_pre_hook(keep, with_kwargs=True))
        if self._final:
            self._handles.append(self.norm.register_forward_pre_hook(lambda m, args: setattr(self, "final", args[0])))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def head_projection(attn, hidden: torch.Tensor, which: str, head: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """One head's rotated queries or keys (B, L, d) from the layer's input ``hidden`` (B, L, D)."""
    d = attn.head_dim
    proj = attn.q_proj if which == "q" else attn.k_proj
    h = head if which == "q" else head // attn.num_key_value_groups
    w = proj.weight[h * d:(h + 1) * d]
    b = None if proj.bias is None else proj.bias[h * d:(h + 1) * d]
    x = torch.nn.functional.linear(hidden, w, b)
    return x * cos + rotate_half(x) * sin


def copy_logits(lm, tap: AttentionTap, layer: int, head: int, words: torch.Tensor, keep: int, cache=None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """What the copy adds (before ``copy_scale`` and ``M``): (B, Lq, Vw) at the last ``keep`` positions
    of the forward ``tap`` watched (all when 0). ``words`` (B, Lk, Vw) are the tag words of every key
    (cached ones first). Keys come from ``cache``'s layer ``layer`` when given (the same rotated keys
    the forward wrote there), else from the tapped input."""
    attn = lm.get_decoder().layers[layer].self_attn
    hidden, (cos, sin) = tap.inputs[layer]
    n_new = hidden.shape[1]
    keep = n_new if keep in (0, None) else min(int(keep), n_new)
    cos, sin = (t.expand(hidden.shape[0], -1, -1) for t in (cos, sin))
    q = head_projection(attn, hidden[:, -keep:], "q", head, cos[:, -keep:], sin[:, -keep:]).float()   # (B, Lq, d)
    if cache is not None:
        k = cache.layers[layer].keys[:, head // attn.num_key_value_groups].float()              # (B, Lk, d)
    else:
        k = head_projection(attn, hidden, "k", head, cos, sin).float()
    lk = k.shape[1]
    scores = (q @ k.transpose(1, 2)) * attn.scaling                                            # (B, Lq, Lk)
    qpos = torch.arange(lk - keep, lk, device=q.device)
    allowed = torch.arange(lk, device=q.device)[None] <= qpos[:, None]                          # causal
    allowed = allowed[None].expand(q.shape[0], -1, -1)
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, -lk:].bool()
    p = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return p @ words.float()


VOWELS = "aeiou"


def word_to_vocab(reader, tokenizer, vocab_size: int) -> torch.Tensor:
    """M (Vw, V): 1 at each tag word's token forms: the bare and the spaced one ("red", " red"; the first
    token of each, with a lone leading space token skipped as :meth:`CellReader.word_ids` does) and, for
    a word that starts with a vowel, the article it takes ("an", " an"): "an orange cross." is decided
    one token before " orange", where only the copy knows the colour (an LM that reads colours from tags
    alone picks "a" by its prior and then a colour that fits "a")."""
    from mmlc.models.reader import first_token

    m = torch.zeros(len(reader.vocabulary), vocab_size)
    for i, (_, w) in enumerate(reader.vocabulary):
        forms = [w, " " + w] + (["an", " an"] if w[:1].lower() in VOWELS else [])
        for form in forms:
            m[i, first_token(tokenizer, form)] = 1.0
    return m
