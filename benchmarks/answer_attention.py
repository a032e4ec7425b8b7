"""Does the answer to "what colour is the square?" read the square, or any object? Teacher-forced.

For ``N`` held-out 10-30 frame ShapeWorld crops (no narration), one question about one object of the
last frame (its colour or its size). Reports whether the answer comes out right, and for each given
head ("LAYER.HEAD") its attention, at the positions that predict the answer, on the named object's
cells and on the cells of another object of the same frame (the same measure as the look loss's
mass, ``mmlc.train.look``).

    python benchmarks/answer_attention.py [MODEL] [N] [HEADS]

HEADS default: 3.2 (the head the look stages teach to read answers). A head given as ``read:L.H``
reports, instead of attention, how often what that head alone writes into the logits (its direct
logit attribution, :func:`mmlc.train.look.head_read_logits`) has the right answer word first among
the words of its class (the colours for a colour answer; as the read loss ranks them).

mmlc-tiny after stage 17 (N = 100, frames with two or more objects): colour 17/37 and size 13/29
right, near chance; head 3.2 puts 0.52 of its attention on the named object's cells and 0.50 on
another object's where the colour is right, 0.53 and 0.54 where it is wrong: it reads the frame's
objects, not the one the question names.
"""

from __future__ import annotations

import sys
from collections import defaultdict

import numpy as np
import torch

import mmlc
from mmlc.data import shapeworld as sw
from mmlc.models.layout import TEXT, Frame, Question
from mmlc.train import examples as ex
from mmlc.train.look import parse_heads
from mmlc.train.trainer import collate, lm_step


def main(model_path: str | None = None, n: int = 100, heads: str = "3.2") -> dict:
    model = mmlc.load(model_path).eval()
    cfg = model.config.lm.hf
    specs = parse_heads(heads.split(","), cfg["num_hidden_layers"], cfg["num_attention_heads"])
    rng = np.random.default_rng(4242)
    mass: dict = defaultdict(list)
    counts: dict = defaultdict(lambda: [0, 0])
    for _ in range(n):
        ep = ex.episode(rng, 60.0)
        length = int(rng.integers(10, 31))
        start = int(rng.integers(0, ep.n_frames - length + 1))
        last = start + length - 1
        objects = ep.states[last]["objects"]
        if len(objects) < 2:
            continue
        obj = objects[int(rng.integers(len(objects)))]
        other = next(o for o in objects if o is not obj)
        attr = "colour" if rng.random() < 0.5 else "size"
        question, answer = sw._object_qa(attr, obj)
        frames = np.stack([ep.frame(i) for i in range(start, last + 1)])
        for target, o in (("named", obj), ("other", other)):
            items = [Frame(i) for i in range(length)] + [Question(question, answer, look=[(length - 1, sw.object_box(o, ep.config.size))])]
            batch = collate(model, [ex.Example(items, frames, ep.frame(max(start - 1, 0)))], look_kinds={k for k, _, _ in specs})
            with torch.no_grad():
                parts, logits = lm_step(model, batch, look_heads=specs, look_weight=1.0)
            keep = batch["labels"] >= 0
            text = batch["kinds"][keep] == TEXT
            if target == "named":   # the same question and answer in both passes; only the look differs
                right = bool((logits[text].argmax(-1) == batch["labels"][keep][text]).all())
            for head, (m, _) in parts["look_heads_mass"].items():
                mass[(attr, "right" if right else "wrong", head, target)].append(m)
        counts[attr][0] += int(right)
        counts[attr][1] += 1
    out = {"accuracy": {a: f"{r}/{t}" for a, (r, t) in counts.items()},
           "mass": {" ".join(k): round(float(np.mean(v)), 3) for k, v in sorted(mass.items())}}
    print(out)
    return out


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0] if a and a[0] else None, int(a[1]) if len(a) > 1 else 100, a[2] if len(a) > 2 else "3.2")
