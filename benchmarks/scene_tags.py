"""Does a closed scene's memory tag hold the needle? ``CellReader.scene_tags`` on held-out scenes.

For ``N`` held-out one-scene 24 s episodes (half of them with a 1.5 s needle at a random time), the
reader reads every frame and the scene's tags are built as the session builds them when it folds the
scene (memory.tags): per shape, "seen" is the max over consecutive frame pairs of the lower of the two
frames' presence, and its colour is read by presence and recency. Printed: the share of needle-free
scenes whose tags hold a needle shape (seen > 0.5), the share of needle scenes whose tags hold the
right needle shape and no other (and how many miss it), and the needle's colour read from the tag (the argmax colour).

    python benchmarks/scene_tags.py [MODEL] [N]
"""

from __future__ import annotations

import sys

import numpy as np
import torch

import mmlc
from mmlc.data import shapeworld as sw


def main(model_path: str | None = None, n: int = 100, first_seed: int = 9000) -> dict:
    model = mmlc.load(model_path).eval()
    rdr = model.reader
    if rdr is None:
        raise SystemExit(f"{model_path or 'mmlc-tiny'} has no word-tag reader")
    shapes, colours = rdr.words["shapes"], rdr.words["colours"]
    rare = [shapes.index(s) for s in sw.NEEDLE_SHAPES]
    false, hit, colour_ok, n_free, n_needle, missed, seen_right = 0, 0, 0, 0, 0, 0, []
    for seed in range(first_seed, first_seed + n):
        needle = seed % 2 == 0
        ep = sw.generate_episode(seed, sw.WorldConfig(duration=24.0, fps=2.0, needle=needle, min_scenes=1, max_scenes=1))
        with torch.no_grad():
            feats = model.vision_features(model.preprocess([ep.frame(i) for i in range(ep.n_frames)]))
            words = rdr.scene_words(feats)                                         # what scene_tags embeds
        seen = words["seen"]
        called = [s for s in rare if seen[s] > 0.5]
        if not needle:
            n_free += 1
            false += bool(called)
            continue
        n_needle += 1
        nd = ep.truth()["needles"][0]
        right = shapes.index(nd["shape"])
        hit += called == [right]
        missed += right not in called
        seen_right.append(float(seen[right]))
        colour_ok += colours[int(words["colour"][right].argmax())] == nd["colour"]
    out = {"scenes_without_needle": n_free, "false_needle": round(false / max(n_free, 1), 3),
           "scenes_with_needle": n_needle, "needle_kept": round(hit / max(n_needle, 1), 3),
           "needle_missed": round(missed / max(n_needle, 1), 3),
           "needle_seen_median": round(float(np.median(seen_right)), 3) if seen_right else None,
           "needle_colour": round(colour_ok / max(n_needle, 1), 3)}
    print(out)
    return out


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else None, int(sys.argv[2]) if len(sys.argv) > 2 else 100)
