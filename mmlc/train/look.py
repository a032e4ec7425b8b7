"""The addressing loss: teach chosen attention heads to read an answer from what it is about.

mmlc-tiny's 4-layer LM reads the tower's features well enough to narrate, but answers "what colour
is the room in image 3?" from another image about half the time with 3-4 images, and "what colour
is the square?" from another object: at the position that predicts such an answer no head of the
stage-13 model weighs the named image more than the others (README, stage 14), although a linear
probe reads shape, colour and size from each frame token at 0.95-0.99. Finding what a question names
is a lookup the LM learns slowly from the answer's cross-entropy alone.

Training examples know where each answer is read from (ShapeWorld's ground truth: the image a chat
turn names, the cells of the 4x4 grid that hold the object a question names; the layout's
``look``, resolved to placeholder positions by :meth:`StreamLayout.build` and to key positions by
:func:`look_targets`). This loss supervises the attention of a few heads at the positions that
predict the answer: ``-log`` of the attention mass those heads give to the target tokens (the
supervised-attention losses of e.g. Liu et al. 2016, "Neural Machine Translation with Supervised
Attention", applied to a decoder's self-attention). Nothing changes at inference: the heads are
ordinary heads that have learnt where to look.

The attention of one head is recomputed from the layer's input (captured by a forward pre-hook), with
the layer's own projections and rotary embedding, only at the supervised query positions: the same
numbers the layer's attention computes (tested against eager attention), at a small cost.
"""

from __future__ import annotations

import math

import torch

from mmlc.errors import ConfigError
from mmlc.models.copy import AttentionTap, head_projection  # noqa: F401  AttentionTap: re-exported for the look loss' users


KINDS = ("answer", "name", "obj", "via", "read", "readall")
# the kinds whose head is taught to write the answer (look_loss), not only to look
READ_KINDS = ("read", "readall")


def parse_heads(specs: list[str], n_layers: int, n_heads: int) -> list[tuple[str, int, int]]:
    """``["2.0", "name:0.1"]`` -> [("answer", 2, 0), ("name", 0, 1)]: the kind of look a head is
    taught (:attr:`Chunk.looks`; no prefix = "answer"), its layer and head, checked against the LM."""
    out = []
    for spec in specs:
        kind, _, where = str(spec).rpartition(":")
        kind = kind or "answer"
        try:
            layer, head = (int(v) for v in where.split("."))
        except ValueError:
            raise ConfigError(f"look head {spec!r}: write it as [KIND:]LAYER.HEAD, e.g. '3.0' or 'name:0.1'") from None
        if kind not in KINDS:
            raise ConfigError(f"look head {spec!r}: the kind must be one of {', '.join(KINDS)}")
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ConfigError(f"look head {spec!r}: this LM has layers 0..{n_layers - 1} and heads 0..{n_heads - 1}")
        out.append((kind, layer, head))
    return out


def box_cells(box: tuple[float, float, float, float], grid: int) -> list[int]:
    """The cells (row-major indices) of a grid x grid picture that a box (x0, y0, x1, y1, in fractions of
    the picture) overlaps."""
    x0, y0, x1, y1 = box
    c0, c1 = min(int(x0 * grid), grid - 1), min(int(x1 * grid), grid - 1)
    r0, r1 = min(int(y0 * grid), grid - 1), min(int(y1 * grid), grid - 1)
    return [r * grid + c for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]


def look_targets(looks: list, width: int, pooled: bool, kind: str = "answer") -> tuple[list[int], torch.Tensor]:
    """One example's :attr:`Chunk.looks` of one kind -> (query positions, key mask (N, width) bool): per
    query the placeholder positions of the pictures its answer is read from, and within a box only the
    grid cells that overlap it (a picture of ``n`` placeholders is [pooled] + g x g cells, row-major)."""
    queries, rows = [], []
    for positions, pictures, what in looks:
        if what != kind:
            continue
        keys = torch.zeros(width, dtype=torch.bool)
        for start, n, box in pictures:
            if isinstance(box, tuple) and box and box[0] == "token":   # one token of the picture
                keys[start + int(box[1])] = True
                continue
            cells = n - int(pooled)
            g = math.isqrt(cells)
            if box is None or g * g != cells or g == 0:
                keys[start:start + n] = True
                continue
            for cell in box_cells(box, g):
                keys[start + int(pooled) + cell] = True
        for q in positions:
            queries.append(q)
            rows.append(keys)
    return queries, torch.stack(rows) if rows else torch.zeros((0, width), dtype=torch.bool)


