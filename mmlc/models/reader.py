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


def first_token(tokenizer, text: str) -> int:
    """The first token of ``text``, a lone leading space token skipped (" large" -> " " + "large")."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) > 1 and tokenizer.decode(ids[:1]) == " ":
        ids = ids[1:]
    return int(ids[0])


class RareHead(nn.Module):
    """A detector for shapes rare in the data (``frames.rare``: the needle's): per grid token, logits over
    [none, rare shapes...] and the colour and size of a rare object there.

    Why a second head: the main head is trained per (cell, shape) on every object with a 4x positive
    weight, and the needle's shapes are in ~4% of its frames; it called one present in 9% of held-out
    needle-free frames, so nearly every 48-frame scene would hold a false needle. Trained frame by
    frame instead (``mmlc.train.reader.rare_loss``: is a rare shape shown, which one, and its colour
    at the cell most sure of it, on frames half of which show one), an MLP on the same frame tokens
    gave 0.8% false positives and 0.97 recall (``benchmarks/needle_detect.py``).
    """

    def __init__(self, width: int, n_rare: int, n_colours: int, n_sizes: int, hidden: int = 128):
        super().__init__()
        self.n_rare, self.n_colours = n_rare, n_colours
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                 nn.GELU(), nn.Linear(hidden, 1 + n_rare + n_colours + n_sizes))

    def forward(self, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Grid tokens (N, G, Dv) -> (presence logits (N, G, R): each shape's margin over 'none',
        colour logits (N, G, C), size logits (N, G, Z))."""
        out = self.mlp(cells)
        k = 1 + self.n_rare
        return out[..., 1:k] - out[..., :1], out[..., k:k + self.n_colours], out[..., k + self.n_colours:]


class CellReader(nn.Module):
    """Frame features (N, T, Dv) -> word probabilities per token, and their embedding sum (N, T, D).

    ``words``: {"shapes": [...], "colours": [...], "sizes": [...], "rooms": [...]} (``frames.words``).
    A grid token reads, for every shape, whether an object of that shape overlaps its cell, and that
    object's colour and size; a pooled token reads the room.
    """

    def __init__(self, width: int, words: dict, hidden: int = 128, pooled: bool = True, rare: list | None = None):
        super().__init__()
        self.words = {k: list(words[k]) for k in ("shapes", "colours", "sizes", "rooms")}
        self.pooled = pooled
        self.rare_ids: list[int] = []
        self.rare: RareHead | None = None
        if rare:
            self.add_rare(rare, width, hidden)
        n_s, n_c, n_z = (len(self.words[k]) for k in ("shapes", "colours", "sizes"))
        self.trunk = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(),
                                   nn.Linear(hidden, hidden), nn.GELU())
        self.present = nn.Linear(hidden, n_s)
        self.colour = nn.Linear(hidden, n_s * n_c)
        self.size = nn.Linear(hidden, n_s * n_z)
        self.room = nn.Linear(hidden, len(self.words["rooms"]))
        self._ids: dict[str, torch.Tensor] | None = None

    def add_rare(self, rare: list[str], width: int, hidden: int = 128) -> None:
        """A fresh :class:`RareHead` for the shapes ``rare`` (``frames.rare``); the rest of the reader is
        kept as it is."""
        self.rare_ids = [self.words["shapes"].index(w) for w in rare]
        self.rare = RareHead(width, len(rare), len(self.words["colours"]), len(self.words["sizes"]), hidden)

    @classmethod
    def for_config(cls, config) -> "CellReader":
        """The reader an :class:`~mmlc.config.MmlcConfig` with ``frames.words`` describes."""
        fc = config.frames
        return cls(config.vision.hidden_size, fc.words, fc.reader_hidden, pooled=fc.pooled, rare=fc.rare)

    def logits(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"present": (N, G, S), "colour": (N, G, S, C), "size": (N, G, S, Z), "room": (N, R) or absent}
        for the G grid tokens (and the pooled one) of ``feats`` (N, T, Dv); the shapes of ``frames.rare``
        read by their own detector (:class:`RareHead`) when the reader has one."""
        h = self.trunk(feats.to(self.present.weight.dtype))
        cells = h[:, int(self.pooled):]
        n, g = cells.shape[:2]
        out = {"present": self.present(cells),
               "colour": self.colour(cells).view(n, g, len(self.words["shapes"]), -1),
               "size": self.size(cells).view(n, g, len(self.words["shapes"]), -1)}
        if self.rare is not None:   # the rare shapes' calls come from their own detector
            present, colour, size = self.rare(feats[:, int(self.pooled):].to(self.present.weight.dtype))
            ids = torch.tensor(self.rare_ids, device=present.device)
            per_shape = lambda x: x[..., None, :].expand(-1, -1, len(ids), -1)   # noqa: E731  shared by rare shapes
            out["present"] = out["present"].index_copy(-1, ids, present)
            out["colour"] = out["colour"].index_copy(2, ids, per_shape(colour))
            out["size"] = out["size"].index_copy(2, ids, per_shape(size))
        if self.pooled:
            out["room"] = self.room(h[:, 0])
        return out

    def word_ids(self, tokenizer) -> dict[str, torch.Tensor]:
        """The token id each word is tagged with: the question's form for shapes (" square"), the
        answer's first token for colours, sizes and rooms ("red" as in "red.")."""
        if self._ids is None:
            self._ids = {k: torch.tensor([first_token(tokenizer, (" " if k == "shapes" else "") + w) for w in v])
                         for k, v in self.words.items()}
        return self._ids

    def word_embeddings(self, table: torch.Tensor, tokenizer) -> dict[str, torch.Tensor]:
        """{"shapes", "colours", "sizes", "rooms"} -> their tag embeddings (n, D) from ``table``, the LM's
        input embeddings as they are now, without gradient (the tags follow the words)."""
        return {k: table.detach()[v.to(table.device)] for k, v in self.word_ids(tokenizer).items()}

    WORD_KINDS = ("shapes", "colours", "sizes", "rooms")

    @property
    def vocabulary(self) -> list[tuple[str, str]]:
        """Every tag word as (kind, word), in the order of :meth:`tag_words`' last axis: the shapes,
        colours, sizes, then rooms."""
        return [(k, w) for k in self.WORD_KINDS for w in self.words[k]]

    def _offsets(self) -> dict[str, slice]:
        out, start = {}, 0
        for k in self.WORD_KINDS:
            out[k] = slice(start, start + len(self.words[k]))
            start += len(self.words[k])
        return out

    def vocabulary_embeddings(self, table: torch.Tensor, tokenizer) -> torch.Tensor:
        """(Vw, D): the tag embedding of every word of :attr:`vocabulary` (:meth:`word_embeddings`)."""
        emb = self.word_embeddings(table, tokenizer)
        return torch.cat([emb[k] for k in self.WORD_KINDS])

    def tag_words(self, feats: torch.Tensor, mode: str = "cell", temperature: float = 0.25) -> torch.Tensor:
        """How much of each tag word every token of ``feats`` (N, T, Dv) carries: (N, T, Vw) over
        :attr:`vocabulary`. A token's tag is these weights times the words' embeddings (:meth:`tags`);
        the copy head (``frames.copy_head``, :func:`mmlc.models.streaming_lm.copy_logits`) reads them.

        ``mode="cell"``: a grid token weighs every shape by P(present), and that shape's colour and size
        as the reader reads them in that cell, by P(present) x their probabilities. Where two objects
        share a cell its tag is a bag of both objects' words: which colour goes with which shape is left
        to the LM.

        ``mode="object"``: binding done here. Each shape's colour and size are read once per frame (the
        reader's distributions of its cells, weighted by its presence there), and a cell carries the
        words of *one* object: the shapes weighted by P(present) x softmax over shapes of the presence
        logits / ``temperature`` (the object the cell holds most surely wins a shared cell). Every cell a
        question's " square" can match then carries the square's own colour, and nothing else's.
        Measured by ``benchmarks/tag_oracle.py``.

        The pooled token carries the room distribution.
        """
        lg = self.logits(feats)
        logit = lg["present"].float()
        p = torch.sigmoid(logit)                                                    # (N, G, S)
        colour, size = F.softmax(lg["colour"].float(), -1), F.softmax(lg["size"].float(), -1)
        if mode == "object":
            w = p[..., None] / p.sum(1, keepdim=True).clamp_min(1e-6)[..., None]    # (N, G, S, 1)
            colour = (w * colour).sum(1, keepdim=True).expand(-1, p.shape[1], -1, -1)   # (N, G, S, C)
            size = (w * size).sum(1, keepdim=True).expand(-1, p.shape[1], -1, -1)
            p = p * F.softmax(logit / temperature, -1)
        elif mode != "cell":
            raise ValueError(f"tag mode {mode!r}: use 'cell' or 'object'")
        n, g = p.shape[:2]
        out = p.new_zeros(n, g + int(self.pooled), len(self.vocabulary))
        at = self._offsets()
        cells = out[:, int(self.pooled):]
        cells[..., at["shapes"]] = p
        cells[..., at["colours"]] = (p[..., None] * colour).sum(2)
        cells[..., at["sizes"]] = (p[..., None] * size).sum(2)
        if self.pooled:
            out[:, 0, at["rooms"]] = F.softmax(lg["room"].float(), -1)
        return out

    def tags(self, feats: torch.Tensor, table: torch.Tensor, tokenizer, mode: str = "cell",
             temperature: float = 0.25) -> torch.Tensor:
        """The tag of every token (N, T, D): :meth:`tag_words` times the words' embeddings from ``table``,
        the LM's input embedding matrix (used as it is now, without gradient: the tags follow the words)."""
        words = self.tag_words(feats, mode, temperature)
        return (words @ self.vocabulary_embeddings(table, tokenizer).float()).to(feats.dtype)

    def scene_words(self, feats: torch.Tensor, half_life: float = 4.0) -> dict[str, torch.Tensor]:
        """What one closed scene showed, as word distributions: {"seen": (S,), "colour": (S, C),
        "size": (S, Z), "room": (R,) or absent}. ``feats`` (F, T, Dv) are the scene's frame features
        in order.

        A shape counts as seen as strongly as it was present in *two consecutive* frames (max over f of
        min(p_f, p_f+1), p_f its presence in the frame's most sure cell), so a one-frame misreading does
        not leave a false object in memory while a needle shown for 1.5 s (3 frames) stays at full
        strength however long the scene. Its colour and size are the cells' distributions weighted by
        presence squared and by recency (halving every ``half_life`` frames back from the scene's end),
        over the cells where it is read at least half as surely as its surest:
        memory questions ask what a shape looked like when the scene ended. The room is read the same
        way, by recency. Max-pooling over time is what a recurrent bridge has to learn and, for a brief
        needle, did not (``benchmarks/needle_probe.py``); here it is built in, as the tags themselves are.
        """
        lg = self.logits(feats)
        p = torch.sigmoid(lg["present"].float())                                     # (F, G, S)
        per_frame = p.amax(1)                                                       # (F, S)
        seen = torch.minimum(per_frame[:-1], per_frame[1:]).amax(0) if len(per_frame) > 1 else per_frame[0]
        n = p.shape[0]
        recency = 0.5 ** ((n - 1 - torch.arange(n, device=p.device, dtype=p.dtype)) / half_life)  # (F,)
        # only where the shape is read at least half as surely as anywhere in the scene: else a needle shown
        # at the start of a long scene had its colour read from the faint misreadings of later frames
        # (presence 0.01 at recency 1 outweighs 1.0 at 0.5 ** 15)
        sure = p >= 0.5 * p.amax((0, 1), keepdim=True)
        w = p.square() * recency[:, None, None] * sure                              # (F, G, S)
        w = w / w.sum((0, 1), keepdim=True).clamp_min(1e-9)
        out = {"seen": seen,
               "colour": (w[..., None] * F.softmax(lg["colour"].float(), -1)).sum((0, 1)),   # (S, C)
               "size": (w[..., None] * F.softmax(lg["size"].float(), -1)).sum((0, 1))}       # (S, Z)
        if self.pooled:
            out["room"] = (recency / recency.sum()) @ F.softmax(lg["room"].float(), -1)
        return out

    def scene_tag_words(self, feats: torch.Tensor, half_life: float = 4.0) -> torch.Tensor:
        """The tag words of one closed scene's 1 + S memory tokens (1 + S, Vw) over :attr:`vocabulary`
        (``memory.tags``): the room, then one token per shape weighing P(seen), its colour x P(seen) and
        its size x P(seen), from :meth:`scene_words`."""
        words = self.scene_words(feats, half_life)
        at = self._offsets()
        seen = words["seen"]
        out = seen.new_zeros(1 + len(seen), len(self.vocabulary))
        if "room" in words:
            out[0, at["rooms"]] = words["room"]
        out[1:, at["shapes"]] = torch.diag(seen)
        out[1:, at["colours"]] = seen[:, None] * words["colour"]
        out[1:, at["sizes"]] = seen[:, None] * words["size"]
        return out

    def scene_tags(self, feats: torch.Tensor, table: torch.Tensor, tokenizer, half_life: float = 4.0) -> torch.Tensor:
        """The tags of one closed scene (1 + S, D), for its memory tokens (``memory.tags``): the room, then
        one tag per shape, P(seen) x (E[shape] + E[colour] + E[size]): :meth:`scene_tag_words` times the
        words' embeddings."""
        words = self.scene_tag_words(feats, half_life)
        return (words @ self.vocabulary_embeddings(table, tokenizer).float()).to(feats.dtype)
