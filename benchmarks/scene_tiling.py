"""SceneTiling F1 on ShapeWorld scene cuts (mmlc.streaming.scenes), offline and online.

    python benchmarks/scene_tiling.py                         # 20 held-out seeds from 1_000_000_000
    python benchmarks/scene_tiling.py --seed0 0 --episodes 100 --features pixel
    python benchmarks/scene_tiling.py --features model --model PATH   # any mmlc.load() argument

Each episode lasts 120 s at 2 fps; the truth is the start of every scene after the first (object
events are not cuts). A predicted boundary at frame b is at b / fps seconds; matches are one-to-one
within --tolerance seconds. Prints one JSON object: per feature kind and mode (offline / online),
the micro-averaged precision / recall / F1 over all episodes (tp, fp, fn summed), the mean of
per-episode F1, and "f1_same_frame" (F1 with tolerance 0). "model" features are the pooled token of
``vision_features`` (needs the default model, mmlc/assets/mmlc-tiny, or --model); they are skipped
with a note when no model loads. "mean4x4" (mean colour of a 4x4 grid) is shown for comparison.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from mmlc.data import shapeworld as sw
from mmlc.streaming import scenes as S


def model_features(model, frames: list[np.ndarray]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        px = model.preprocess(frames)
        return model.vision_features(px)[:, 0].float().cpu().numpy()


def score(preds: list[list[int]], truths: list[list[float]], fps: float, tolerance: float) -> dict:
    rs = [S.boundary_f1([b / fps for b in p], t, tolerance) for p, t in zip(preds, truths)]
    tp, fp, fn = (sum(r[k] for r in rs) for k in ("tp", "fp", "fn"))
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    return {"f1": round(2 * p * r / (p + r), 4) if p + r else 0.0, "precision": round(p, 4), "recall": round(r, 4),
            "tp": tp, "fp": fp, "fn": fn, "mean_episode_f1": round(float(np.mean([x["f1"] for x in rs])), 4)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed0", type=int, default=1_000_000_000)
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--features", choices=["pixel", "model", "all"], default="all")
    ap.add_argument("--model", default=None, help="mmlc.load() argument (default: the embedded model)")
    ap.add_argument("--tolerance", type=float, default=1.0)
    ap.add_argument("--alpha", type=float, default=S.DEFAULT_ALPHA)
    ap.add_argument("--min-depth", type=float, default=S.DEFAULT_MIN_DEPTH)
    ap.add_argument("--min-scene", type=int, default=S.DEFAULT_MIN_SCENE)
    ap.add_argument("--lookahead", type=int, default=2)
    args = ap.parse_args(argv)

    kinds = {"pixel": ["histogram", "mean4x4"], "model": ["model"], "all": ["histogram", "mean4x4", "model"]}
    kinds = kinds[args.features]
    model, notes = None, []
    if "model" in kinds:
        try:
            import mmlc

            model = mmlc.load(args.model) if args.model else mmlc.load()
        except Exception as err:  # no trained default yet, or a bad path: report and go on
            notes.append(f"model features skipped: {type(err).__name__}: {err}")
            kinds.remove("model")

    cfg = sw.WorldConfig(duration=args.duration)
    preds = {k: {"offline": [], "online": []} for k in kinds}
    truths, n_scenes = [], []
    for seed in range(args.seed0, args.seed0 + args.episodes):
        ep = sw.generate_episode(seed, cfg)
        truth = ep.truth()
        truths.append([sc["start"] for sc in truth["scenes"][1:]])
        n_scenes.append(len(truth["scenes"]))
        frames = [f for _, f in ep.frames()]
        for kind in kinds:
            if kind == "histogram":
                feats = S.pixel_features(frames)
            elif kind == "mean4x4":
                feats = S.pixel_features(frames, kind="mean", grid=4)
            else:
                feats = model_features(model, frames)
            preds[kind]["offline"].append(S.boundaries(feats, alpha=args.alpha, min_depth=args.min_depth,
                                                       min_scene=args.min_scene))
            tiler = S.OnlineSceneTiler(alpha=args.alpha, min_depth=args.min_depth, min_scene_frames=args.min_scene,
                                       lookahead=args.lookahead)
            preds[kind]["online"].append(tiler.extend(feats) + tiler.flush())
    out = {
        "seeds": [args.seed0, args.seed0 + args.episodes - 1], "duration": args.duration, "fps": cfg.fps,
        "tolerance": args.tolerance, "cuts": sum(map(len, truths)),
        "episodes_by_scene_count": {str(k): n_scenes.count(k) for k in sorted(set(n_scenes))},
        "params": {"alpha": args.alpha, "min_depth": args.min_depth, "min_scene": args.min_scene,
                   "lookahead": args.lookahead, "online_delay_frames": args.lookahead + args.min_scene - 1},
        "results": {k: {mode: {**score(p, truths, cfg.fps, args.tolerance),
                               "f1_same_frame": score(p, truths, cfg.fps, 0.0)["f1"]} for mode, p in v.items()}
                    for k, v in preds.items()},
        "notes": notes,
    }
    json.dump(out, sys.stdout, indent=1)
    print()
    return out


if __name__ == "__main__":
    main()
