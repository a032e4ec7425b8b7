"""Stage 0 of the tiny recipe: teach the vision tower to see ShapeWorld, with auxiliary heads.

A real model starts from a pretrained tower (SigLIP) that already sees objects, colours and motion;
mmlc-tiny has none, and TRIALS.md showed that the LIVE loss alone on whole streams grounds nothing.
So the tower first learns, from simulator labels and through the very frame tokens the LM will read
(pooled + grid, after pooling), what a frame shows and what changed since the previous frame:

- the room, and the previous frame's room (a cut);
- per shape: its colour now and in the previous frame (absent is a class: appear, leave, turn),
  its size, and its motion between the two frames (none / left / right / up / down);
- the number of objects; the needle's shape and colour.

Global heads alone did not teach a tower from scratch which shape wears which colour (three towers
stayed at chance for 300-700 steps while room and count were learned). Dense heads fix that: a 1x1
convolution over the tower's feature map predicts, at every cell, the shape, colour and motion of the
object covering it now, and the shape and colour of the one covering it in the previous frame (a
segmentation-like signal, as detection backbones get).

The heads are thrown away afterwards; only the tower is kept. Batches are half frames where
something moves (motion is rare otherwise, and TRIALS.md found balance is what made it learnable).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmlc.data import shapeworld as sw

DIRECTIONS = ("none", "left", "right", "up", "down")
MOTION_WEIGHT = 4.0  # motion heads count 4x in the mean: without it motion stayed at chance for 900 steps


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


def dense_classes(world: sw.WorldConfig) -> dict[str, int]:
    n_shape = 1 + len(world.shapes) + len(world.needle_shapes)
    n_col = 1 + len(world.colours)
    return {"shape": n_shape, "colour": n_col, "motion": len(DIRECTIONS), "prev_shape": n_shape, "prev_colour": n_col}


def dense_labels(prev: dict, cur: dict, world: sw.WorldConfig, side: int) -> dict[str, np.ndarray]:
    """Per-cell labels (side, side) of what covers each cell's centre now and in the previous frame."""
    shapes = list(world.shapes) + list(world.needle_shapes)
    colours = list(world.colours)
    centres = (np.arange(side) + 0.5) * world.size / side
    cy, cx = np.meshgrid(centres, centres, indexing="ij")
    out = {k: np.zeros((side, side), np.int64) for k in dense_classes(world)}
    before = {o["shape"]: o for o in prev["objects"]} if prev["scene"] == cur["scene"] else {}

    def paint(state: dict, shape_key: str, colour_key: str, with_motion: bool) -> None:
        objs = list(state["objects"]) + ([state["needle"]] if state.get("needle") else [])
        for o in objs:
            r = sw.object_radius(o.get("size", "small"), world.size)
            inside = (cx - o["x"]) ** 2 + (cy - o["y"]) ** 2 <= (0.85 * r) ** 2
            if not inside.any():  # a small object between cell centres: mark its nearest cell
                inside = np.zeros_like(inside)
                inside[min(int(o["y"] * side / world.size), side - 1), min(int(o["x"] * side / world.size), side - 1)] = True
            out[shape_key][inside] = 1 + shapes.index(o["shape"])
            out[colour_key][inside] = 1 + colours.index(o["colour"])
            if with_motion and o["shape"] in world.shapes:
                out["motion"][inside] = DIRECTIONS.index(_motion(before.get(o["shape"]), o))

    if prev["scene"] == cur["scene"]:
        paint(prev, "prev_shape", "prev_colour", False)
        # motion on the union of where a moving object was and is: leading and trailing edges both show it
        now = {o["shape"]: o for o in cur["objects"]}
        for shape, p in before.items():
            if shape in now and _motion(p, now[shape]) != "none":
                r = sw.object_radius(p.get("size", "small"), world.size)
                was = (cx - p["x"]) ** 2 + (cy - p["y"]) ** 2 <= (0.85 * r) ** 2
                out["motion"][was] = DIRECTIONS.index(_motion(p, now[shape]))
    paint(cur, "shape", "colour", True)
    return out


