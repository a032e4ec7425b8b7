"""Where do the addressing loss's heads look? Their attention mass on each kind of look target.

For 8 examples each of dense multi-image dialogues, question-dense stream crops and dense memory
questions (seeds of this script, not training's), one forward; for each kind of look target
(:attr:`mmlc.models.layout.Chunk.looks`: ``answer`` = what an answer is read from, ``name`` = the
image a question's number names, ``obj`` = the cells of the object it names there, ``via`` = that
number token, seen from the answer) the mean
attention mass the given heads put on it, at the positions the loss supervises.

    python benchmarks/look_mass.py [MODEL] [HEADS]      # HEADS default: name:0.1,obj:1.0,via:2.1,3.2

mmlc-tiny after stage 17 (README, Training): chat answer 0.65, name 0.93, obj 0.42, via 0.69; stream
questions' answer 0.84; memory questions' answer 0.53. After stage 15: chat answer 0.37, name 0.92,
via 0.69; stream questions' answer 0.82; memory questions' answer 0.40. The stage-14 model, same heads: 0.04, 0.33, 0.05; 0.23; 0.01.
Uniform attention would put about 0.06 (chat) and 0.08 (stream questions) on the answer targets.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

import mmlc
from mmlc.train import examples as ex
from mmlc.train import trainer as tr
from mmlc.train.look import parse_heads


@torch.no_grad()
def masses(model, heads: list[tuple[str, int, int]], build, n: int, rng: np.random.Generator) -> dict[str, tuple[float, int]]:
    """Per head ``"KIND@LAYER.HEAD"``: its mean mass on its targets and its number of queries, over
    ``n`` examples of ``build`` (the training step's own forward, :func:`mmlc.train.trainer.lm_step`)."""
    batch = tr.collate(model, [build(rng) for _ in range(n)], look_kinds={k for k, _, _ in heads})
    parts, _ = tr.lm_step(model, batch, look_heads=heads, look_weight=1.0)
    return {k: (round(m, 3), c) for k, (m, c) in parts.get("look_heads_mass", {}).items()}


def main() -> None:
    model = mmlc.load(sys.argv[1] if len(sys.argv) > 1 else None)
    model.eval()
    cfg = model.lm.config
    heads = parse_heads((sys.argv[2] if len(sys.argv) > 2 else "name:0.1,obj:1.0,via:2.1,3.2").split(","),
                        cfg.num_hidden_layers, cfg.num_attention_heads)
    rng = np.random.default_rng(11)
    for name, build in (("chat", ex.dense_dialogue_example), ("stream questions", ex.qa_stream_example),
                        ("memory questions", ex.memory_align_example)):
        print(name, {k: f"{m} (n={c})" for k, (m, c) in masses(model, heads, build, 8, rng).items()})


if __name__ == "__main__":
    main()
