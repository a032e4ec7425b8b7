"""``mmlc train``: the staged LIVE recipe, through accelerate, resumable at any step.

The run folder holds everything::

    OUT/recipe.json          the recipe and the model config (a rerun must match it, or it refuses)
    OUT/tokenizer/           the tokenizer trained on ShapeWorld text (first step)
    OUT/checkpoint/          model.safetensors, optimizer.safetensors, heads.safetensors, state.json
    OUT/metrics.jsonl        one line per evaluation (after each stage) and per logged step
    OUT/model/               the final model (config.json + model.safetensors + tokenizer)

Examples are drawn from seeds derived from (recipe seed, stage, step, process), so a resumed run sees
exactly the data the interrupted one would have. Optimizer state is stored as safetensors too (no
pickle anywhere). With several processes (``accelerate launch``) each draws its own examples and
gradients are averaged.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from mmlc.data import shapeworld as sw
from mmlc.data.tokenizer import train_tokenizer
from mmlc.errors import ConfigError, MmlcError
from mmlc.models.copy import parse_head
from mmlc.models.layout import DECISION, IGNORE, TEXT
from mmlc.models.loading import attach_tokenizer, build, load_weights, save_pretrained
from mmlc.models.presets import preset
from mmlc.train import examples as ex
from mmlc.train.frozen_tower import FrozenTower
from mmlc.train.packing import Packing, packed
from mmlc.train.look import READ_KINDS, AttentionTap, head_attention, look_loss, look_targets, parse_heads
from mmlc.train.recipes import Recipe, Stage, recipe as get_recipe
from mmlc.train.reader import enable_rare, enable_reader, rare_loss, reader_loss, sample_frames, sample_rare_frames
from mmlc.train.vision_aux import aux_loss, make_heads, map_side, pair_pixels, sample_pairs

EVAL_SEED = 1_000_000_000  # held-out: training seeds come from another stream


# ---------------------------------------------------------------------- batches
def _read_candidates(model, spaced: bool = False) -> dict[int, set[int]]:
    """For each answer id a frame token's word tags carry (``frames.words``: colours, sizes, shapes,
    rooms; the first token of an answer, "red." -> "red"), the first tokens of the words of its class
    (all colours for "red", all sizes for "big", ...; the union where a token starts words of several
    classes): the answers a ``read`` look is kept for (its keys) and the words its head's logits are
    compared among (:func:`mmlc.train.look.look_loss`)."""
    out: dict[int, set[int]] = {}
    forms = [lambda w: model.layout.answer(f"{w}.").ids[0]]
    if spaced:   # and a word's form inside a sentence ("a yellow diamond." -> " yellow"), its own class
        forms.append(lambda w: model.tokenizer(f" {w}", add_special_tokens=False)["input_ids"][0])
    for group in (model.config.frames.words or {}).values():
        for form in forms:
            ids = {form(w) for w in group}
            for i in ids:
                out.setdefault(i, set()).update(ids)
    return out


def _keep(queries: list[int], keys: torch.Tensor, which: list[bool]) -> tuple[list[int], torch.Tensor]:
    idx = [i for i, w in enumerate(which) if w]
    return [queries[i] for i in idx], keys[idx] if idx else keys[:0]


def collate(model, examples: list[ex.Example], look_kinds=(), stream_hops: bool = True) -> dict[str, torch.Tensor]:
    """Examples -> padded ids/labels/kinds (B, L), attention mask, and pixels (N, C, S, S); for each of
    ``look_kinds`` that the examples have, ``batch["looks"][kind]`` = the addressing loss's targets
    (rows, query positions, key mask; :func:`mmlc.train.look.look_targets`). ``stream_hops``: see
    :meth:`StreamLayout.build` (:attr:`Stage.stream_hops`)."""
    lay = model.layout
    seqs = []
    for e in examples:
        seq = lay.build(e.items, stream_hops=stream_hops)
        if not e.decisions:
            seq.labels = [IGNORE if k == DECISION else y for y, k in zip(seq.labels, seq.kinds)]
            seq.kinds = [0 if k == DECISION else k for k in seq.kinds]
        seqs.append(seq)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), lay.end_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    kinds = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    tags = torch.full((len(seqs), width), IGNORE, dtype=torch.long) if any(s.tags for s in seqs) else None
    for b, s in enumerate(seqs):
        n = len(s)
        if tags is not None and s.tags:
            tags[b, :n] = torch.tensor(s.tags)
        ids[b, :n] = torch.tensor(s.ids)
        labels[b, :n] = torch.tensor(s.labels)
        kinds[b, :n] = torch.tensor(s.kinds)
        mask[b, :n] = 1
    with torch.no_grad():
        per_example = [_pixels(model, e) for e in examples]
    # rows of the pixel batch that are frame tokens, and per example the row spans its Memory items fold
    frame_rows, memory_spans, row = [], [], 0
    for e, px in zip(examples, per_example):
        frame_rows += range(row + e.frame_offset, row + len(px))
        memory_spans.append([(row + a, row + b) for a, b in e.memory_spans])
        row += len(px)
    dev = model.device
    batch = {"input_ids": ids.to(dev), "labels": labels.to(dev), "kinds": kinds.to(dev),
             "attention_mask": mask.to(dev), "pixels": torch.cat(per_example)}
    if tags is not None:
        batch["tags"] = tags.to(dev)
    fc = model.config.frames
    if fc.chat_grid != fc.grid and any(e.still for e in examples):
        batch["image_rows"] = torch.tensor([e.still for e, px in zip(examples, per_example) for _ in range(len(px))],
                                           device=dev)
    for kind in look_kinds:
        looks = [(b, look_targets(s.looks, width, fc.pooled, kind)) for b, s in enumerate(seqs) if s.looks]
        if kind in READ_KINDS:   # only answer words the frame tokens' word tags carry
            classes = _read_candidates(model, spaced=kind == "readall")
            looks = [(b, _keep(q, k, [s.labels[i] in classes for i in q])) for (b, (q, k)), s in
                     ((item, seqs[item[0]]) for item in looks)]
        looks = [(b, (q, k)) for b, (q, k) in looks if q]
        if looks:
            batch.setdefault("looks", {})[kind] = (
                torch.tensor([b for b, (q, _) in looks for _ in q], dtype=torch.long, device=dev),
                torch.tensor([i for _, (q, _) in looks for i in q], dtype=torch.long, device=dev),
                torch.cat([k for _, (_, k) in looks]).to(dev))
            if kind in READ_KINDS:   # the answer word's class: a read head ranks the colours for a colour answer
                cand = torch.zeros((sum(len(q) for _, (q, _) in looks), model.lm.config.vocab_size), dtype=torch.bool)
                for n, (b, i) in enumerate((b, i) for b, (q, _) in looks for i in q):
                    cand[n, sorted(classes[seqs[b].labels[i]])] = True
                batch[f"{kind}_candidates"] = cand.to(dev)
    if any(memory_spans):
        batch["frame_rows"] = torch.tensor(frame_rows, device=dev)
        batch["memory_spans"] = memory_spans
        targets = [t for e in examples if e.memory_spans for t in e.meta.get("memory_targets", [None] * len(e.memory_spans))]
        if targets and all(t is not None for t in targets):
            batch["memory_targets"] = torch.tensor([[t[k] for k in ex.MEMORY_TARGETS] for t in targets], device=dev)
    return batch


class MemoryProbe(torch.nn.Module):
    """Linear read-outs of a scene's bridge memory (m x Dv, flattened) for :data:`examples.MEMORY_TARGETS`:
    a direct training signal for the bridge (training only; not part of the shipped model)."""

    def __init__(self, tokens: int, width: int):
        super().__init__()
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(tokens * width, n) for k, n in ex.MEMORY_TARGETS.items()})
        self.needle_weight = 1.0     # the stage's probe_needle_weight (set when a stage starts)

    def forward(self, memory: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, tuple[int, int]]]:
        """Mean cross-entropy over the targets, and per head (memories read right, memories counted):
        the needle heads count only scenes that showed a needle (most show none: "none" is the easy
        majority, and counting it made a bridge that never kept a needle look 0.94 right)."""
        x = memory.flatten(1)
        loss, right = 0.0, {}
        for j, (name, head) in enumerate(self.heads.items()):
            logits = head(x)
            y = targets[:, j]
            needle = name.startswith("needle_")
            loss = loss + (self.needle_weight if needle else 1.0) * torch.nn.functional.cross_entropy(logits, y)
            keep = y > 0 if needle else torch.ones_like(y, dtype=torch.bool)
            right[name] = (int((logits.argmax(-1) == y)[keep].sum()), int(keep.sum()))
        return loss / len(self.heads), right


def _train_mode(model, vision_stage: bool) -> None:
    """Train mode, except a frozen tower stays in eval mode: its BatchNorm statistics must not drift
    while the LM learns (they did in the first mmlc-tiny run, up to its stage 4: the LM then saw
    batch-statistics features in training and running-statistics ones at inference)."""
    model.train()
    if not vision_stage:
        model.vision.eval()


def _pixels(model, e: ex.Example) -> torch.Tensor:
    if e.still:  # independent images: each is its own previous frame
        return torch.cat([model.preprocess(torch.from_numpy(f[None])) for f in e.frames])
    return model.preprocess(torch.from_numpy(e.frames),
                            previous=model.preprocess(torch.from_numpy(e.previous[None]))[0, :3])


def lm_step(model, batch: dict, train_vision: bool = False, full_logits: bool = False,
            probe: "MemoryProbe | None" = None, tower_dtype: str | None = None,
            look_heads: list[tuple[str, int, int]] = (), look_weight: float = 0.0,
            read_weight: float = 1.0, lm_dtype: str = "float32", tower=None,
            pack: bool = True) -> tuple[dict, torch.Tensor]:
    """Forward + LIVE loss on a batch; returns (loss parts, logits).

    Training computes the LM head only at labelled positions (a quarter of a stream's tokens), so the
    logits are (N_labelled, V); ``full_logits`` returns (B, L, V) for evaluation. With a ``probe`` and
    memory targets in the batch, the probe's loss on the bridge memories is added (``memory_probe_loss``).
    ``tower_dtype`` runs the frozen tower under autocast to that dtype (training speed), or ``tower`` (a
    :class:`~mmlc.train.frozen_tower.FrozenTower` in that dtype) stands in for it. ``lm_dtype`` runs the
    LM's forward and backward under autocast to that dtype (mixed precision: the weights, their
    gradients and the loss stay float32; :attr:`Recipe.lm_dtype`). Training runs a right-padded batch
    packed into one row (:func:`_packing`; the same numbers as the padded batch; ``pack=False``: the
    padded, masked forward, for comparison). ``look_heads``
    ((kind, layer, head), :func:`mmlc.train.look.parse_heads`) add ``look_weight`` x the addressing
    loss of :mod:`mmlc.train.look` on the batch's look targets (``look_loss``, and ``look_mass``:
    their mean attention on the targets; ``look_heads_mass``: per head, its mass and query count), a
    ``read`` head's term weighted ``read_weight`` against the others.
    """
    image_rows = batch.get("image_rows")
    if train_vision:
        feats, image_feats = _features(model, batch["pixels"], image_rows)
        tokens = _row_tokens(model, feats, image_feats, image_rows, None)
        memory = frame_words = memory_words = None
    elif tower is not None:
        feats, image_feats = _features(model, batch["pixels"], image_rows, tower)
    else:
        with torch.no_grad(), torch.autocast(model.device.type, dtype=getattr(torch, tower_dtype or "float32"),
                                             enabled=tower_dtype not in (None, "float32")):
            feats, image_feats = _features(model, batch["pixels"], image_rows)
    if not train_vision:
        feats = feats.float()
        image_feats = None if image_feats is None else image_feats.float()
        rows = batch.get("frame_rows")
        tokens, frame_words = _row_tokens(model, feats, image_feats, image_rows, rows, words=True)
        memory, raw, memory_words = (fold_memories(model, feats, batch["memory_spans"], words=True)
                                     if rows is not None else (None, None, None))
    if full_logits:   # as a session scores it: with the copy head where the model has one
        out = model(batch["input_ids"], frame_tokens=tokens, memory_tokens=memory, attention_mask=batch["attention_mask"],
                    tags=batch.get("tags"), frame_words=frame_words, memory_words=memory_words)
        parts = model.live_loss(out.logits, batch["labels"], batch["kinds"])
        if probe is not None and raw is not None and "memory_targets" in batch:
            parts["memory_probe_loss"], parts["probe_right"] = probe(raw, batch["memory_targets"])
        return parts, out.logits
    embeds = model.embed(batch["input_ids"], tokens, memory, batch.get("tags"))
    looking = any(kind in batch.get("looks", {}) for kind, _, _ in look_heads)
    copying = model.config.frames.copy_head is not None and not train_vision
    copy_layer = parse_head(model.config.frames.copy_head)[0] if copying else None
    keep = batch["labels"] >= 0
    packing = _packing(batch["attention_mask"]) if pack else None
    decoder = model.lm.get_decoder()
    with AttentionTap(model.lm, ([layer for _, layer, _ in look_heads] if looking else []) + ([copy_layer] if copying else []),
                      final=looking and any(kind in READ_KINDS for kind, _, _ in look_heads)) as tap, \
            torch.autocast(model.device.type, dtype=getattr(torch, lm_dtype), enabled=lm_dtype != "float32"):
        if packing is None:
            hidden = decoder(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).last_hidden_state[keep]
        else:
            with packed(model.lm):
                hidden = decoder(inputs_embeds=packing.pack(embeds), position_ids=packing.position_ids,
                                 segments=packing.segments).last_hidden_state[0, keep[packing.where]]
        logits = model.lm.get_output_embeddings()(hidden).float()
    if packing is not None:   # what the look loss and the copy head read, back in the batch's rows
        tap.inputs = {i: (packing.unpack(h), tuple(packing.unpack(t) for t in rope)) for i, (h, rope) in tap.inputs.items()}
        tap.final = None if tap.final is None else packing.unpack(tap.final)
    if copying:   # trained through the copy head, as the session scores (mmlc.models.copy)
        logits = logits + _copy_added(model, tap, batch, keep, frame_words, memory_words).to(logits.dtype)
    parts = model.live_loss(logits, batch["labels"][keep], batch["kinds"][keep])
    if looking:
        parts["look_loss"], parts["look_mass"], parts["look_heads_mass"] = look_loss(model.lm, tap, list(look_heads),
                                                                                     batch, read_weight)
        parts["loss"] = parts["loss"] + look_weight * parts["look_loss"]
    if probe is not None and raw is not None and "memory_targets" in batch:
        parts["memory_probe_loss"], _ = probe(raw, batch["memory_targets"])
        parts["loss"] = parts["loss"] + parts["memory_probe_loss"]
    return parts, logits


def _packing(mask: torch.Tensor) -> Packing | None:
    """How the decoder takes a batch: packed (:mod:`mmlc.train.packing`: the real tokens of every row in
    one row, attention per example) where every row is right-padded (ones, then zeros; :func:`collate`
    pads so), else None (a masked forward over the padded batch). Packing skips the padding's
    projections, MLPs and attention: a ``words`` batch of 9 rows held 4,345 real tokens in 9,621
    padded places."""
    right_padded = bool((mask.cummin(dim=1).values == mask).all())
    return Packing(mask) if right_padded else None


def _copy_added(model, tap: AttentionTap, batch: dict, keep: torch.Tensor, frame_words, memory_words) -> torch.Tensor:
    """What the copy head adds to the logits at the ``keep`` positions (N_keep, V), in their order: its
    attention (:func:`mmlc.train.look.head_attention`) over the tag words of every position, as
    :meth:`StreamingLM.forward` adds it (:meth:`StreamingLM.copy_into_logits`)."""
    layer, head = parse_head(model.config.frames.copy_head)
    ids = batch["input_ids"]
    words = model._position_words(ids, frame_words, memory_words)               # (B, L, Vw)
    rows, queries = keep.nonzero(as_tuple=True)
    hidden, (cos, sin) = tap.inputs[layer]
    p = head_attention(model.lm.get_decoder().layers[layer].self_attn, hidden, cos, sin, head, rows, queries,
                       batch["attention_mask"])                                   # (N, L)
    copied = torch.zeros(len(rows), words.shape[-1], device=p.device)
    for b in rows.unique().tolist():
        sel = rows == b
        copied[sel] = p[sel] @ words[b]
    return model.copy_into_logits(copied, ids[rows, queries])


def _features(model, pixels: torch.Tensor, image_rows: torch.Tensor | None, tower=None):
    """Frame features (N, T, Dv) of every pixel row, and the chat-image features (N_img, T_image, Dv) of
    the rows ``image_rows`` marks (None when the batch has none or images use the frames' grid)."""
    maps, pooled = model.vision_maps(pixels, tower=tower)
    feats = model.frame_features(maps, pooled)
    if image_rows is None:
        return feats, None
    return feats, model.frame_features(maps[image_rows], pooled[image_rows], grid=model.config.frames.chat_grid)


def _row_tokens(model, feats, image_feats, image_rows, rows, words: bool = False):
    """The LM-width tokens of the rows that fill frame placeholders (``rows``, or all), in order: chat
    image rows take their image tokens, the others their frame tokens. With ``words``: (tokens, their
    tag words or None), as :meth:`StreamingLM.project`."""
    if image_feats is None:
        return model.project(feats if rows is None else feats[rows], words=words)
    which = torch.cumsum(image_rows.long(), 0) - 1
    order = torch.arange(feats.shape[0], device=feats.device) if rows is None else rows
    is_image = image_rows[order]
    # project only the rows placed (a memory batch folds many more frames than it places), frames and
    # images apart (their token counts may differ), then interleave them back in order
    frames = model.project(feats[order[~is_image]], words=True)
    images = model.project(image_feats[which[order[is_image]]], words=True)
    out = []
    for part in range(2 if words else 1):
        if frames[part] is None:
            out.append(None)
            continue
        f, i = iter(frames[part]), iter(images[part])
        out.append(torch.cat([next(i) if bool(img) else next(f) for img in is_image]))
    return tuple(out) if words else out[0]


def fold_memories(model, feats: torch.Tensor, spans: list[list[tuple[int, int]]], words: bool = False):
    """Memory tokens (M*m, D) for every Memory item of a batch, in order, and the bridge's memories
    (M, m, Dv): each example's scenes (row spans of ``feats``, frame features (N, T, Dv)) folded one
    after another by the bridge, as the session folds a stream's scenes. (None, None) without any.
    With ``words``, a third item: the memory tokens' tag words (M*m, Vw) or None."""
    from mmlc.models.memory import MemoryState

    out, raw, tagged = [], [], []
    for example_spans in spans:
        state = MemoryState(model.bridge)
        for a, b in example_spans:
            raw.append(state.add_scene(model.memory_features(feats[a:b]))[0])
            tokens, w = model.memory_embeddings(raw[-1], feats[a:b], words=True)
            out.append(tokens)
            tagged.append(w)
    result = (torch.cat(out), torch.stack(raw)) if out else (None, None)
    if not words:
        return result
    return (*result, torch.cat(tagged) if tagged and tagged[0] is not None else None)


def draw_batch(model, stage: Stage, rng: np.random.Generator) -> list[ex.Example]:
    """``batch_size`` examples, fewer when the padded batch (B x longest) would pass ``max_batch_tokens`` or
    the frames through the tower would pass ``max_batch_frames``."""
    build_one = ex.BUILDERS[stage.name]
    batch, longest, frames = [], 0, 0
    per_frame = model.config.frames.tokens_per_frame + 1
    while len(batch) < stage.batch_size:
        e = build_one(rng)
        frames += len(e.frames)
        if batch and stage.max_batch_frames and frames > stage.max_batch_frames:
            break
        per = model.config.frames.tokens_per_image + 1 if e.still else per_frame
        cost = (len(e.frames) - e.frame_offset) * per + 12 * sum(1 for i in e.items if not isinstance(i, ex.Frame))
        cost += sum(12 * len(i.recap) + model.config.memory.tokens for i in e.items if isinstance(i, ex.Memory))
        if batch and stage.max_batch_tokens and (len(batch) + 1) * max(longest, cost) > stage.max_batch_tokens:
            break
        batch.append(e)
        longest = max(longest, cost)
    return batch


# ---------------------------------------------------------------------- evaluation
WORD_CLASSES = {
    "colour": set(sw.COLOURS), "shape": set(sw.SHAPES) | set(sw.NEEDLE_SHAPES), "room": set(sw.ROOMS),
    "direction": {"left", "right", "up", "down"}, "number": set(sw.NUMBER_WORDS),
    "event": {"appears", "leaves", "moves", "stops", "turns", "changes"},
}


MEMORY_STAGES = ("memory", "memalign", "long", "needle")
# the frozen tower is compiled for a stage with at least this many steps to go: compiling costs 15-20 s
# once a run, and saves 0.1-1.5 s a step (mmlc.train.frozen_tower); smoke runs and tests never pay it
COMPILE_MIN_STEPS = 50


def _loggable(value):
    """A loss part for metrics.jsonl: a number to 4 digits; per-head looks ``{head: (mass, n)}`` -> masses."""
    if isinstance(value, dict):
        return {k: round(float(v[0]), 4) for k, v in value.items()}
    return round(float(value.detach() if torch.is_tensor(value) else value), 4)


@torch.no_grad()
def grounding_report(model, examples: list[ex.Example], probe: MemoryProbe | None = None) -> dict:
    """Teacher-forced grounding on held-out examples.

    decision accuracy (argmax of interval vs assistant at each frame decision), speak recall/precision,
    reply token accuracy, per word class (colour, shape, room, direction, number, event word) the
    accuracy of predicting that word's first token, and the fraction of replies fully right.
    """
    model.eval()
    lay, tok = model.layout, model.tokenizer
    counts: dict[str, list[int]] = {}

    def add_many(key: str, right: int, n: int) -> None:
        c = counts.setdefault(key, [0, 0])
        c[0] += right
        c[1] += n

    def add(key: str, ok: bool) -> None:
        add_many(key, int(ok), 1)

    for i in range(0, len(examples), 8):
        chunk = examples[i:i + 8]
        batch = collate(model, chunk)
        parts, logits = lm_step(model, batch, full_logits=True, probe=probe)
        for name, (right, n) in parts.get("probe_right", {}).items():
            add_many(f"memory_{name}", right, n)
        add_loss = counts.setdefault("loss_sum", [0, 0])
        add_loss[0] += float(parts["loss"]) * len(chunk)
        add_loss[1] += len(chunk)
        pred = logits.argmax(-1)
        speak_vs = logits[..., lay.assistant_id] > logits[..., lay.interval_id]
        for b in range(len(chunk)):
            labels, kinds = batch["labels"][b], batch["kinds"][b]
            reply_ok = True
            for pos in range(labels.shape[0]):
                y, k = int(labels[pos]), int(kinds[pos])
                if k == DECISION:
                    want = y == lay.assistant_id
                    add("decision", bool(speak_vs[b, pos]) == want)
                    add("speak_recall" if want else "silent_recall", bool(speak_vs[b, pos]) == want)
                elif k == TEXT:
                    ok = int(pred[b, pos]) == y
                    add("reply_token", ok)
                    reply_ok &= ok
                    word = tok.decode([y]).strip().strip(".").lower()
                    for cls, words in WORD_CLASSES.items():
                        if word in words:
                            add(cls, ok)
                    if y == lay.end_id:
                        add("reply_exact", reply_ok)
                        reply_ok = True
    report = {k: round(v[0] / v[1], 4) for k, v in counts.items() if v[1] and k != "loss_sum"}
    report["loss"] = round(counts["loss_sum"][0] / max(counts["loss_sum"][1], 1), 4)
    report["n"] = {k: v[1] for k, v in counts.items() if k != "loss_sum"}
    return report


# ---------------------------------------------------------------------- optimizer state (safetensors)
def save_optimizer(opt: torch.optim.Optimizer, file: Path) -> None:
    tensors = {}
    for i, group in enumerate(opt.param_groups):
        for j, p in enumerate(group["params"]):
            for name, value in opt.state.get(p, {}).items():
                t = value if torch.is_tensor(value) else torch.tensor(value)
                tensors[f"{i}.{j}.{name}"] = t.detach().cpu().contiguous()
    save_file(tensors, str(file))


def load_optimizer(opt: torch.optim.Optimizer, file: Path) -> None:
    tensors = load_file(str(file))
    for i, group in enumerate(opt.param_groups):
        for j, p in enumerate(group["params"]):
            state = {name.split(".", 2)[2]: t.to(p.device) for name, t in tensors.items()
                     if name.startswith(f"{i}.{j}.")}
            if state:
                opt.state[p] = state


def lr_at(stage: Stage, step: int) -> float:
    """Linear warmup, then cosine decay to 10% of the stage's lr."""
    if step < stage.warmup:
        return stage.lr * (step + 1) / stage.warmup
    frac = (step - stage.warmup) / max(1, stage.steps - stage.warmup)
    return stage.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


# ---------------------------------------------------------------------- the run
@dataclass
class _StageRun:
    """A stage under way: its index, optimizer, trained parameters, look heads and kind."""

    index: int
    stage: Stage
    opt: torch.optim.Optimizer
    params: list
    look_heads: list
    memory_stage: bool
    side: int    # the vision stage's dense map side (0 otherwise)
    tower: "FrozenTower | None" = None   # the frozen tower's fast copy (stages after the vision stage)


class Run:
    """A training run in folder ``out``: prepares, resumes, trains the stages, saves the model."""

    def __init__(self, recipe: Recipe, out: Path, *, device=None, progress: bool = True, log=print,
                 start_from: str | os.PathLike | None = None, start_stage: int | None = None,
                 keep_stages: bool = False, compile: bool = True):
        from accelerate import Accelerator

        self.recipe, self.out, self.progress, self.log = recipe, Path(out), progress, log
        self.keep_stages = keep_stages
        self.compile = compile            # torch.compile the frozen tower (FrozenTower) where it works
        self._towers: dict[str, FrozenTower] = {}
        self.start_from = _check_start(recipe, start_from, start_stage)
        self.start_stage = start_stage
        cpu = device in (None, "cpu")
        self.acc = Accelerator(cpu=cpu)
        self.main = self.acc.is_main_process
        torch.set_num_threads(max(1, os.cpu_count() or 1))

    # -- folder --------------------------------------------------------------------------------
    def prepare_folder(self, resume: bool = True) -> dict | None:
        """Create the run folder, or check an existing one belongs to this recipe; return the state."""
        out = self.out
        recipe_file = out / "recipe.json"
        if out.exists() and any(out.iterdir()):
            if not recipe_file.is_file():
                raise MmlcError(f"output folder '{out}' exists and is not an mmlc training run (no recipe.json): "
                                "pass a new --out folder, or an earlier run's folder to resume it")
            saved = json.loads(recipe_file.read_text())
            extends = self._extends(saved.get("recipe", {}))
            if _with_defaults(saved.get("recipe", {})) != self.recipe.to_dict() and not extends:
                raise MmlcError(f"output folder '{out}' holds a run of another recipe ('{saved.get('recipe', {}).get('name')}' "
                                "with other settings): pass a new --out folder")
            if extends:
                # the recipe gained stages after this run: train the new ones on top of what is there
                self.log(f"the recipe adds stages {[s.name for s in self.recipe.stages[len(saved['recipe']['stages']):]]} "
                         f"to the run in '{out}': continuing with them")
                if self.main:
                    recipe_file.write_text(json.dumps({**saved, "recipe": self.recipe.to_dict()}, indent=2) + "\n")
                    if (out / "model").is_dir():
                        os.replace(out / "model", out / f"model.stage{len(saved['recipe']['stages'])}")
            elif (out / "model" / "model.safetensors").is_file():
                raise MmlcError(f"output folder '{out}' holds a finished run (model/ exists): pass a new --out folder "
                                "to train again")
            if not resume:
                raise MmlcError(f"output folder '{out}' holds an unfinished run: rerun without --no-resume to resume it, "
                                "or pass a new --out folder")
            state_file = out / "checkpoint" / "state.json"
            return json.loads(state_file.read_text()) if state_file.is_file() else None
        out.mkdir(parents=True, exist_ok=True)
        if self.main:
            saved = {"recipe": self.recipe.to_dict(), "config": preset(self.recipe.preset).to_dict()}
            if self.start_from is not None:
                saved["started_from"] = {"model": str(self.start_from), "stage": self.start_stage}
            recipe_file.write_text(json.dumps(saved, indent=2) + "\n")
        return None

    def _extends(self, saved: dict) -> bool:
        """The saved recipe is this one minus stages appended at the end (and its run reached them)."""
        mine, saved = self.recipe.to_dict(), _with_defaults(saved)
        n = len(saved.get("stages", []))
        return (bool(saved) and n < len(mine["stages"]) and mine["stages"][:n] == saved["stages"]
                and {k: v for k, v in mine.items() if k != "stages"} == {k: v for k, v in saved.items() if k != "stages"})

    # -- tokenizer -----------------------------------------------------------------------------
    def tokenizer(self):
        from transformers import AutoTokenizer

        folder = self.out / "tokenizer"
        if (folder / "tokenizer.json").is_file():
            return AutoTokenizer.from_pretrained(folder)
        if self.start_from is not None:   # the model the run starts from was trained with its own
            tok = AutoTokenizer.from_pretrained(self.start_from)
        else:
            rng = np.random.default_rng(self.recipe.seed)
            texts = list(corpus(rng, self.recipe.tokenizer_episodes, self.recipe.tokenizer_dialogues))
            tok = train_tokenizer(texts, self.recipe.tokenizer_vocab, preset(self.recipe.preset).template)
        if self.main:
            tok.save_pretrained(folder)
        return tok

    # -- main loop -----------------------------------------------------------------------------
    def train(self, resume: bool = True) -> Path:
        state = self.prepare_folder(resume)
        t0 = time.time()
        model = build(preset(self.recipe.preset), self.tokenizer(), seed=self.recipe.seed)
        model.to(self.acc.device)
        heads = make_heads(model)
        if model.bridge is not None:
            heads.memory_probe = MemoryProbe(model.config.memory.tokens, model.config.vision.hidden_size)
        heads.to(self.acc.device)
        ckpt = self.out / "checkpoint"
        start_stage, start_step, elapsed = 0, 0, 0.0
        starting_from_model = state is None and self.start_from is not None
        done = state["stage"] if state is not None else (self.start_stage - 1 if starting_from_model else 0)
        # what earlier stages changed in the model's structure, and the stage a checkpoint was saved in the
        # middle of (a reader stage's checkpoint holds the reader)
        built = self.recipe.stages[:done + int(state is not None and state["step"] > 0)]
        for stage in built:
            if stage.frames_grid:
                set_frames_grid(model, stage.frames_grid)
            if stage.name == "reader":
                enable_reader(model)
            if stage.name == "rare":
                enable_rare(model)
            if stage.memory_tags:
                set_memory_tags(model)
            if stage.copy_head:
                set_copy_head(model, stage.copy_head, stage.copy_scale or None)
            if stage.tag_scale or stage.tag_mode:
                set_tags(model, stage.tag_scale, stage.tag_mode)
        if state is not None:
            # a run that predates the memory bridge (recipe extended with a memory stage) has no bridge yet
            load_weights(model, ckpt / "model.safetensors", allow_missing=("bridge.", "memory_offset"))
            if (ckpt / "heads.safetensors").is_file():
                load_weights(heads, ckpt / "heads.safetensors", allow_missing=("memory_probe.",))
            start_stage, start_step, elapsed = state["stage"], state["step"], state.get("elapsed", 0.0)
            self.log(f"resuming stage {start_stage} ({self.recipe.stages[start_stage].name}) at step {start_step}")
        if starting_from_model:
            start_stage = self.start_stage - 1
            self._start_from_model(model, heads, start_stage)
        for s_idx in range(start_stage, len(self.recipe.stages)):
            stage = self.recipe.stages[s_idx]
            step0 = start_step if s_idx == start_stage else 0
            elapsed = self._train_stage(model, heads, s_idx, stage, step0, elapsed, t0)
            t0 = time.time()
        if self.main:
            final = save_pretrained(model, self.out / "model.tmp")
            os.replace(final, self.out / "model")
            self.log(f"training done in {elapsed / 60:.1f} min: {self.out / 'model'}")
        return self.out / "model"

    # -- how long a recipe takes here ------------------------------------------------------------
    def estimate(self, steps: int = 4, evaluate: bool = True) -> dict:
        """Time each stage of the recipe on this machine, without a run folder: a throwaway model walks
        the stages as :meth:`train` does (the same structure changes, the same step code), and in each
        stage ``steps`` optimizer steps spread over the stage (their data and batch sizes are those of
        a real run) are timed after one untimed first step (where one-time work such as compiling the
        frozen tower falls: reported as ``first_step_s``), and the stage's evaluation once. Returns
        ``{"stages": [{"stage", "name", "steps", "s_per_step", "first_step_s", "eval_s", "seconds", "minutes"}, ...],
        "minutes": total}``: the estimated wall time of a whole run is ``minutes`` (plus the tokenizer,
        about a minute). Each step's time varies with its examples' lengths: more ``steps``, a closer mean."""
        from mmlc.models.loading import default_tokenizer

        config = preset(self.recipe.preset)
        model = build(config, default_tokenizer(config), seed=self.recipe.seed).to(self.acc.device)
        heads = make_heads(model)
        if model.bridge is not None:
            heads.memory_probe = MemoryProbe(model.config.memory.tokens, model.config.vision.hidden_size)
        heads.to(self.acc.device)
        rows, total = [], 0.0
        for s_idx, stage in enumerate(self.recipe.stages):
            run = self._begin_stage(model, heads, s_idx, stage, 0)
            at = np.linspace(0, stage.steps - 1, steps + 1).round().astype(int).tolist()
            times = []
            for step in at:
                t = time.perf_counter()
                self._step(model, heads, run, step)
                times.append(time.perf_counter() - t)
            per_step = float(np.mean(times[1:])) if len(times) > 1 else times[0]
            eval_s = 0.0
            if evaluate:
                t = time.perf_counter()
                self.evaluate(model, heads, stage)
                eval_s = time.perf_counter() - t
            if stage.name == "vision":
                self._towers.clear()
            seconds = per_step * stage.steps + max(times[0] - per_step, 0.0) + eval_s
            minutes = seconds / 60
            total += minutes
            rows.append({"stage": s_idx + 1, "name": stage.name, "steps": stage.steps, "s_per_step": round(per_step, 4),
                         "first_step_s": round(times[0], 2), "eval_s": round(eval_s, 2), "seconds": round(seconds, 2),
                         "minutes": round(minutes, 2)})
            self.log(f"stage {s_idx + 1}/{len(self.recipe.stages)} {stage.name}: {per_step:.2f} s a step x "
                     f"{stage.steps} -> {minutes:.1f} min (first step {times[0]:.1f} s, eval {eval_s:.1f} s)")
        return {"recipe": self.recipe.name, "steps_timed": steps, "stages": rows, "minutes": round(total, 1)}

    def _start_from_model(self, model, heads, n_done: int) -> None:
        """Take the weights of ``start_from`` as the model after the recipe's first ``n_done`` stages and
        checkpoint them, so that an interruption before the first save resumes from here too."""
        from mmlc.models.loading import read_config

        differ = _differing_fields(model.config.to_dict(), read_config(self.start_from).to_dict())
        if differ:
            raise MmlcError(f"--from '{self.start_from}': its config.json differs from what recipe "
                            f"'{self.recipe.name}' has after stage {n_done} ({self.recipe.stages[n_done - 1].name}) "
                            f"in {differ[:6]}: pass a model that recipe made by then, or another --from-stage")
        load_weights(model, self.start_from / "model.safetensors")
        self.log(f"starting at stage {n_done + 1} ({self.recipe.stages[n_done].name}) from the model in "
                 f"'{self.start_from}'")
        self._save(model, heads, None, n_done, 0, 0.0)

    def _begin_stage(self, model, heads, s_idx: int, stage: Stage, step0: int) -> "_StageRun":
        """What a stage changes in the model when it starts (the frames' grid, a reader, a detector, tags,
        fresh embeddings), which parameters it trains, and its optimizer (resumed at ``step0`` > 0)."""
        vision = stage.name == "vision"
        reading = stage.name in ("reader", "rare")
        if stage.frames_grid and set_frames_grid(model, stage.frames_grid):
            self.log(f"stage {stage.name}: frames read at {stage.frames_grid}x{stage.frames_grid} from here on "
                     f"({model.tokens_per_frame} tokens a frame; the bridge folds {model.config.memory_grid}x"
                     f"{model.config.memory_grid})")
        if (stage.tag_scale or stage.tag_mode) and set_tags(model, stage.tag_scale, stage.tag_mode):
            fc = model.config.frames
            self.log(f"stage {stage.name}: word tags bound per {fc.tag_mode}, added x{fc.tag_scale} from here on")
        if stage.name == "reader" and enable_reader(model):
            self.log(f"stage reader: a word-tag reader over the {model.config.frames.grid}x{model.config.frames.grid} "
                     f"frame tokens ({sum(p.numel() for p in model.reader.parameters())} parameters)")
        if stage.name == "rare" and enable_rare(model):
            self.log(f"stage rare: a detector of {model.config.frames.rare} in the reader "
                     f"({sum(p.numel() for p in model.reader.rare.parameters())} parameters)")
        if stage.memory_tags and set_memory_tags(model):
            self.log(f"stage {stage.name}: memory tokens carry their scene's word tags from here on")
        if stage.copy_head and set_copy_head(model, stage.copy_head, stage.copy_scale or None):
            self.log(f"stage {stage.name}: head {stage.copy_head} copies tag words into the logits "
                     f"(x{model.config.frames.copy_scale:g}) from here on")
        if stage.fresh_digits and step0 == 0:
            n = fresh_digit_embeddings(model, seed=self.recipe.seed + s_idx)
            self.log(f"stage {stage.name}: embeddings of {n} digit tokens drawn afresh")
        if stage.fresh_words and step0 == 0:
            n = fresh_token_embeddings(model, word_start_tokens(model.tokenizer, stage.fresh_words),
                                       seed=self.recipe.seed + 1000 + s_idx)   # not the digits' seeds
            self.log(f"stage {stage.name}: embeddings of the {n} tokens that start {stage.fresh_words} drawn afresh")
        if stage.spread_words and step0 == 0:
            before, after = spread_token_embeddings(model, word_start_tokens(model.tokenizer, stage.spread_words),
                                                    stage.spread)
            self.log(f"stage {stage.name}: embeddings of {stage.spread_words} spread x{stage.spread} from their "
                     f"mean (mean cosine {before:.2f} -> {after:.2f})")
        for p in model.parameters():
            p.requires_grad_(False)
        if reading:
            trainable = list(model.reader.parameters() if stage.name == "reader" else model.reader.rare.parameters())
        elif vision:
            trainable = list(model.vision.parameters()) + list(heads.parameters())
        else:
            trainable = list(model.connector.parameters()) + list(model.lm.parameters())
        memory_stage = stage.name in MEMORY_STAGES
        if memory_stage:
            heads.memory_probe.needle_weight = stage.probe_needle_weight
        fresh = list(model.bridge.parameters()) + [model.memory_offset] + list(heads.memory_probe.parameters()) \
            if memory_stage else []
        for p in trainable + fresh:
            p.requires_grad_(True)
        params = list({id(p): p for p in trainable}.values())
        groups = [{"params": params, "scale": 1.0}]
        if fresh:
            groups.append({"params": fresh, "scale": stage.new_lr_scale})
            params = params + fresh
        opt = torch.optim.AdamW(groups, lr=stage.lr, weight_decay=self.recipe.weight_decay, betas=(0.9, 0.98))
        ckpt = self.out / "checkpoint"
        if step0 > 0 and (ckpt / "optimizer.safetensors").is_file():
            load_optimizer(opt, ckpt / "optimizer.safetensors")
        lm_cfg = model.lm.config
        look_heads = parse_heads(stage.look_heads, lm_cfg.num_hidden_layers, lm_cfg.num_attention_heads)
        _train_mode(model, vision)
        tower = None if vision else self._frozen_tower(model, stage.tower_dtype or self.recipe.frozen_tower_dtype,
                                                       compile=self.compile and stage.steps - step0 >= COMPILE_MIN_STEPS)
        return _StageRun(s_idx, stage, opt, params, look_heads, memory_stage, map_side(model) if vision else 0, tower)

    def _frozen_tower(self, model, dtype: str, compile: bool) -> FrozenTower:
        """The frozen tower's fast copy in ``dtype``, built (and compiled) once for all the stages after
        the vision stage that run it so; a vision stage in between would make it stale, so
        :meth:`_train_stage` drops them after one."""
        key = f"{dtype}{'-compiled' if compile else ''}"
        if key not in self._towers:
            self._towers[key] = FrozenTower(model.vision, getattr(torch, dtype), compile=compile, log=self.log)
        return self._towers[key]

    def _step(self, model, heads, run: "_StageRun", step: int) -> dict:
        """One optimizer step of a stage on the examples of (recipe seed, stage, step, process);
        returns the loss parts (``loss`` among them)."""
        stage = run.stage
        rng = np.random.default_rng([self.recipe.seed, run.index, step, self.acc.process_index])
        for g in run.opt.param_groups:
            g["lr"] = lr_at(stage, step) * g.get("scale", 1.0)
        if stage.name == "vision":
            world = lambda r: ex.training_world(r, 60.0)  # noqa: E731
            prevs, curs, labels = sample_pairs(rng, stage.batch_size, world, dense_side=run.side)
            loss, _ = aux_loss(model, heads, prevs, curs, labels)
            parts = {"loss": loss}
        elif stage.name in ("reader", "rare"):
            loss, _ = self._reader_loss(model, stage, rng, stage.batch_size, run.tower)
            parts = {"loss": loss}
        else:
            batch = collate(model, draw_batch(model, stage, rng), look_kinds={k for k, _, _ in run.look_heads},
                            stream_hops=stage.stream_hops)
            parts, _ = lm_step(model, batch, probe=heads.memory_probe if run.memory_stage else None,
                               tower_dtype=stage.tower_dtype or self.recipe.frozen_tower_dtype,
                               look_heads=run.look_heads, look_weight=stage.look_weight,
                               read_weight=stage.read_weight, lm_dtype=self.recipe.lm_dtype, tower=run.tower)
        run.opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        self._average_gradients(run.params)
        torch.nn.utils.clip_grad_norm_(run.params, 1.0)
        run.opt.step()
        return parts

    def _train_stage(self, model, heads, s_idx: int, stage: Stage, step0: int, elapsed: float, t0: float) -> float:
        run = self._begin_stage(model, heads, s_idx, stage, step0)
        vision = stage.name == "vision"
        bar = tqdm(total=stage.steps, initial=step0, desc=f"stage {s_idx + 1}/{len(self.recipe.stages)} {stage.name}",
                   disable=not (self.progress and self.main), dynamic_ncols=True)
        log_file = self.out / "metrics.jsonl"
        ema = None
        for step in range(step0, stage.steps):
            parts = self._step(model, heads, run, step)
            value = float(parts["loss"].detach())
            ema = value if ema is None else 0.95 * ema + 0.05 * value
            bar.set_postfix(loss=f"{ema:.3f}")
            bar.update(1)
            if self.main and (step + 1) % 25 == 0:
                with open(log_file, "a") as f:
                    f.write(json.dumps({"stage": stage.name, "step": step + 1, "loss": round(ema, 4),
                                        **{k: _loggable(v) for k, v in parts.items()},
                                        "elapsed": round(elapsed + time.time() - t0, 1)}) + "\n")
            if (step + 1) % self.recipe.save_every == 0 and step + 1 < stage.steps:
                self._save(model, heads, run.opt, s_idx, step + 1, elapsed + time.time() - t0)
            if vision and self.main and (step + 1) % (3 * self.recipe.save_every) == 0 and step + 1 < stage.steps:
                with open(log_file, "a") as f:
                    f.write(json.dumps({"stage": stage.name, "step": step + 1, "probe": self.evaluate(model, heads, stage)}) + "\n")
                _train_mode(model, vision)
        bar.close()
        if vision:   # the tower changed: a later stage's fast copy is built from it afresh
            self._towers.clear()
        elapsed += time.time() - t0
        report = self.evaluate(model, heads, stage)
        self.log(f"after stage {stage.name}: {json.dumps(report)}")
        if self.main:
            with open(log_file, "a") as f:
                f.write(json.dumps({"stage": stage.name, "eval": report, "elapsed": round(elapsed, 1)}) + "\n")
        next_stage = s_idx + 1
        if self.keep_stages and self.main:   # each stage's model, loadable as it is (mmlc.load(folder))
            # Written whole under a temporary name, then renamed, and before the checkpoint moves on
            # to the next stage: a run killed here redoes the stage's tail and writes it again, and
            # never leaves a half-written stage folder.
            folder = self.out / "stages" / f"{next_stage:02d}-{stage.name}"
            tmp = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            save_pretrained(model, tmp)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        self._save(model, heads, None, next_stage, 0, elapsed)
        _train_mode(model, vision)
        return elapsed

    def _reader_loss(self, model, stage: Stage, rng: np.random.Generator, n: int, tower: FrozenTower | None = None):
        """The reader's (stage ``reader``) or its rare-shape detector's (stage ``rare``) loss and
        accuracies on ``n`` fresh frames (the frozen tower's features; from ``tower`` where given)."""
        sample = sample_frames if stage.name == "reader" else sample_rare_frames
        prevs, curs, labels = sample(rng, n, model.config.frames.words, model.config.frames.grid)
        dtype = stage.tower_dtype or self.recipe.frozen_tower_dtype
        with torch.no_grad(), torch.autocast(model.device.type, dtype=getattr(torch, dtype),
                                             enabled=dtype != "float32" and tower is None):
            feats = model.frame_features(*model.vision_maps(pair_pixels(model, prevs, curs), tower=tower))
        return (reader_loss if stage.name == "reader" else rare_loss)(model, feats.float(), labels)

    def _average_gradients(self, params: list) -> None:
        """Data parallel: the mean gradient over processes (each drew its own examples)."""
        if self.acc.num_processes == 1:
            return
        import torch.distributed as dist
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(self.acc.num_processes)

    def evaluate(self, model, heads, stage: Stage) -> dict:
        model.eval()
        rng = np.random.default_rng([EVAL_SEED, ex.STAGES.index(stage.name) + 1 if stage.name in ex.STAGES else 0])
        with torch.no_grad():
            if stage.name in ("reader", "rare"):
                return {k: round(v, 4) for k, v in self._reader_loss(model, stage, rng, stage.eval_examples)[1].items()}
            if stage.name == "vision":
                world = lambda r: ex.training_world(r, 60.0)  # noqa: E731
                prevs, curs, labels = sample_pairs(rng, stage.eval_examples, world, dense_side=map_side(model))
                _, acc = aux_loss(model, heads, prevs, curs, labels)
                groups: dict[str, list[float]] = {}
                for k, v in acc.items():
                    groups.setdefault(k.split("_", 1)[-1] if "_" in k and k.split("_")[0] in sw.SHAPES else k,
                                      []).append(v)
                return {k: round(float(np.mean(v)), 4) for k, v in groups.items()}
            examples = [ex.BUILDERS[stage.name](rng) for _ in range(stage.eval_examples)]
            probe = getattr(heads, "memory_probe", None) if stage.name in MEMORY_STAGES else None
            return grounding_report(model, examples, probe=probe)

    def _save(self, model, heads, opt, stage: int, step: int, elapsed: float) -> None:
        if not self.main:
            return
        ckpt, tmp = self.out / "checkpoint", self.out / "checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        from safetensors.torch import save_model
        save_model(model, str(tmp / "model.safetensors"))
        save_model(heads, str(tmp / "heads.safetensors"))
        if opt is not None:
            save_optimizer(opt, tmp / "optimizer.safetensors")
        (tmp / "state.json").write_text(json.dumps({"stage": stage, "step": step, "elapsed": round(elapsed, 1)}))
        old = self.out / "checkpoint.old"
        shutil.rmtree(old, ignore_errors=True)
        if ckpt.exists():
            os.replace(ckpt, old)
        os.replace(tmp, ckpt)
        shutil.rmtree(old, ignore_errors=True)


def digit_tokens(tokenizer) -> list[int]:
    """Ids of the tokens that are digits (with or without a leading space)."""
    return [i for i in range(len(tokenizer)) if tokenizer.decode([i]).strip().isdigit()]


def set_tags(model, scale: float = 0.0, mode: str = "") -> bool:
    """From now on add the reader's word tags times ``scale`` (frames.tag_scale; 0 keeps it) and bind them
    as ``mode`` says (frames.tag_mode; "" keeps it). Returns whether anything changed."""
    if model.reader is None:
        raise ConfigError(f"tag_scale={scale}, tag_mode={mode!r}: this model has no reader yet; put the stage "
                          "after a reader stage")
    fc = model.config.frames
    before = (fc.tag_scale, fc.tag_mode)
    if scale:
        fc.tag_scale = float(scale)
    if mode:
        fc.tag_mode = mode
    return (fc.tag_scale, fc.tag_mode) != before


def set_copy_head(model, head: str, scale: float | None = None) -> bool:
    """From now on LM head ``head`` ("LAYER.HEAD") copies the tag words it attends to into the logits,
    times ``scale`` (None: the config's; frames.copy_head, :mod:`mmlc.models.copy`), checked as a
    loaded config would be. Returns whether anything changed."""
    from mmlc.config import MmlcConfig

    if model.reader is None:
        raise ConfigError(f"copy_head={head!r}: the copy head reads word tags and this model has none yet; put it "
                          "on a stage after the reader stage")
    data = model.config.to_dict()
    data["frames"]["copy_head"] = head
    if scale is not None:
        data["frames"]["copy_scale"] = scale
    checked = MmlcConfig.from_dict(data).frames     # raises ConfigError naming the field
    layer, h = parse_head(head)
    lm = model.lm.config
    if not (layer < lm.num_hidden_layers and h < lm.num_attention_heads):
        raise ConfigError(f"copy_head={head!r}: this LM has {lm.num_hidden_layers} layers of "
                          f"{lm.num_attention_heads} heads; give LAYER.HEAD within them")
    changed = (model.config.frames.copy_head, model.config.frames.copy_scale) != (checked.copy_head, checked.copy_scale)
    model.config.frames.copy_head, model.config.frames.copy_scale = checked.copy_head, checked.copy_scale
    return changed


def set_memory_tags(model) -> bool:
    """From now on each scene's memory tokens carry its word tags (memory.tags; checked as a loaded
    config would be: a reader and enough memory tokens). Returns whether it was off before."""
    if model.config.memory.tags:
        return False
    if model.reader is None:
        raise ConfigError("memory_tags=True: this model has no reader yet; put the stage after a reader stage")
    from mmlc.config import MmlcConfig

    data = model.config.to_dict()
    data["memory"]["tags"] = True
    MmlcConfig.from_dict(data)               # raises ConfigError naming memory.tags if it cannot hold them
    model.config.memory.tags = True
    return True


def set_frames_grid(model, grid: int) -> bool:
    """Read frames at ``grid`` x ``grid`` from now on (config, and the layout derived from it). The memory
    bridge's grid is pinned to the one it was built with, so its weights (slot embeddings per frame
    token) still fit; the connector is per token and needs no change. Returns whether anything changed."""
    cfg = model.config
    if cfg.frames.grid == grid:
        return False
    if model.bridge is not None and cfg.memory_grid == 0:
        raise ConfigError(f"frames_grid={grid}: this model's bridge folds pooled-only frames (frames.grid 0), which "
                          "memory.grid cannot pin; give the preset a frames grid first")
    cfg.memory.grid = cfg.memory_grid
    cfg.frames.grid = grid
    if model.tokenizer is not None:   # the layout again, from the new config (chat images follow the
        attach_tokenizer(model, model.tokenizer)   # frames' grid when frames.image_grid is 0)
    return True


def word_start_tokens(tokenizer, words: list[str]) -> list[int]:
    """Ids of the first token of each word as an answer starts with it (no space before it), once each."""
    return sorted({tokenizer.encode(w, add_special_tokens=False)[0] for w in words})


def fresh_digit_embeddings(model, seed: int) -> int:
    """Draw the embeddings of the digit tokens afresh (fresh_token_embeddings). Returns how many."""
    return fresh_token_embeddings(model, digit_tokens(model.tokenizer), seed)


@torch.no_grad()
def fresh_token_embeddings(model, ids: list[int], seed: int) -> int:
    """Draw the input (and tied output) embeddings of tokens ``ids`` afresh: normal directions at the
    table's mean row norm, from ``seed``. Random directions in the LM width are nearly orthogonal, so
    collapsed tokens ("1"/"2"/"3", "small"/"large") become distinguishable again. Returns len(ids)."""
    table = model.lm.get_input_embeddings().weight
    if not ids:
        return 0
    gen = torch.Generator().manual_seed(int(seed))
    fresh = torch.randn(len(ids), table.shape[1], generator=gen)
    fresh = fresh / fresh.norm(dim=1, keepdim=True) * table.norm(dim=1).mean().cpu()
    table[ids] = fresh.to(table)
    out = model.lm.get_output_embeddings()
    if out is not None and out.weight is not table:
        out.weight[ids] = fresh.to(out.weight)
    return len(ids)


def spread_token_embeddings(model, ids: list[int], factor: float) -> tuple[float, float]:
    """E' = mean + factor * (E - mean) over the rows ``ids`` of the input (and an untied output)
    embedding: the rows grow apart (factor > 1) while, for any hidden state h, h.E'_i - h.E'_j =
    factor * (h.E_i - h.E_j), so their order of logits is kept. Returns the mean pairwise cosine
    of the input rows before and after."""
    table = model.lm.get_input_embeddings().weight

    def mean_cos(rows: torch.Tensor) -> float:
        e = torch.nn.functional.normalize(rows.float(), dim=-1)
        n = len(rows)
        return float(((e @ e.T).sum() - n) / (n * (n - 1)))

    with torch.no_grad():
        before = mean_cos(table[ids])
        tables = [table]
        out = model.lm.get_output_embeddings()
        if out is not None and out.weight is not table:
            tables.append(out.weight)
        for t in tables:
            rows = t[ids]
            centre = rows.mean(0, keepdim=True)
            t[ids] = centre + factor * (rows - centre)
        return before, mean_cos(table[ids])


def _with_defaults(saved: dict) -> dict:
    """A saved recipe dict with fields added to Recipe/Stage since it was saved at their defaults, so a
    run folder from before a new field compares equal to the same recipe today ({} if unreadable)."""
    try:
        stages = [asdict(Stage(**d)) for d in saved.get("stages", [])]
        return {**asdict(Recipe(**{k: v for k, v in saved.items() if k != "stages"})), "stages": stages}
    except TypeError:
        return {}


def corpus(rng: np.random.Generator, n_episodes: int, n_dialogues: int = 0):
    """Every text the model will read or say: narration, questions, answers, descriptions, and (from
    ``n_dialogues`` multi-image dialogues) chat turns with their image labels as ChatSession writes them."""
    from mmlc.streaming.chat import turn_parts

    for _ in range(n_dialogues):
        mi = sw.generate_multi_image(int(rng.integers(0, 2**31 - 1)))
        for j, turn in enumerate(mi.turns):
            yield "".join(p for p in turn_parts(turn["question"], len(mi.images) if j == 0 else 0) if isinstance(p, str))
            yield turn["answer"]
    for _ in range(n_episodes):
        ep = ex.episode(rng)
        truth = ep.truth()
        for n in truth["narration"]:
            yield n["text"]
        for qa in truth["qa"]:
            yield qa["question"]
            yield qa["answer"]
        for i in range(0, ep.n_frames, 20):
            for q, a in sw.state_questions(ep.states[i]):
                yield q
                yield a


def _differing_fields(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields where nested dicts ``a`` and ``b`` differ."""
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differing_fields(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(prefix + key)
    return out


def _check_start(rec: Recipe, start_from, start_stage) -> Path | None:
    """The model folder a run starts from (``--from``), checked with its stage (``--from-stage``, 1-based)."""
    if start_from is None and start_stage is None:
        return None
    if start_from is None or start_stage is None:
        raise ConfigError("--from and --from-stage go together: --from DIR names a model folder made by the "
                          "recipe's first stages, --from-stage N the first stage to train on it")
    n = len(rec.stages)
    if isinstance(start_stage, bool) or not isinstance(start_stage, int) or not 2 <= start_stage <= n:
        raise ConfigError(f"--from-stage {start_stage!r}: recipe '{rec.name}' has stages 1..{n} "
                          f"({', '.join(s.name for s in rec.stages)}); pass 2..{n} (stage 1 starts from scratch)")
    folder = Path(start_from)
    if str(start_from) == "mmlc-tiny" and not folder.exists():   # the embedded model, wherever it is installed
        from mmlc.models.loading import DEFAULT_MODEL
        folder = DEFAULT_MODEL
    if not (folder / "model.safetensors").is_file() or not (folder / "config.json").is_file():
        raise ConfigError(f"--from '{start_from}': not a model folder (needs config.json and model.safetensors, "
                          "as model.save_pretrained or a finished run's model/ writes them)")
    if not (folder / "tokenizer.json").is_file():
        raise ConfigError(f"--from '{start_from}': has no tokenizer.json; the run needs the tokenizer the "
                          "model was trained with")
    return folder


def train(recipe_name: str, out: str | os.PathLike, *, device=None, resume: bool = True, progress: bool = True,
          log=print, start_from: str | os.PathLike | None = None, start_stage: int | None = None,
          keep_stages: bool = False, compile: bool = True) -> Path:
    """Run (or resume) recipe ``recipe_name`` into folder ``out``; returns the final model folder.

    ``start_from`` (a model folder) with ``start_stage`` (1-based) skips the recipe's earlier stages:
    the run takes that model (weights and tokenizer) as what they made and trains from that stage on,
    e.g. the shipped mmlc-tiny and the stage a recipe gained after it was exported. ``keep_stages``:
    also save the model after each stage to ``out/stages/NN-name`` (a few MB each), to evaluate them.
    ``compile``: compile the frozen tower with torch.compile where that works (:mod:`mmlc.train.frozen_tower`)."""
    rec = get_recipe(recipe_name)
    if device not in (None, "cpu", "cuda", "auto"):
        raise ConfigError(f"device {device!r} is not supported for training: use cpu, cuda or auto "
                          "(several GPUs: accelerate launch -m mmlc train ...)")
    return Run(rec, Path(out), device=None if device in (None, "cpu") else "cuda", progress=progress,
               log=log, start_from=start_from, start_stage=start_stage, keep_stages=keep_stages,
               compile=compile).train(resume=resume)


def estimate(recipe_name: str, *, steps: int = 4, device=None, compile: bool = True, evaluate: bool = True,
             log=print) -> dict:
    """How long recipe ``recipe_name`` takes on this machine, stage by stage (:meth:`Run.estimate`),
    without writing anything."""
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"--estimate-steps {steps!r}: give a whole number >= 1 of steps to time in each stage")
    rec = get_recipe(recipe_name)
    return Run(rec, Path("."), device=None if device in (None, "cpu") else "cuda", progress=False, log=log,
               compile=compile).estimate(steps, evaluate=evaluate)
