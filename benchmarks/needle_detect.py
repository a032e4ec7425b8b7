"""Can the needle be *detected* frame by frame? Fresh classifiers on what mmlc-tiny sees, and on pixels.

NIAVH needs a brief needle to be told apart from the 48-64 needle-free frames of its scene: with a
false-positive rate f per frame, a 48-frame scene holds a false needle with probability
1 - (1 - f)^48 (f = 0.5% gives 21%). ``needle_probe.py`` showed that the tower's token *at the needle*
holds its colour and shape; this measures detection, the harder question. On ``N`` frames of needle
episodes (half of them showing the needle; training frames and held-out frames from separate seeds)
it trains, for the frame's label (no needle / cross / diamond) and the needle's colour:

- ``tokens``: an MLP per frame token (the 1 + 4x4 features the LM and the reader read), max over tokens;
- ``map``: the same MLP per cell of the tower's 8x8 feature map (before the 4x4 pooling);
- ``reader``: no training, the shipped reader's own presence of the needle shapes (max over cells > 0.5);
- ``pixels``: a small fresh CNN (4 strided convolutions, 110k parameters) on the frame and its previous
  frame, max over its 8x8 output cells, to tell whether the frames themselves allow detection.

It prints, per classifier, the false-positive rate on held-out needle-free frames, the recall on
frames that show the needle (by the needle's size), the colour accuracy where it is shown, and the
implied share of 48-frame needle-free scenes with a false needle.

    python benchmarks/needle_detect.py [MODEL] [N_TRAIN] [STEPS]

mmlc-tiny of 23 stages, 8,000 training and 2,000 held-out frames, 1,500 steps (README, Memory and NIAVH):

| classifier | false positives | 48-frame scenes with a false needle | recall (small / large) | colour |
| --- | --- | --- | --- | --- |
| tokens (1 + 4x4) | 0.008 | 0.32 | 0.969 (0.975 / 0.963) | 0.975 |
| map (8x8)        | 0.005 | 0.21 | 0.981 (1.000 / 0.963) | 0.980 |
| reader (shipped) | 0.094 | 0.99 | 0.800 (0.724 / 0.872) | - |
| pixels (fresh CNN, 18 minutes) | 0.021 | 0.64 | 0.139 | 0.525 |

So the frame tokens hold the needle well enough to detect it; the shipped reader, trained per cell with
a positive weight on every object, does not; a CNN from scratch needs far more than 1,500 steps. The
tokens row is the design of ``mmlc.models.reader.RareHead`` (recipe stage ``rare``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import mmlc
from mmlc.data import shapeworld as sw
from mmlc.models.reader import RareHead
from mmlc.train.examples import training_world
from mmlc.train.vision_aux import pair_pixels


def frames(n: int, seed: int):
    """``n`` (previous, frame) pairs from needle episodes, half of them showing the needle, and per
    frame (label 0 none / 1 + needle shape index, colour index or -1, size 'small'/'large'/'')."""
    rng = np.random.default_rng(seed)
    prevs, curs, label, colour, size = [], [], [], [], []
    while len(curs) < n:
        ep = sw.generate_episode(int(rng.integers(0, 2**31 - 1)), replace(training_world(rng, 60.0), needle=True))
        shown = [i for i in range(1, ep.n_frames) if ep.states[i].get("needle")]
        free = [i for i in range(1, ep.n_frames) if not ep.states[i].get("needle")]
        for i in [int(rng.choice(shown)), int(rng.choice(free))]:
            prevs.append(ep.frame(i - 1))
            curs.append(ep.frame(i))
            nd = ep.states[i].get("needle")
            label.append(1 + list(sw.NEEDLE_SHAPES).index(nd["shape"]) if nd else 0)
            colour.append(list(sw.COLOURS).index(nd["colour"]) if nd else -1)
            size.append(nd["size"] if nd else "")
    return (np.stack(prevs[:n]), np.stack(curs[:n]), torch.tensor(label[:n]), torch.tensor(colour[:n]),
            np.array(size[:n]))


class CellHead(nn.Module):
    """:class:`mmlc.models.reader.RareHead` per cell; a frame's logits are [0, each shape's best cell's
    margin over 'none'] and its colour is read at the most needle-like cell (as ``rare_loss`` trains it)."""

    def __init__(self, width: int, hidden: int = 128):
        super().__init__()
        self.head = RareHead(width, len(sw.NEEDLE_SHAPES), len(sw.COLOURS), 2, hidden)

    def forward(self, cells: torch.Tensor):  # (N, T, D)
        score, colour, _ = self.head(cells)                             # (N, T, S), (N, T, C)
        best = score.amax(1)                                            # (N, S)
        where = score.amax(-1).argmax(1)                                # the most needle-like cell
        return torch.cat([torch.zeros_like(best[:, :1]), best], -1), colour[torch.arange(len(colour)), where]


class PixelNet(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        layers, c = [], channels
        for w in (32, 64, 64, 64):
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1), nn.GELU()]
            c = w
        self.convs = nn.Sequential(*layers)
        self.head = CellHead(c)

    def forward(self, pixels: torch.Tensor):
        x = self.convs(pixels)                                          # (N, 64, 8, 8) at 128 px
        return self.head(x.flatten(2).transpose(1, 2))


def fit(net: nn.Module, inputs, label, colour, steps: int, batch: int = 64, lr: float = 2e-3, seed: int = 0):
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, len(label), (batch,), generator=g)
        shape, col = net(inputs(idx))
        loss = F.cross_entropy(shape, label[idx])
        shown = colour[idx] >= 0
        if shown.any():
            loss = loss + F.cross_entropy(col[shown], colour[idx][shown])
        opt.zero_grad()
        loss.backward()
        opt.step()
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * (step + 1) / steps))
    return net


def score(pred: torch.Tensor, col_pred: torch.Tensor | None, label, colour, size) -> dict:
    free, shown = label == 0, label > 0
    fp = float((pred[free] > 0).float().mean())
    out = {"false_positive": round(fp, 4), "scene_false_needle_48": round(1 - (1 - fp) ** 48, 3),
           "recall": round(float((pred[shown] == label[shown]).float().mean()), 3)}
    for s in ("small", "large"):
        m = torch.from_numpy(size == s) & shown
        out[f"recall_{s}"] = round(float((pred[m] == label[m]).float().mean()), 3)
    if col_pred is not None:
        out["colour"] = round(float((col_pred[shown] == colour[shown]).float().mean()), 3)
    return out


def main(model_path: str | None = None, n_train: int = 8000, steps: int = 1500) -> dict:
    model = mmlc.load(model_path).eval()
    t0 = time.time()
    train, test = frames(n_train, 1), frames(max(n_train // 4, 400), 2)
    print(f"{n_train} + {len(test[2])} frames in {time.time() - t0:.0f} s", flush=True)

    def tower(data):
        toks, maps = [], []
        with torch.no_grad():
            for a in range(0, len(data[2]), 256):
                px = pair_pixels(model, data[0][a:a + 256], data[1][a:a + 256])
                m, pooled = model.vision_maps(px)
                toks.append(model.frame_features(m, pooled).float())
                maps.append(m.flatten(2).transpose(1, 2).float())
        return torch.cat(toks), torch.cat(maps)

    (tok_tr, map_tr), (tok_te, map_te) = tower(train), tower(test)
    results = {}
    for name, xtr, xte in (("tokens", tok_tr, tok_te), ("map", map_tr, map_te)):
        t0 = time.time()
        net = fit(CellHead(xtr.shape[-1]), lambda i, x=xtr: x[i], train[2], train[3], steps)
        with torch.no_grad():
            shape, col = net(xte)
        results[name] = {**score(shape.argmax(-1), col.argmax(-1), *test[2:]), "seconds": round(time.time() - t0)}
        print(name, results[name], flush=True)
    if model.reader is not None:
        with torch.no_grad():
            p = torch.sigmoid(model.reader.logits(tok_te)["present"].float())      # (N, G, S)
        ids = [model.reader.words["shapes"].index(s) for s in sw.NEEDLE_SHAPES]
        best = p[..., ids].amax(1)                                                 # (N, 2)
        pred = torch.where(best.amax(-1) > 0.5, 1 + best.argmax(-1), torch.zeros(len(best), dtype=torch.long))
        results["reader"] = score(pred, None, *test[2:])
        print("reader", results["reader"], flush=True)
    px_tr = lambda i: pair_pixels(model, train[0][i.numpy()], train[1][i.numpy()]).float()  # noqa: E731
    t0 = time.time()
    net = fit(PixelNet(px_tr(torch.arange(1)).shape[1]), px_tr, train[2], train[3], steps)
    with torch.no_grad():
        outs = [net(pair_pixels(model, test[0][a:a + 256], test[1][a:a + 256]).float()) for a in range(0, len(test[2]), 256)]
    shape, col = torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
    results["pixels"] = {**score(shape.argmax(-1), col.argmax(-1), *test[2:]), "seconds": round(time.time() - t0)}
    print("pixels", results["pixels"], flush=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else None,
         int(sys.argv[2]) if len(sys.argv) > 2 else 8000, int(sys.argv[3]) if len(sys.argv) > 3 else 1500)
