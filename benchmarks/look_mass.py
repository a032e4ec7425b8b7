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
from mmlc.train.look import AttentionTap, head_attention, parse_heads


@torch.no_grad()
def masses(model, heads: list[tuple[str, int, int]], build, n: int, rng: np.random.Generator) -> dict[str, tuple[float, int]]:
    batch = tr.collate(model, [build(rng) for _ in range(n)], look_kinds={k for k, _, _ in heads})
    feats, image_feats = tr._features(model, batch["pixels"], batch.get("image_rows"))
    rows = batch.get("frame_rows")
    memory = tr.fold_memories(model, feats, batch["memory_spans"])[0] if rows is not None else None
    tokens = tr._row_tokens(model, feats, image_feats, batch.get("image_rows"), rows)
    embeds = model.embed(batch["input_ids"], tokens, memory, batch.get("tags"))
    layers = model.lm.get_decoder().layers
    with AttentionTap(model.lm, list(range(len(layers)))) as tap:
        model.lm.get_decoder()(inputs_embeds=embeds, attention_mask=batch["attention_mask"])
    out = {}
    for kind, layer, head in heads:
        if kind not in batch.get("looks", {}):
            continue
        r, q, keys = batch["looks"][kind]
        hidden, (cos, sin) = tap.inputs[layer]
        p = head_attention(layers[layer].self_attn, hidden, cos, sin, head, r, q, batch["attention_mask"])
        out[f"{kind}@{layer}.{head}"] = (round(float((p * keys).sum(-1).mean()), 3), len(r))
    return out


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
