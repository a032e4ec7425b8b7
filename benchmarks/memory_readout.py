"""Does the LM read the memory? Teacher-forced answer accuracy by question kind on held-out memory streams.

Builds ``n`` memory-stage examples (``mmlc.train.examples.memory_stream_example``: earlier scenes as
memory blocks, the current scene streamed, questions about the needle and the previous room) from a
held-out seed and reports, per kind (narration, state, memory = previous room/objects, needle), the
fraction of answers whose every token the model predicts right with the true prefix.

    python benchmarks/memory_readout.py [MODEL_DIR_OR_WEIGHTS] [N]

Default: the embedded mmlc-tiny, 40 examples (about a minute on 2 cores). Measured for the memory
stages of the tiny recipe (README, Memory and NIAVH): needle 0.04 / 0.08 / 0.08 and previous
room/objects 0.25 / 0.42 / 0.20 after the memory / memalign / long stages; the shipped weights
(after refresh): needle 0.08, previous room/objects 0.38, state 0.85, narration 0.88.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

import mmlc
from mmlc.models.layout import TEXT, Memory, Question, Reply
from mmlc.train import examples as ex
from mmlc.train.trainer import collate, lm_step


def main(argv: list[str]) -> dict:
    source = argv[0] if argv and argv[0] else None
    n = int(argv[1]) if len(argv) > 1 else 40
    if source and Path(source).is_file():   # a bare weights file of the tiny preset (a training checkpoint)
        from mmlc.models.loading import load_weights
        model = mmlc.load("tiny", init="random")
        load_weights(model, Path(source), allow_missing=("bridge.", "memory_offset"))
    else:
        model = mmlc.load(source)
    model.eval()
    rng = np.random.default_rng(123456)
    stats: dict[str, list[int]] = {}
    for _ in range(n):
        e = ex.memory_stream_example(rng)
        batch = collate(model, [e])
        with torch.no_grad():
            _, logits = lm_step(model, batch, full_logits=True)
        pred, labels, kinds = logits[0].argmax(-1), batch["labels"][0], batch["kinds"][0]
        spans, ok = [], True
        for pos in range(labels.shape[0]):
            if kinds[pos] == TEXT:
                ok &= int(pred[pos]) == int(labels[pos])
                if int(labels[pos]) == model.layout.end_id:
                    spans.append(ok)
                    ok = True
        said = [i for i in e.items if isinstance(i, (Reply, Question)) and not isinstance(i, Memory)]
        for item, right in zip(said, spans):
            kind = ("narration" if isinstance(item, Reply) else "needle" if "rare" in item.text
                    else "memory" if "previous" in item.text or "before" in item.text else "state")
            c = stats.setdefault(kind, [0, 0])
            c[0] += int(right)
            c[1] += 1
    report = {k: {"accuracy": round(v[0] / v[1], 3), "n": v[1]} for k, v in sorted(stats.items())}
    print(report)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
