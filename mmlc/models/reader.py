"""Word tags for frame tokens: a small reader head says, per grid token, which objects its cell holds
(shape, colour, size) and, for the pooled token, the room; the LM input embeddings of those words,
weighted by the reader's probabilities, are added to the token.

Why: the tower's 4x4 cell token holds which shape wears which colour (an MLP probe reads it at 0.99,
``benchmarks/binding_probe.py``), yet the 4-layer LM, asked "what colour is the square?", attends as
much to the other objects' cells as to the square's (0.52 against 0.50, ``benchmarks/answer_attention.py``)
and answers near chance where a frame holds two objects. Finding the cell whose token *is* a square is
a content match between the question's " square" and a connector output, which this LM learned slowly
in 17 stages. With the tag the cell's token contains the very embedding of " square" (a query can
match it as an induction head matches a repeated token), and the embedding of "red", which the tied
output embedding turns straight into the answer's logit when an attention head copies it.

This is the idea of object tags as anchor points in Oscar (Li et al., 2020, "Oscar: Object-Semantics
Aligned Pre-training for Vision-Language Tasks"): detected object names, in the language model's own
vocabulary, sit beside the region features they name. Here the tags are soft (probability-weighted
embeddings), added to the token rather than appended as text (no extra tokens a frame), and the
reader is trained on simulator labels (``mmlc.train.reader``) with the tower frozen, as the tower
itself was. A real tower would take its reader from a detector or an open-vocabulary head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CellReader(nn.Module):
    """Frame features (N, T, Dv) -> word probabilities per token, and their embedding sum (N, T, D).

    ``words``: {"shapes": [...], "colours": [...], "sizes": [...], "rooms": [...]} (``frames.words``).
    A grid token reads, for every shape, whether an object of that shape overlaps its cell, and that
    object's colour and size; a pooled token reads the room.
    """

    def __init__(self, width: int, words: dict, hidden: int = 128, pooled: bool = True):
        super().__init__()
        self.words = {k: list(words[k]) for k in ("shapes", "colours", "sizes", "rooms")}
        self.pooled = pooled
        n_s, n_c, n_z = (len(self.words[k]) for k in ("shapes", "colours", "sizes"))
        self.trunk = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(),
                                   nn.Linear(hidden, hidden), nn.GELU())
        self.present = nn.Linear(hidden, n_s)
        self.colour = nn.Linear(hidden, n_s * n_c)
        self.size = nn.Linear(hidden, n_s * n_z)
        self.room = nn.Linear(hidden, len(self.words["rooms"]))
        self._ids: dict[str, torch.Tensor] | None = None

    @classmethod
    def for_config(cls, config) -> "CellReader":
        """The reader an :class:`~mmlc.config.MmlcConfig` with ``frames.words`` describes."""
        fc = config.frames
        return cls(config.vision.hidden_size, fc.words, fc.reader_hidden, pooled=fc.pooled)

    def logits(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"present": (N, G, S), "colour": (N, G, S, C), "size": (N, G, S, Z), "room": (N, R) or absent}
        for the G grid tokens (and the pooled one) of ``feats`` (N, T, Dv)."""
        h = self.trunk(feats.to(self.present.weight.dtype))
        cells = h[:, int(self.pooled):]
        n, g = cells.shape[:2]
        out = {"present": self.present(cells),
               "colour": self.colour(cells).view(n, g, len(self.words["shapes"]), -1),
               "size": self.size(cells).view(n, g, len(self.words["shapes"]), -1)}
        if self.pooled:
            out["room"] = self.room(h[:, 0])
        return out

    def word_ids(self, tokenizer) -> dict[str, torch.Tensor]:
        """The token id each word is tagged with: the question's form for shapes (" square"), the
        answer's first token for colours, sizes and rooms ("red" as in "red.")."""
        if self._ids is None:
            def first(text: str) -> int:
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                if len(ids) > 1 and tokenizer.decode(ids[:1]) == " ":  # " large" -> " " + "large"
                    ids = ids[1:]
                return int(ids[0])
            self._ids = {k: torch.tensor([first((" " if k == "shapes" else "") + w) for w in v])
                         for k, v in self.words.items()}
        return self._ids

    def tags(self, feats: torch.Tensor, table: torch.Tensor, tokenizer, mode: str = "cell",
             temperature: float = 0.25) -> torch.Tensor:
        """The tag of every token (N, T, D); E[room] (expected over the room words) for the pooled token.
        ``table`` is the LM's input embedding matrix (used as it is now, without gradient: the tags
        follow the words).

        ``mode="cell"``: a grid token gets the sum over shapes of P(present) x (E[shape] + E[colour] +
        E[size]), each shape's colour and size as the reader reads them in that cell. Where two objects
        share a cell its tag is a bag of both objects' words: which colour goes with which shape is left
        to the LM.

        ``mode="object"``: binding done here. Each shape's colour and size are read once per frame (the
        reader's distributions of its cells, weighted by its presence there), and a cell's tag is the
        words of *one* object: the shapes weighted by P(present) x softmax over shapes of the presence
        logits / ``temperature`` (the object the cell holds most surely wins a shared cell). Every cell a
        question's " square" can match then carries the square's own colour, and nothing else's.
        Measured by ``benchmarks/tag_oracle.py``.
        """
        ids = {k: v.to(table.device) for k, v in self.word_ids(tokenizer).items()}
        emb = {k: table.detach()[v] for k, v in ids.items()}
        lg = self.logits(feats)
        logit = lg["present"].float()
        p = torch.sigmoid(logit)                                                    # (N, G, S)
        colour, size = F.softmax(lg["colour"].float(), -1), F.softmax(lg["size"].float(), -1)
        if mode == "object":
            w = p[..., None] / p.sum(1, keepdim=True).clamp_min(1e-6)[..., None]    # (N, G, S, 1)
            colour = (w * colour).sum(1, keepdim=True)                              # (N, 1, S, C)
            size = (w * size).sum(1, keepdim=True)
            p = p * F.softmax(logit / temperature, -1)
        elif mode != "cell":
            raise ValueError(f"tag mode {mode!r}: use 'cell' or 'object'")
        obj = emb["shapes"] + colour @ emb["colours"] + size @ emb["sizes"]        # (N, G or 1, S, D)
        cells = (p[..., None] * obj).sum(2)                                         # (N, G, D)
        if self.pooled:
            room = F.softmax(lg["room"].float(), -1) @ emb["rooms"]                 # (N, D)
            cells = torch.cat([room[:, None], cells], dim=1)
        return cells.to(feats.dtype)
