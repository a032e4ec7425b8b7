"""Does a frame token keep which shape wears which colour when two objects share its cell?

For every object of ``N`` held-out 60 s ShapeWorld episodes (every 4th frame) whose shape is unique
in its frame, take the frame token of the 4x4 cell that holds its centre, as mmlc-tiny's LM reads it
(the mean of a 2x2 block of the tower's 8x8 map), and the four map cells of that block stacked. A
small MLP probe gets the token and the shape asked about (one-hot) and predicts the object's colour
(70/30 split). The accuracy is split by whether the object's extent touches a 4x4 cell that another
object also touches (``grid_binding.py``'s "shared").

    python benchmarks/binding_probe.py [MODEL] [N]

mmlc-tiny after stage 17 (N = 60, 3,686 objects, 1,996 of them sharing a cell): colour 0.989 from
the token (0.991 shared, 0.987 alone) and 0.984 from the stacked map cells. The LM answers the same
question 6 of 22 times where the shape shares a cell (23 of 30 alone): the binding is in the frame
token, and the LM does not read it out.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F

import mmlc
from mmlc.data import shapeworld as sw
from grid_binding import cells
from tower_probe import frame_pixels


def features(model, n_episodes: int, first_seed: int = 3000):
    colours = list(sw.COLOURS)
    token, stacked, asked, colour, shared = [], [], [], [], []
    for seed in range(first_seed, first_seed + n_episodes):
        ep = sw.generate_episode(seed, sw.WorldConfig(duration=60.0, fps=2.0))
        idx = list(range(1, ep.n_frames, 4))
        with torch.no_grad():
            maps, _ = model.vision_maps(frame_pixels(model, ep, idx))
        s, side = ep.config.size, maps.shape[-1] // 4
        for k, i in enumerate(idx):
            objects = ep.states[i]["objects"]
            for o in objects:
                if sum(p["shape"] == o["shape"] for p in objects) != 1:
                    continue
                own = cells(o, s, 4)
                cx, cy = min(int(o["x"] / s * 4), 3), min(int(o["y"] / s * 4), 3)
                block = maps[k, :, side * cy:side * (cy + 1), side * cx:side * (cx + 1)].flatten(1).T  # (side^2, Dv)
                token.append(block.mean(0).float().numpy())
                stacked.append(block.flatten().float().numpy())
                asked.append(sw.SHAPES.index(o["shape"]))
                colour.append(colours.index(o["colour"]))
                shared.append(any(cells(p, s, 4) & own for p in objects if p is not o))
    return [np.array(v) for v in (token, stacked, asked, colour, shared)], len(colours)


def probe(x: np.ndarray, asked: np.ndarray, y: np.ndarray, shared: np.ndarray, classes: int) -> dict:
    torch.manual_seed(0)
    train = np.arange(len(y)) < int(0.7 * len(y))
    xt = torch.tensor(x, dtype=torch.float32)
    xt = (xt - xt[train].mean(0)) / (xt[train].std(0) + 1e-5)
    xt = torch.cat([xt, 3 * F.one_hot(torch.tensor(asked), len(sw.SHAPES)).float()], 1)
    yt = torch.tensor(y)
    net = torch.nn.Sequential(torch.nn.Linear(xt.shape[1], 256), torch.nn.GELU(), torch.nn.Linear(256, classes))
    opt = torch.optim.Adam(net.parameters(), 3e-3, weight_decay=1e-4)
    for _ in range(600):
        opt.zero_grad()
        F.cross_entropy(net(xt[train]), yt[train]).backward()
        opt.step()
    with torch.no_grad():
        right = (net(xt[~train]).argmax(1) == yt[~train]).numpy()
    s = shared[~train]
    return {"all": round(float(right.mean()), 3), "shared": round(float(right[s].mean()), 3),
            "alone": round(float(right[~s].mean()), 3), "held_out": int(len(right)), "held_out_shared": int(s.sum())}


def main(model_path: str | None = None, n_episodes: int = 60) -> dict:
    model = mmlc.load(model_path).eval()
    (token, stacked, asked, colour, shared), n_colours = features(model, n_episodes)
    out = {"objects": int(len(colour)), "shared": int(shared.sum()),
           "token": probe(token, asked, colour, shared, n_colours),
           "stacked_map_cells": probe(stacked, asked, colour, shared, n_colours)}
    print(out)
    return out


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else None, int(sys.argv[2]) if len(sys.argv) > 2 else 60)
