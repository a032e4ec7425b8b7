"""Where does the answer look when it names the needle? Attention at the needle answer's colour.

On held-out needle-in-memory examples (``examples.needle_memory_example``, teacher-forced), at the
position that predicts the colour of "a yellow diamond.", every head's attention (``head_attention``
over the taps of one forward): its mass on all memory tokens, on the tag token of the needle's shape
in every block (memory.tags: token 1 + the shape's index), and on that token of the block that holds
the needle (the block whose scene the reader sees the shape in most surely).

    python benchmarks/needle_attention.py MODEL [N]

Recipe tiny's needle stages (then recipe tiny-recall; README, Memory and NIAVH; 21 examples of 25):
head 3.2 after stage 25, memory
0.990 / tag tokens 0.065 / the needle's 0.021 (spread over the memory); after stage 26 0.996 /
0.774 / 0.768 (it finds the needle's tag).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

import mmlc
from mmlc.data import shapeworld as sw
from mmlc.train import examples as ex
from mmlc.train.look import AttentionTap, head_attention
from mmlc.train.trainer import _features, _row_tokens, collate, fold_memories


def masses(model, e: ex.Example) -> dict | None:
    """Per head (layer, head): attention mass at the needle answer's colour on (all memory tokens, the
    needle shape's tag token of every block, that token of the needle's block); None without a needle
    question in ``e``."""
    tok, shapes = model.tokenizer, model.config.frames.words["shapes"]
    qs = [it for it in e.items if isinstance(it, ex.Question) and it.text == sw.NEEDLE_QUESTION]
    if not qs:
        return None
    b = collate(model, [e])
    ans = tok(qs[0].answer, add_special_tokens=False)["input_ids"]
    lab = b["labels"][0]
    pos = [i for i in range(len(lab) - len(ans)) if lab[i:i + len(ans)].tolist() == ans]
    if not pos:
        return None
    si = shapes.index(qs[0].answer.rstrip(".").split()[-1])
    mem = (b["input_ids"][0] == model.layout.memory_id).nonzero().flatten()
    tags = mem.view(-1, model.config.memory.tokens)[:, 1 + si]              # the shape's tag, every block
    with torch.no_grad():   # the forward of trainer.lm_step, tapped
        feats = _features(model, b["pixels"], b.get("image_rows"))[0].float()
        memory, _ = fold_memories(model, feats, b["memory_spans"])
        embeds = model.embed(b["input_ids"], _row_tokens(model, feats, None, None, b["frame_rows"]), memory, b.get("tags"))
        with AttentionTap(model.lm, list(range(model.lm.config.num_hidden_layers))) as tap:
            model.lm.get_decoder()(inputs_embeds=embeds, attention_mask=b["attention_mask"])
        seen = [float(model.reader.scene_words(feats[a:c])["seen"][si]) for a, c in b["memory_spans"][0]]
        needle_tag = tags[int(np.argmax(seen))]
        rows, queries = torch.tensor([0]), torch.tensor([pos[-1] + 1])       # the position predicting the colour
        out = {}
        for layer, (hidden, (cos, sin)) in tap.inputs.items():
            attn = model.lm.get_decoder().layers[layer].self_attn
            for h in range(model.lm.config.num_attention_heads):
                p = head_attention(attn, hidden, cos, sin, h, rows, queries, b["attention_mask"])[0]
                out[(layer, h)] = (float(p[mem].sum()), float(p[tags].sum()), float(p[needle_tag]))
    return out


def main(model_path: str, n: int = 25) -> dict:
    model = mmlc.load(model_path).eval()
    rng = np.random.default_rng(777)
    found = [m for m in (masses(model, ex.needle_memory_example(rng)) for _ in range(n)) if m]
    out = {f"{layer}.{h}": np.mean([m[(layer, h)] for m in found], 0).round(3).tolist() for layer, h in sorted(found[0])}
    print(f"{len(found)} examples; per head: mass on memory, on the needle shape's tag tokens, on the needle's")
    for k, v in out.items():
        print(f"head {k}: {v[0]:.3f}  {v[1]:.3f}  {v[2]:.3f}")
    return out


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25)
