"""Do the word tags alone answer "what colour / how big is the X?"? The reader, no LM.

For frames with two or more objects of held-out 60 s ShapeWorld episodes (one random frame each),
every object is asked about: its colour (and size) is read from the reader's logits as the LM could
read them, the colour distribution of every cell weighted by the named shape's presence there.
"per shape" uses the reader's colour of that shape in each cell; "bag" the cell's tag as the LM gets
it, the sum over all shapes present (binding left to the weights).

    python benchmarks/tag_oracle.py [MODEL] [N]

mmlc-tiny with its reader (stage 18; N = 200, 328 objects): per shape colour 325/328, size 328/328;
bag colour 323/328, size 325/328: the tags carry the answer.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

import mmlc
from mmlc.train import examples as ex
from mmlc.train.vision_aux import pair_pixels


def main(model_path: str | None = None, n: int = 200) -> dict:
    model = mmlc.load(model_path).eval()
    if model.reader is None:
        raise SystemExit(f"model '{model_path or 'mmlc-tiny'}' has no word-tag reader (config frames.words)")
    words = model.config.frames.words
    rng = np.random.default_rng(4242)
    hits: dict[str, list[int]] = {}
    for _ in range(n):
        ep = ex.episode(rng, 60.0)
        i = int(rng.integers(1, ep.n_frames))
        objects = ep.states[i]["objects"]
        if len(objects) < 2:
            continue
        with torch.no_grad():
            lg = model.reader.logits(model.vision_features(pair_pixels(model, ep.frame(i - 1)[None], ep.frame(i)[None])))
        present = torch.sigmoid(lg["present"][0])                                   # (G, S)
        for o in objects:
            s = words["shapes"].index(o["shape"])
            for attr, vocab in (("colour", words["colours"]), ("size", words["sizes"])):
                probs = torch.softmax(lg[attr][0], -1)                              # (G, S, C)
                per_shape = (present[:, s, None] * probs[:, s]).sum(0)
                bag = (present[:, s, None] * (present[:, :, None] * probs).sum(1)).sum(0)
                for name, dist in ((f"per shape {attr}", per_shape), (f"bag {attr}", bag)):
                    h = hits.setdefault(name, [0, 0])
                    h[0] += int(vocab[int(dist.argmax())] == o[attr])
                    h[1] += 1
    out = {k: f"{r}/{t}" for k, (r, t) in hits.items()}
    print(out)
    return out


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0] if a and a[0] else None, int(a[1]) if len(a) > 1 else 200)
