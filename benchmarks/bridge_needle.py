"""Can the memory bridge learn to keep a needle? The bridge alone, trained on cached tower features.

The shipped bridge's memory of a scene holds the needle's colour at 0.53 (``needle_probe.py``) though
its input holds it at 0.90. Here only the bridge (from the given model) and a fresh
:class:`~mmlc.train.trainer.MemoryProbe` train, on the frame features of ``N_TRAIN`` generated 60-90 s
episodes (a needle in 80%), folded scene by scene as a session folds them (each episode's spans in
order, with the retrieval cache); the tower runs once per episode (bfloat16) and its features are
kept in memory, so a step (4 episodes) costs the bridge only. Every 100 steps the probe is scored
on 150 held-out episodes; needle heads count only the memories of scenes that showed one.

    python benchmarks/bridge_needle.py [MODEL] [N_TRAIN] [STEPS] [LR] [NEEDLE_WEIGHT]

mmlc-tiny after stage 17, defaults (500, 2500, 2e-3, 5; about 5 minutes caching and 6 training on 2
cores): held-out needle colour 0.5-0.66 from step 800 on (the room 0.99, each shape's colour
0.93-0.98), while the training loss falls to ~0.01: the bridge can learn to keep the needle
but overfits 500 episodes, so it needs fresh data at this scale, not more passes.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

import mmlc
from mmlc.data import shapeworld as sw
from mmlc.models.memory import MemoryState
from mmlc.train import examples as ex
from mmlc.train.trainer import MemoryProbe


def cache(model, seeds) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
    """Per episode: the bridge's input for each scene span, and the probe's targets per span."""
    out = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        ep = sw.generate_episode(seed, sw.WorldConfig(duration=float(rng.choice([60.0, 90.0])),
                                                      needle=bool(rng.random() < 0.8)))
        truth = ep.truth()
        spans = ex.memory_segments(truth)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            pixels = model.preprocess([ep.frame(i) for i in range(ep.n_frames)])   # [frame ; previous]
            feats = model.memory_features(model.frame_features(*model.vision_maps(pixels))).float()
        targets = torch.tensor([[t[k] for k in ex.MEMORY_TARGETS]
                                for t in (ex.memory_targets(ep, truth, a, b) for a, b in spans)])
        out.append(([feats[a:b] for a, b in spans], targets))
    return out


def fold(bridge, episode) -> torch.Tensor:
    state = MemoryState(bridge)
    return torch.cat([state.add_scene(scene) for scene in episode[0]], 0)


def score(bridge, probe, episodes) -> dict:
    bridge.eval()
    right: dict[str, list[int]] = {}
    with torch.no_grad():
        for episode in episodes:
            for name, (a, b) in probe(fold(bridge, episode), episode[1])[1].items():
                r = right.setdefault(name, [0, 0])
                r[0], r[1] = r[0] + a, r[1] + b
    bridge.train()
    return {name: round(a / max(b, 1), 3) for name, (a, b) in right.items()}


def main(model_path: str | None = None, n_train: int = 500, steps: int = 2500, lr: float = 2e-3,
         needle_weight: float = 5.0) -> dict:
    torch.manual_seed(0)
    model = mmlc.load(model_path).eval()
    t0 = time.time()
    train, held_out = cache(model, range(20000, 20000 + n_train)), cache(model, range(30000, 30150))
    print(f"features of {n_train} + 150 episodes cached in {time.time() - t0:.0f} s", flush=True)
    bridge = model.bridge.train()
    for p in bridge.parameters():
        p.requires_grad_(True)
    probe = MemoryProbe(model.config.memory.tokens, model.config.vision.hidden_size)
    probe.needle_weight = needle_weight
    opt = torch.optim.AdamW(list(bridge.parameters()) + list(probe.parameters()), lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(0)
    history = []
    for step in range(steps):
        opt.zero_grad()
        loss = sum(probe(fold(bridge, train[j]), train[j][1])[0] for j in rng.integers(0, len(train), 4)) / 4
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            history.append({"step": step + 1, "loss": round(float(loss.detach()), 3), **score(bridge, probe, held_out)})
            print(history[-1], flush=True)
    return {"n_train": n_train, "history": history}


if __name__ == "__main__":
    a = sys.argv[1:] + [""] * 5
    main(a[0] or None, int(a[1] or 500), int(a[2] or 2500), float(a[3] or 2e-3), float(a[4] or 5.0))
