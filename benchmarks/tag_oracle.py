"""Do the word tags alone answer "what colour / how big is the X?"? The reader, no LM.

For frames with two or more objects of held-out 60 s ShapeWorld episodes (one random frame each),
every object is asked about: its colour (and size) is read from the reader's logits as the LM could
read them, the colour distribution of every cell weighted by the named shape's presence there.
"per shape" uses the reader's colour of that shape in each cell; "bag" the cell's tag as the LM gets
it, the sum over all shapes present (binding left to the weights).

"one head" asks whether the frame tokens as the LM gets them (the tags x3, and the connector's
output beside them) let one sharp attention head answer: the query is the question's E[" square"], keys
and values the tokens themselves (identity projections), attention softmax(beta * q.k), and the answer
the colour (size) word with the largest coefficient when the attended vector is written as a linear
mix of the shape, colour and size embeddings (a readout an attention head's output map can learn).
It is run for both ``frames.tag_mode``s, "cell" (a bag of every shape's words) and "object".

    python benchmarks/tag_oracle.py [MODEL] [N]

The reader of recipe tiny's stage 18 (N = 200, 328 objects in frames with two or more): per shape
colour 325/328, size 328/328; bag colour 323/328, size 325/328: the tags carry the answer. One head,
beta 3: colour 245/328 from cell tags, **325/328** from object tags (with the connector beside them
227 and 280), size 277 and 327/328 (278 and 312): bound per object, reading the named object's colour
is a single attention lookup; bound per cell it is not, whatever the sharpness.
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
    table = model.lm.get_input_embeddings().weight.detach()
    ids = model.reader.word_ids(model.tokenizer)
    words_matrix = torch.cat([table[ids[k]] for k in ("shapes", "colours", "sizes")]).T      # (D, S+C+Z)
    readout = torch.linalg.pinv(words_matrix)
    n_s, n_c = len(words["shapes"]), len(words["colours"])
    part = {"colour": slice(n_s, n_s + n_c), "size": slice(n_s + n_c, None)}
    hits: dict[str, list[int]] = {}
    for _ in range(n):
        ep = ex.episode(rng, 60.0)
        i = int(rng.integers(1, ep.n_frames))
        objects = ep.states[i]["objects"]
        if len(objects) < 2:
            continue
        with torch.no_grad():
            feats = model.vision_features(pair_pixels(model, ep.frame(i - 1)[None], ep.frame(i)[None]))
            lg = model.reader.logits(feats)
            conn = model.connector(feats)[0, 1:]
            tags = {m: model.reader.tags(feats, table, model.tokenizer, mode=m)[0, 1:] for m in ("cell", "object")}
        present = torch.sigmoid(lg["present"][0])                                   # (G, S)
        for o in objects:
            s = words["shapes"].index(o["shape"])
            for attr, vocab in (("colour", words["colours"]), ("size", words["sizes"])):
                probs = torch.softmax(lg[attr][0], -1)                              # (G, S, C)
                per_shape = (present[:, s, None] * probs[:, s]).sum(0)
                bag = (present[:, s, None] * (present[:, :, None] * probs).sum(1)).sum(0)
                scores = {f"per shape {attr}": per_shape, f"bag {attr}": bag}
                q = table[ids["shapes"][s]]
                for mode, tag in tags.items():
                    for with_conn in (False, True):
                        x = 3.0 * tag + (conn if with_conn else 0)
                        for beta in (1.0, 3.0):
                            v = torch.softmax(beta * (x @ q), 0) @ x
                            name = f"one head {attr}, {mode} tags{' + connector' if with_conn else ''}, beta {beta:g}"
                            scores[name] = (readout @ v)[part[attr]]
                for name, dist in scores.items():
                    h = hits.setdefault(name, [0, 0])
                    h[0] += int(vocab[int(dist.argmax())] == o[attr])
                    h[1] += 1
    out = {k: f"{r}/{t}" for k, (r, t) in hits.items()}
    for k, v in out.items():
        print(f"{k:55s} {v}")
    return out


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0] if a and a[0] else None, int(a[1]) if len(a) > 1 else 200)
