"""Where is the needle lost? Linear probes for the needle's colour and shape along the memory path.

For ``N`` held-out one-scene 24 s episodes with a needle (1.5 s, at a random time), probes read the
needle's colour and shape from (a) the tower's 4x4 cell token at the needle (what the LM reads in a
frame), (b) the 2x2 cell token (what the memory bridge folds, ``memory.grid = 2``), (c) the frame's
pooled token, and (d) the bridge's memory of the whole scene (16 x 128 values, flattened). Each probe
is a logistic regression trained on the first 70% and scored on the rest (features standardised).

    python benchmarks/needle_probe.py [MODEL] [N]

mmlc-tiny after stage 17 (N = 400; README, Memory and NIAVH): colour 1.00 / 0.90 / 0.67 / 0.53 and
shape 0.99 / 0.94 / 0.89 / 0.63 for (a)-(d), against priors of 0.18 and 0.54: the tower sees the
needle, the bridge drops most of it.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

import mmlc
from mmlc.data import shapeworld as sw
from tower_probe import probe as linear_probe


def main(model_path: str | None = None, n: int = 400, first_seed: int = 7000) -> dict:
    model = mmlc.load(model_path).eval()
    colours, shapes = list(sw.COLOURS), list(sw.NEEDLE_SHAPES)
    rows = {"cell4": [], "cell2": [], "pooled": [], "memory": []}
    colour, shape = [], []
    for seed in range(first_seed, first_seed + n):
        ep = sw.generate_episode(seed, sw.WorldConfig(duration=24.0, fps=2.0, needle=True, min_scenes=1, max_scenes=1))
        needle = ep.truth()["needles"][0]
        shown = [i for i in range(ep.n_frames) if ep.states[i].get("needle")]
        with torch.no_grad():
            pixels = model.preprocess([ep.frame(i) for i in range(ep.n_frames)])   # [frame ; previous]
            maps, pooled = model.vision_maps(pixels)
            memory = model.bridge.fold(model.bridge.initial_memory(1),
                                       model.memory_features(model.frame_features(maps, pooled))[None])
            g4 = model.frame_features(maps, pooled, grid=4)
            g2 = model.frame_features(maps, pooled, grid=2)
        mid = shown[len(shown) // 2]
        x, y = needle["x"] / ep.config.size, needle["y"] / ep.config.size
        rows["cell4"].append(g4[mid, 1 + min(int(y * 4), 3) * 4 + min(int(x * 4), 3)].float().numpy())
        rows["cell2"].append(g2[mid, 1 + min(int(y * 2), 1) * 2 + min(int(x * 2), 1)].float().numpy())
        rows["pooled"].append(g4[mid, 0].float().numpy())
        rows["memory"].append(memory[0].flatten().float().numpy())
        colour.append(colours.index(needle["colour"]))
        shape.append(shapes.index(needle["shape"]))
    colour, shape = np.array(colour), np.array(shape)
    out = {"scenes": n, "colour_prior": round(float(np.bincount(colour).max() / n), 3),
           "shape_prior": round(float(np.bincount(shape).max() / n), 3)}
    for name, xs in rows.items():
        xs = np.array(xs)
        out[name] = {"colour": round(linear_probe(xs, colour, len(colours), steps=300, decay=1e-2), 3),
                     "shape": round(linear_probe(xs, shape, len(shapes), steps=300, decay=1e-2), 3)}
    print(out)
    return out


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else None, int(sys.argv[2]) if len(sys.argv) > 2 else 400)