class AuxHeads(nn.Module):
    """Global linear heads over the flattened frame tokens (T x Dv) and dense 1x1-conv heads over the map."""

    def __init__(self, in_features: int, classes: dict[str, int], map_channels: int = 0,
                 dense: dict[str, int] | None = None):
        super().__init__()
        self.classes = classes
        self.trunk = nn.Sequential(nn.LayerNorm(in_features), nn.Linear(in_features, 256), nn.GELU())
        self.heads = nn.ModuleDict({k: nn.Linear(256, n) for k, n in classes.items()})
        self.dense = nn.ModuleDict({k: nn.Conv2d(map_channels, n, 1) for k, n in (dense or {}).items()})

    def forward(self, features: torch.Tensor, maps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h = self.trunk(features.flatten(1))
        out = {k: head(h) for k, head in self.heads.items()}
        if maps is not None:
            out.update({f"dense_{k}": head(maps) for k, head in self.dense.items()})
        return out


def make_heads(model, world: sw.WorldConfig | None = None) -> AuxHeads:
    world = world or sw.WorldConfig()
    width = model.config.vision.hidden_size
    return AuxHeads(width * model.config.frames.tokens_per_frame, attribute_classes(world), width, dense_classes(world))


def sample_pairs(rng: np.random.Generator, n: int, world_for, moving_fraction: float = 0.5, dense_side: int = 0,
                 needle_fraction: float = 0.15):
    """``n`` (previous frame, frame, labels) triples from fresh episodes, about half with motion.

    A share ``needle_fraction`` of the episodes drawn is given a needle and gives two pairs from frames
    that show it (other episodes give four pairs): 0.15 puts the needle in ~8% of pairs. The needle is
    shown for 3 frames of one episode in four, so frames drawn at random hold it 0.4% of the time: the
    first mmlc-tiny tower was never taught its colour (its needle heads scored the "no needle" rate,
    0.996, while NIAVH answers named the wrong colour even with the needle in view).
    ``dense_side`` > 0 adds per-cell labels at that resolution (the tower's feature map side).
    """
    prevs, curs, labels = [], [], []
    while len(curs) < n:
        world = world_for(rng)
        with_needle = rng.random() < needle_fraction
        if with_needle:
            world = replace(world, needle=True)
        ep = sw.generate_episode(int(rng.integers(0, 2**31 - 1)), world)
        if with_needle:
            shown = [i for i in range(1, ep.n_frames) if ep.states[i].get("needle")]
            pick = [int(rng.choice(shown)) for _ in range(2)]
        else:
            moving = [i for i in range(1, ep.n_frames) if any(o.get("moving") for o in ep.states[i]["objects"])]
            still = [i for i in range(1, ep.n_frames) if i not in set(moving)]
            pick = []
            for _ in range(4):
                pool = moving if (moving and rng.random() < moving_fraction) or not still else still
                i = int(rng.choice(pool))
                pick.append(0 if rng.random() < 0.1 else i)  # frame 0 sees itself as its previous frame
        for i in pick:
            j = max(i - 1, 0)
            prevs.append(ep.frame(j))
            curs.append(ep.frame(i))
            lab = frame_labels(ep.states[j], ep.states[i], ep.config)
            if dense_side:
                lab.update({f"dense_{k}": v for k, v in dense_labels(ep.states[j], ep.states[i], ep.config,
                                                                    dense_side).items()})
            labels.append(lab)
            if len(curs) == n:
                break
    keys = labels[0].keys()
    return np.stack(prevs), np.stack(curs), {k: torch.as_tensor(np.stack([lab[k] for lab in labels])) for k in keys}


def pair_pixels(model, prevs: np.ndarray, curs: np.ndarray) -> torch.Tensor:
    """The tower's input for frames ``curs`` (N, H, W, 3) that are not consecutive, each with its own
    previous frame from ``prevs`` (the prev_frame channels; ignored when the tower sees one frame)."""
    cur_px = model.preprocess(torch.from_numpy(np.ascontiguousarray(curs)))[:, :3]
    if model.config.frames.temporal != "prev_frame":
        return cur_px
    return torch.cat([cur_px, model.preprocess(torch.from_numpy(np.ascontiguousarray(prevs)))[:, :3]], dim=1)


def aux_loss(model, heads: AuxHeads, prevs: np.ndarray, curs: np.ndarray, labels: dict[str, torch.Tensor]):
    """Mean cross-entropy over heads; returns (loss, {head: accuracy})."""
    dev = model.device
    maps, pooled = model.vision_maps(pair_pixels(model, prevs, curs))
    logits = heads(model.frame_features(maps, pooled), maps if any(k.startswith("dense_") for k in labels) else None)
    losses, weights, acc = [], [], {}
    for k, lg in logits.items():
        y = labels[k].to(dev)
        if k == "dense_motion":  # moving cells are ~2% of cells: weigh them up
            cw = torch.tensor([1.0] + [10.0] * (lg.shape[1] - 1), device=dev)
            losses.append(F.cross_entropy(lg.float(), y, weight=cw))
        else:
            losses.append(F.cross_entropy(lg.float(), y))
        weights.append(MOTION_WEIGHT if k.endswith("motion") else 1.0)
        hit = lg.argmax(1) == y
        if k.startswith("dense_") or k.startswith("needle_"):
            # accuracy where there is something (an empty cell, or no needle, is the easy majority)
            hit = hit[y > 0] if (y > 0).any() else hit
        acc[k] = float(hit.float().mean())
    w = torch.tensor(weights, device=dev)
    return (torch.stack(losses) * w).sum() / w.sum(), acc


def map_side(model) -> int:
    """Side of the tower's feature map for this model's input size."""
    size = model.config.vision.image_size
    with torch.no_grad():
        dummy = torch.zeros(1, model.config.vision.num_channels, size, size, device=model.device, dtype=model.dtype)
        return int(model.vision_maps(dummy)[0].shape[-1])
