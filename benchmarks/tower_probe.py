"""Does the frozen vision tower see an object's size, colour and shape? Linear probes on its features.

For every object of ``N`` held-out 60 s ShapeWorld episodes (every 6th frame), take the tower's
feature at the object's centre: its cell of the 8x8 map, and its cell of the 4x4 average pool (a
frame token of a model with ``frames.grid = 4``). A logistic-regression probe (70/30 split of the
objects) predicts size (small/large), colour and shape from each. High probe accuracy with wrong answers
from the LM means the LM, not vision, is what fails.

    python benchmarks/tower_probe.py [MODEL] [N]

mmlc-tiny's tower (README, Training, stage 13; 40 episodes, 1,619 objects): size 0.99 from the map
cell, 0.96 from the 4x4 token; colour 0.96 / 0.95; shape 0.99 / 0.99 (the same after stage 14, whose
tower is frozen).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F

import mmlc
from mmlc.data import shapeworld as sw
from mmlc.train.vision_aux import pair_pixels


def frame_pixels(model, ep: sw.Episode, idx: list[int]) -> torch.Tensor:
    """The tower's input for frames ``idx`` of ``ep`` (not consecutive): each with its own previous frame."""
    return pair_pixels(model, np.stack([ep.frame(max(i - 1, 0)) for i in idx]), np.stack([ep.frame(i) for i in idx]))


def features(model, n_episodes: int, first_seed: int = 3000):
    colours = list(sw.COLOURS)
    cell8, cell4, size, colour, shape = [], [], [], [], []
    for seed in range(first_seed, first_seed + n_episodes):
        ep = sw.generate_episode(seed, sw.WorldConfig(duration=60.0, fps=2.0))
        idx = list(range(1, ep.n_frames, 6))
        with torch.no_grad():
            maps, pooled = model.vision_maps(frame_pixels(model, ep, idx))
            grid4 = model.frame_features(maps, pooled, grid=4)[:, -16:]   # the 4x4 tokens, row by row
        side, s = maps.shape[-1], ep.config.size
        for k, i in enumerate(idx):
            for o in ep.states[i]["objects"]:
                x, y = o["x"] / s, o["y"] / s
                cell8.append(maps[k, :, min(int(y * side), side - 1), min(int(x * side), side - 1)].float().numpy())
                cell4.append(grid4[k, min(int(y * 4), 3) * 4 + min(int(x * 4), 3)].float().numpy())
                size.append(int(o["size"] == "large"))
                colour.append(colours.index(o["colour"]))
                shape.append(sw.SHAPES.index(o["shape"]))
    return np.array(cell8), np.array(cell4), np.array(size), np.array(colour), len(colours), np.array(shape)


def probe(x: np.ndarray, y: np.ndarray, classes: int, steps: int = 400, decay: float = 1e-4) -> float:
    """Held-out accuracy of a linear probe trained on the first 70% (features standardised)."""
    torch.manual_seed(0)
    train = np.arange(len(y)) < int(0.7 * len(y))
    xt = torch.tensor(x, dtype=torch.float32)
    xt = (xt - xt[train].mean(0)) / (xt[train].std(0) + 1e-5)
    yt = torch.tensor(y, dtype=torch.long)
    lin = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(lin.parameters(), 1e-2, weight_decay=decay)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(lin(xt[train]), yt[train]).backward()
        opt.step()
    return float((lin(xt[~train]).argmax(1) == yt[~train]).float().mean())


def main(model_path: str | None = None, n_episodes: int = 40) -> dict:
    model = mmlc.load(model_path).eval()
    cell8, cell4, size, colour, n_colours, shape = features(model, n_episodes)
    out = {"objects": int(len(size)), "large_share": round(float(size.mean()), 3),
           "size": {"map_cell": round(probe(cell8, size, 2), 3), "grid4_cell": round(probe(cell4, size, 2), 3)},
           "colour": {"map_cell": round(probe(cell8, colour, n_colours), 3),
                      "grid4_cell": round(probe(cell4, colour, n_colours), 3)},
           "shape": {"map_cell": round(probe(cell8, shape, len(sw.SHAPES)), 3),
                     "grid4_cell": round(probe(cell4, shape, len(sw.SHAPES)), 3)}}
    print(out)
    return out


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else None, int(sys.argv[2]) if len(sys.argv) > 2 else 40)
