"""The ``reader`` stage: teach the word-tag reader (:mod:`mmlc.models.reader`) what each frame token holds.

The tower stays frozen (its features already hold shape, colour and size per cell, 0.95-0.99 by
probes); only the reader learns, from simulator labels: per grid cell of the frames' grid and per
shape, whether an object of that shape overlaps the cell (the same boxes the look loss uses), that
object's colour and size; per frame the room. Frames come from training episodes (with their
previous frame, as a stream shows them) and, a quarter of them, from still multi-image sets (as a
chat shows them: the image is its own previous frame).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from mmlc.data import shapeworld as sw
from mmlc.train.look import box_cells

IGNORE = -100


def world_words(world: sw.WorldConfig | None = None) -> dict:
    """``frames.words`` for ShapeWorld: every shape (the needle's too), colour, size and room."""
    world = world or sw.WorldConfig()
    return {"shapes": list(world.shapes) + list(world.needle_shapes), "colours": list(world.colours),
            "sizes": ["small", "large"], "rooms": list(world.rooms)}


def cell_labels(state: dict, words: dict, grid: int, frame_size: int) -> dict[str, np.ndarray]:
    """Labels of one frame: present (G, S) 0/1, colour and size (G, S) class or IGNORE, room ()."""
    shapes = words["shapes"]
    g2 = grid * grid
    present = np.zeros((g2, len(shapes)), np.float32)
    colour = np.full((g2, len(shapes)), IGNORE, np.int64)
    size = np.full((g2, len(shapes)), IGNORE, np.int64)
    objects = list(state["objects"]) + ([state["needle"]] if state.get("needle") else [])
    for o in objects:
        s = shapes.index(o["shape"])
        cells = box_cells(sw.object_box(o, frame_size), grid)
        present[cells, s] = 1.0
        colour[cells, s] = words["colours"].index(o["colour"])
        size[cells, s] = words["sizes"].index(o.get("size", "small"))
    room = np.int64(words["rooms"].index(state["room"]))
    return {"present": present, "colour": colour, "size": size, "room": room}


def _stacked(prevs: list, curs: list, labels: list[dict]):
    """Lists of frames and per-frame label dicts -> (prevs, curs) arrays and a dict of stacked tensors."""
    return np.stack(prevs), np.stack(curs), {k: torch.as_tensor(np.stack([lab[k] for lab in labels])) for k in labels[0]}


def sample_frames(rng: np.random.Generator, n: int, words: dict, grid: int, still_fraction: float = 0.25,
                  needle_fraction: float = 0.15):
    """``n`` (previous frame, frame) uint8 pairs (n, H, W, 3) each and their labels (stacked tensors)."""
    from mmlc.train.examples import training_world

    prevs, curs, labels = [], [], []
    while len(curs) < n:
        if rng.random() < still_fraction:
            cfg = sw.WorldConfig()
            mi = sw.generate_multi_image(int(rng.integers(0, 2**31 - 1)), config=cfg)
            for img, state in zip(mi.images, mi.states):
                prevs.append(img)
                curs.append(img)
                labels.append(cell_labels(state, words, grid, cfg.size))
            continue
        world = training_world(rng, 60.0)
        if rng.random() < needle_fraction:
            world = replace(world, needle=True)
        ep = sw.generate_episode(int(rng.integers(0, 2**31 - 1)), world)
        shown = [i for i in range(1, ep.n_frames) if ep.states[i].get("needle")]
        for _ in range(4):
            i = int(rng.choice(shown)) if shown and rng.random() < 0.5 else int(rng.integers(0, ep.n_frames))
            prevs.append(ep.frame(max(i - 1, 0)))
            curs.append(ep.frame(i))
            labels.append(cell_labels(ep.states[i], words, grid, ep.config.size))
    return _stacked(prevs[:n], curs[:n], labels[:n])


def reader_loss(model, feats: torch.Tensor, labels: dict[str, torch.Tensor]):
    """Mean of the reader's four losses on frame features (N, T, Dv); returns (loss, {part: accuracy}).

    Accuracies: ``present`` over all (cell, shape) pairs, and also ``present_pos`` where an object is;
    ``colour`` / ``size`` where the shape is present; ``room`` per frame."""
    dev = feats.device
    lg = model.reader.logits(feats)
    y = {k: v.to(dev) for k, v in labels.items()}
    present = lg["present"].float()
    losses = [F.binary_cross_entropy_with_logits(present, y["present"], pos_weight=torch.tensor(4.0, device=dev))]
    acc = {"present": float(((present > 0).float() == y["present"]).float().mean())}
    pos = y["present"] > 0
    if pos.any():
        acc["present_pos"] = float((present[pos] > 0).float().mean())
    for k in ("colour", "size"):
        logits, target = lg[k].float().flatten(0, 2), y[k].flatten()
        keep = target != IGNORE
        if keep.any():
            losses.append(F.cross_entropy(logits[keep], target[keep]))
            acc[k] = float((logits[keep].argmax(-1) == target[keep]).float().mean())
    if "room" in lg:
        losses.append(F.cross_entropy(lg["room"].float(), y["room"]))
        acc["room"] = float((lg["room"].argmax(-1) == y["room"]).float().mean())
    return torch.stack(losses).mean(), acc


def sample_rare_frames(rng: np.random.Generator, n: int, words: dict, grid: int, still_fraction: float = 0.1):
    """``n`` (previous frame, frame) pairs for the rare-shape detector: from needle episodes, one frame
    that shows the needle and one that does not, and ``still_fraction`` still chat images (never a
    needle). Labels: the cell labels of :func:`cell_labels` plus ``shown`` (0: none, else 1 + the
    needle's index among ``frames.rare``), ``colour_shown`` / ``size_shown`` (the needle's, or IGNORE)."""
    from mmlc.train.examples import training_world

    rare = [w for w in words["shapes"] if w in sw.NEEDLE_SHAPES]
    prevs, curs, labels = [], [], []

    def add(prev, cur, state, size):
        lab = cell_labels(state, words, grid, size)
        nd = state.get("needle")
        lab["shown"] = np.int64(1 + rare.index(nd["shape"]) if nd else 0)
        lab["colour_shown"] = np.int64(words["colours"].index(nd["colour"]) if nd else IGNORE)
        lab["size_shown"] = np.int64(words["sizes"].index(nd["size"]) if nd else IGNORE)
        prevs.append(prev)
        curs.append(cur)
        labels.append(lab)

    while len(curs) < n:
        if rng.random() < still_fraction:
            mi = sw.generate_multi_image(int(rng.integers(0, 2**31 - 1)), config=sw.WorldConfig())
            for img, state in zip(mi.images, mi.states):
                add(img, img, state, mi.config.size)
            continue
        ep = sw.generate_episode(int(rng.integers(0, 2**31 - 1)), replace(training_world(rng, 60.0), needle=True))
        shown = [i for i in range(1, ep.n_frames) if ep.states[i].get("needle")]
        free = [i for i in range(1, ep.n_frames) if not ep.states[i].get("needle")]
        for i in (int(rng.choice(shown)), int(rng.choice(free))):
            add(ep.frame(i - 1), ep.frame(i), ep.states[i], ep.config.size)
    return _stacked(prevs[:n], curs[:n], labels[:n])


def rare_loss(model, feats: torch.Tensor, labels: dict[str, torch.Tensor]):
    """The rare-shape detector's loss on frame features (N, T, Dv); returns (loss, {part: accuracy}).

    Per frame (multiple-instance: the frame is positive when one cell is): cross-entropy of
    [0, max over cells of each rare shape's margin] against ``shown``; the needle's colour and size at
    the cell most sure of a rare shape; and per cell a plain (unweighted) binary cross-entropy of each
    rare shape's presence against the cell labels, so that the tags sit on the needle's cells.
    Accuracies: ``frame`` (the frame's call), ``false_positive`` (needle-free frames called a needle),
    ``recall`` (frames showing one, called right), ``colour`` / ``size`` where shown."""
    dev = feats.device
    reader = model.reader
    y = {k: v.to(dev) for k, v in labels.items()}
    present, colour, size = reader.rare(feats[:, int(reader.pooled):].float())      # (N, G, R), (N, G, C/Z)
    best = present.amax(1)                                                           # (N, R)
    frame_logits = torch.cat([torch.zeros_like(best[:, :1]), best], -1)
    losses = [F.cross_entropy(frame_logits, y["shown"]),
              F.binary_cross_entropy_with_logits(present, y["present"][..., reader.rare_ids])]
    where = present.amax(-1).argmax(1)                                               # (N,)
    rows = torch.arange(len(where), device=dev)
    acc = {}
    call = frame_logits.argmax(-1)
    acc["frame"] = float((call == y["shown"]).float().mean())
    free, shown = y["shown"] == 0, y["shown"] > 0
    if free.any():
        acc["false_positive"] = float((call[free] > 0).float().mean())
    if shown.any():
        acc["recall"] = float((call[shown] == y["shown"][shown]).float().mean())
    for k, lg in (("colour", colour), ("size", size)):
        target = y[f"{k}_shown"]
        keep = target != IGNORE
        if keep.any():
            at = lg[rows, where]
            losses.append(F.cross_entropy(at[keep], target[keep]))
            acc[k] = float((at[keep].argmax(-1) == target[keep]).float().mean())
    return torch.stack(losses).sum(), acc


def enable_rare(model, rare: list[str] | None = None) -> bool:
    """Give ``model``'s reader a freshly initialised rare-shape detector for ``rare`` (default: the
    needle's shapes; config ``frames.rare``) unless it has one; True if new."""
    if model.reader is None:
        from mmlc.errors import ConfigError
        raise ConfigError("a rare-shape detector is a head of the word-tag reader: run a 'reader' stage first")
    if model.reader.rare is not None:
        return False
    fc = model.config.frames
    fc.rare = list(rare or [w for w in fc.words["shapes"] if w in sw.NEEDLE_SHAPES])
    model.reader.add_rare(fc.rare, model.config.vision.hidden_size, fc.reader_hidden)
    model.reader.to(model.device)
    return True


def enable_reader(model, words: dict | None = None) -> bool:
    """Give ``model`` a freshly initialised reader (config ``frames.words``) unless it has one; True if new."""
    if model.reader is not None:
        return False
    from mmlc.models.reader import CellReader

    model.config.frames.words = words or world_words()
    model.reader = CellReader.for_config(model.config).to(model.device)
    return True
