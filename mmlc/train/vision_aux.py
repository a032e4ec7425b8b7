"""Stage 0 of the tiny recipe: teach the vision tower to see ShapeWorld, with auxiliary heads.

A real model starts from a pretrained tower (SigLIP) that already sees objects, colours and motion;
mmlc-tiny has none, and TRIALS.md showed that the LIVE loss alone on whole streams grounds nothing.
So the tower first learns, from simulator labels and through the very frame tokens the LM will read
(pooled + grid, after pooling), what a frame shows and what changed since the previous frame:

- the room, and the previous frame's room (a cut);
- per shape: its colour now and in the previous frame (absent is a class: appear, leave, turn),
  its size, and its motion between the two frames (none / left / right / up / down);
- the number of objects; the needle's shape and colour.

The heads are thrown away afterwards; only the tower is kept. Batches are half frames where
something moves (motion is rare otherwise, and TRIALS.md found balance is what made it learnable).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmlc.data import shapeworld as sw

DIRECTIONS = ("none", "left", "right", "up", "down")


def attribute_classes(world: sw.WorldConfig) -> dict[str, int]:
    """Name -> number of classes of every auxiliary label."""
    n_col = len(world.colours) + 1  # + absent
    heads = {"room": len(world.rooms), "prev_room": len(world.rooms), "count": world.max_objects + 2,
             "needle_shape": len(world.needle_shapes) + 1, "needle_colour": n_col}
    for shape in world.shapes:
        heads[f"{shape}_colour"] = n_col
        heads[f"{shape}_prev_colour"] = n_col
        heads[f"{shape}_size"] = 3
        heads[f"{shape}_motion"] = len(DIRECTIONS)
    return heads


def frame_labels(prev: dict, cur: dict, world: sw.WorldConfig) -> dict[str, int]:
    """Auxiliary labels of frame ``cur`` given the previous frame's state ``prev``."""
    colours, rooms = list(world.colours), list(world.rooms)
    labels = {"room": rooms.index(cur["room"]), "prev_room": rooms.index(prev["room"]),
              "count": min(len(cur["objects"]), world.max_objects + 1)}
    needle = cur.get("needle")
    labels["needle_shape"] = 0 if not needle else 1 + list(world.needle_shapes).index(needle["shape"])
    labels["needle_colour"] = 0 if not needle else 1 + colours.index(needle["colour"])
    now = {o["shape"]: o for o in cur["objects"]}
    before = {o["shape"]: o for o in prev["objects"]} if prev["scene"] == cur["scene"] else {}
    for shape in world.shapes:
        o, p = now.get(shape), before.get(shape)
        labels[f"{shape}_colour"] = 0 if o is None else 1 + colours.index(o["colour"])
        labels[f"{shape}_prev_colour"] = 0 if p is None else 1 + colours.index(p["colour"])
        labels[f"{shape}_size"] = 0 if o is None else (1 if o["size"] == "small" else 2)
        labels[f"{shape}_motion"] = DIRECTIONS.index(_motion(p, o))
    return labels


def _motion(p: dict | None, o: dict | None) -> str:
    if p is None or o is None:
        return "none"
    dx, dy = o["x"] - p["x"], o["y"] - p["y"]
    if max(abs(dx), abs(dy)) < 0.5:
        return "none"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "up" if dy < 0 else "down"


class AuxHeads(nn.Module):
    """Linear heads over the flattened frame tokens (T x Dv) of the tower."""

    def __init__(self, in_features: int, classes: dict[str, int]):
        super().__init__()
        self.classes = classes
        self.trunk = nn.Sequential(nn.LayerNorm(in_features), nn.Linear(in_features, 256), nn.GELU())
        self.heads = nn.ModuleDict({k: nn.Linear(256, n) for k, n in classes.items()})

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(features.flatten(1))
        return {k: head(h) for k, head in self.heads.items()}


def sample_pairs(rng: np.random.Generator, n: int, world_for, moving_fraction: float = 0.5):
    """``n`` (previous frame, frame, labels) triples from fresh episodes, about half with motion."""
    prevs, curs, labels = [], [], []
    while len(curs) < n:
        ep = sw.generate_episode(int(rng.integers(0, 2**31 - 1)), world_for(rng))
        moving = [i for i in range(1, ep.n_frames) if any(o.get("moving") for o in ep.states[i]["objects"])]
        still = [i for i in range(1, ep.n_frames) if i not in set(moving)]
        for _ in range(8):
            pool = moving if (moving and rng.random() < moving_fraction) or not still else still
            i = int(rng.choice(pool))
            if rng.random() < 0.1:
                i = 0  # the first frame of a stream sees itself as its previous frame
            j = max(i - 1, 0)
            prevs.append(ep.frame(j))
            curs.append(ep.frame(i))
            labels.append(frame_labels(ep.states[j], ep.states[i], ep.config))
            if len(curs) == n:
                break
    keys = labels[0].keys()
    return np.stack(prevs), np.stack(curs), {k: torch.tensor([lab[k] for lab in labels]) for k in keys}


def aux_loss(model, heads: AuxHeads, prevs: np.ndarray, curs: np.ndarray, labels: dict[str, torch.Tensor]):
    """Mean cross-entropy over heads; returns (loss, {head: accuracy})."""
    dev = model.device
    prev_px = model.preprocess(torch.from_numpy(prevs))[:, :3]
    cur_px = model.preprocess(torch.from_numpy(curs))[:, :3]
    pixels = torch.cat([cur_px, prev_px], dim=1) if model.config.frames.temporal == "prev_frame" else cur_px
    logits = heads(model.vision_features(pixels))
    losses, acc = [], {}
    for k, lg in logits.items():
        y = labels[k].to(dev)
        losses.append(F.cross_entropy(lg.float(), y))
        acc[k] = float((lg.argmax(-1) == y).float().mean())
    return torch.stack(losses).mean(), acc
