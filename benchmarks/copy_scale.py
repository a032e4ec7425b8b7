"""How the copy head's scale (frames.copy_scale, mmlc.models.copy) moves teacher-forced needle answers.

On held-out needle examples (the needle in an earlier scene's memory, ``examples.needle_memory_example``,
or in the current frames, ``needle_frames_example``), per answer token of "a yellow diamond.": how often
the model's argmax is the right token, with the copy head set to ``HEAD`` at each scale (0: no copy).
The logits are those of evaluation and sessions (``lm_step(full_logits=True)``).

    python benchmarks/copy_scale.py MODEL [N] [HEAD] [SCALES]

Recipe tiny after stage 26 (then recipe tiny-recall; README, Memory and NIAVH; ``MODEL 20 3.2
0,2,4,8``, head 3.2),
article / colour / shape:

    needle in memory (19 examples)   scale 0: 1.00 / 0.16 / 0.47   scale 2, 4, 8: 1.00 / 0.84 / 1.00
    needle in the frames (20)        scale 0: 1.00 / 0.10 / 0.55   scale 2: 1.00 / 0.95 / 0.95
                                                                   scale 4, 8: 1.00 / 1.00 / 0.95
"""

from __future__ import annotations

import sys

import numpy as np
import torch

import mmlc
from mmlc.data import shapeworld as sw
from mmlc.train import examples as ex
from mmlc.train.trainer import collate, lm_step


def answer_hits(model, e: ex.Example) -> np.ndarray | None:
    """Per token of the needle answer (article, colour, shape, period): 1 where the argmax is right;
    None without a needle question."""
    qs = [it for it in e.items if isinstance(it, ex.Question) and it.text == sw.NEEDLE_QUESTION]
    if not qs:
        return None
    tok = model.tokenizer
    ans = tok(qs[0].answer, add_special_tokens=False)["input_ids"]
    b = collate(model, [e])
    with torch.no_grad():
        _, logits = lm_step(model, b, full_logits=True, tower_dtype="bfloat16")
    lab, pred = b["labels"][0], logits[0].argmax(-1)
    pos = [i for i in range(len(lab) - len(ans)) if lab[i:i + len(ans)].tolist() == ans]
    if not pos:
        return None
    p = pos[-1]
    return (pred[p:p + len(ans)] == lab[p:p + len(ans)]).numpy()[:4].astype(float)


def main(model_path: str, n: int = 25, head: str = "3.2", scales: str = "0,1,2,4,8") -> dict:
    model = mmlc.load(model_path).eval()
    fc = model.config.frames
    out = {}
    for builder in (ex.needle_memory_example, ex.needle_frames_example):
        examples = [builder(np.random.default_rng([777, k])) for k in range(n)]
        for scale in (float(s) for s in scales.split(",")):
            fc.copy_head, fc.copy_scale = (head, scale) if scale > 0 else (None, fc.copy_scale)
            hits = [h for h in (answer_hits(model, e) for e in examples) if h is not None]
            mean = np.mean(hits, 0).round(2).tolist()
            out[(builder.__name__, scale)] = mean
            print(f"{builder.__name__:24s} scale {scale:4g}: n {len(hits)}  article/colour/shape/period {mean}", flush=True)
    return out


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) if i == 0 else a for i, a in enumerate(sys.argv[2:])))