def head_attention(attn, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head: int,
                   rows: torch.Tensor, queries: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention probabilities (N, L) of head ``head`` of Llama attention module ``attn`` at the query
    positions ``(rows[n], queries[n])``, over the keys of the same row (causal, padding masked)."""
    cos, sin = (t.expand(hidden.shape[0], -1, -1) for t in (cos, sin))   # (1, L, d) when rows share positions
    q = head_projection(attn, hidden[rows, queries], "q", head, cos[rows, queries], sin[rows, queries])
    k = head_projection(attn, hidden, "k", head, cos, sin)                            # (B, L, d)
    length = hidden.shape[1]
    scores = q.new_zeros((len(rows), length))
    for b in rows.unique().tolist():   # per batch row: no (N, L, d) copy of the keys
        sel = rows == b
        scores[sel] = q[sel] @ k[b].T
    scores = scores * attn.scaling
    allowed = (torch.arange(length, device=hidden.device)[None] <= queries[:, None]) & mask[rows].bool()
    return torch.softmax(scores.float().masked_fill(~allowed, float("-inf")), dim=-1)


def head_read_logits(lm, tap: AttentionTap, layer: int, head: int, p: torch.Tensor, rows: torch.Tensor,
                     queries: torch.Tensor) -> torch.Tensor:
    """What one head alone writes into the output logits at the query positions (N, V): its attention
    ``p`` (N, L) over its values, through its slice of ``o_proj``, the last norm's weight and the output
    layer, divided by the residual stream's RMS there (detached) as the last norm divides it: the
    head's direct logit attribution. The last layer's heads add exactly this to the logits' numerator;
    an earlier head's contribution also passes the layers after it."""
    decoder = lm.get_decoder()
    attn = decoder.layers[layer].self_attn
    hidden = tap.inputs[layer][0]
    d = attn.head_dim
    kv_head = head // attn.num_key_value_groups
    wv = attn.v_proj.weight[kv_head * d:(kv_head + 1) * d]
    bv = None if attn.v_proj.bias is None else attn.v_proj.bias[kv_head * d:(kv_head + 1) * d]
    values = torch.nn.functional.linear(hidden, wv, bv)                              # (B, L, d)
    out = torch.stack([p[n] @ values[int(b)] for n, b in enumerate(rows.tolist())]) if len(rows) else values.new_zeros((0, d))
    written = out.to(attn.o_proj.weight.dtype) @ attn.o_proj.weight[:, head * d:(head + 1) * d].T   # (N, hidden)
    resid = tap.final[rows, queries]
    rms = torch.sqrt(resid.float().pow(2).mean(-1, keepdim=True) + decoder.norm.variance_epsilon).detach()
    return lm.get_output_embeddings()(decoder.norm.weight * written / rms.to(written.dtype))


def look_loss(lm, tap: AttentionTap, heads: list[tuple[str, int, int]], batch: dict, read_weight: float = 1.0
              ) -> tuple[torch.Tensor, torch.Tensor, dict[str, tuple[float, int]]]:
    """Mean over the supervised heads (those whose kind of look the batch has; at least one) and their
    queries of -log(attention mass on the target keys), the mean mass itself (for the log), and per
    head ``"KIND@LAYER.HEAD"`` its mean mass and number of queries. A read head's term is weighted
    ``read_weight`` (the others 1) before the mean.

    A ``read`` head is taught to carry the answer, not only to look: at the position that predicts an
    answer about one object its loss is the cross-entropy of what it alone writes into the logits
    (:func:`head_read_logits`) against that answer word, and its logged value is how often that is
    the answer's argmax. Why: after the look stages head 3.2 puts 0.77-0.93 of its attention on the
    named object, yet its own logit contribution ranks the right colour first 1 time in 37 (README,
    Training, stage 24): looking is learnt, copying what it sees into the answer is not.

    The cross-entropy is taken among the words of the answer's class only (``batch["read_candidates"]``,
    :func:`mmlc.train.trainer._read_candidates`: the colours for a colour answer, the sizes for a size
    answer). One head's output is one linear map of what it attends to, and an object's tokens carry
    all its words at once (+ E["red"] + E["small"] + E[" square"]): over the whole vocabulary the head
    would have to write "red" for a colour question and "small" for a size question from the same
    values, which no fixed map does (a first try over the whole vocabulary learnt the sizes, 28/29,
    and lost the colours, 0/37). Which class the answer is in is the question's business, which the
    rest of the LM reads easily; ranking within the class is what the head has to carry."""
    losses, masses, per_head = [], [], {}
    for kind, layer, head in heads:
        if kind not in batch["looks"]:
            continue
        rows, queries, keys = batch["looks"][kind]
        hidden, (cos, sin) = tap.inputs[layer]
        attn = lm.get_decoder().layers[layer].self_attn
        p = head_attention(attn, hidden, cos, sin, head, rows, queries, batch["attention_mask"])
        if kind in READ_KINDS:
            logits = head_read_logits(lm, tap, layer, head, p, rows, queries).float()
            logits = logits.masked_fill(~batch[f"{kind}_candidates"], float("-inf"))
            target = batch["labels"][rows, queries]
            losses.append(read_weight * torch.nn.functional.cross_entropy(logits, target))
            right = (logits.argmax(-1) == target).float().mean().detach()
            masses.append(right)
            per_head[f"{kind}@{layer}.{head}"] = (float(right), len(rows))
            continue
        mass = (p * keys).sum(-1)
        losses.append(-torch.log(mass.clamp_min(1e-6)).mean())
        masses.append(mass.detach().mean())
        per_head[f"{kind}@{layer}.{head}"] = (float(masses[-1]), len(rows))
    return torch.stack(losses).mean(), torch.stack(masses).mean(), per_head
