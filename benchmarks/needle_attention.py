"""Where does the answer look when it names the needle? Attention at the needle answer's colour.

On held-out needle-in-memory examples (``examples.needle_memory_example``, teacher-forced), at the
position that predicts the colour of "a yellow diamond.", every head's attention (``head_attention``
over the taps of one forward): its mass on all memory tokens, on the tag token of the needle's shape
in every block (memory.tags: token 1 + the shape's index), and on that token of the block that holds
the needle (the block whose scene the reader sees the shape in most surely).

    python benchmarks/needle_attention.py MODEL [N]

Recipe tiny-recall (README, Memory and NIAVH; 21 examples of 25): head 3.2 after stage 25, memory
0.990 / tag tokens 0.065 / the needle's 0.021 (spread over the memory); after stage 26 0.996 /
0.774 / 0.768 (it finds the needle's tag).
"""

import sys

import numpy as np
import torch

import mmlc
from mmlc.data import shapeworld as sw
from mmlc.train import examples as ex
from mmlc.train.trainer import collate, _features, _row_tokens, fold_memories
from mmlc.train.look import AttentionTap, head_attention
model = mmlc.load(sys.argv[1]).eval(); tok = model.tokenizer; lay = model.layout
rng = np.random.default_rng(777)
S = model.config.frames.words["shapes"]
acc = {}
n = 0
for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 25):
    e = ex.needle_memory_example(rng)
    qs = [it for it in e.items if isinstance(it, ex.Question) and it.text == sw.NEEDLE_QUESTION]
    if not qs: continue
    needle_shape = qs[0].answer.rstrip(".").split()[-1]
    b = collate(model, [e])
    ans = tok(qs[0].answer, add_special_tokens=False)["input_ids"]
    lab = b["labels"][0]
    pos = [i for i in range(len(lab) - len(ans)) if lab[i:i + len(ans)].tolist() == ans]
    if not pos: continue
    qpos = pos[-1] + 1          # predicts the colour
    ids = b["input_ids"][0]
    mem = (ids == lay.memory_id).nonzero().flatten()
    m = model.config.memory.tokens
    blocks = mem.view(-1, m)
    with torch.no_grad():
        feats, imf = _features(model, b["pixels"], b.get("image_rows"))
        tokens = _row_tokens(model, feats.float(), None, None, b["frame_rows"])
        memory, raw = fold_memories(model, feats.float(), b["memory_spans"])
        embeds = model.embed(b["input_ids"], tokens, memory, b.get("tags"))
        with AttentionTap(model.lm, [0, 1, 2, 3]) as tap:
            model.lm.get_decoder()(inputs_embeds=embeds, attention_mask=b["attention_mask"])
        rows, queries = torch.tensor([0]), torch.tensor([qpos])
        si = S.index(needle_shape)
        seen = []
        for a, bb in b["memory_spans"][0]:
            pr = torch.sigmoid(model.reader.logits(feats[a:bb].float())["present"].float()).amax(1)[:, si]
            seen.append(float(torch.minimum(pr[:-1], pr[1:]).max()) if len(pr) > 1 else float(pr[0]))
        best = int(np.argmax(seen))
    for L in range(4):
        hidden, (cos, sin) = tap.inputs[L]
        attn = model.lm.get_decoder().layers[L].self_attn
        for h in range(model.lm.config.num_attention_heads):
            with torch.no_grad():
                p = head_attention(attn, hidden, cos, sin, h, rows, queries, b["attention_mask"])[0]
            tag = blocks[:, 1 + S.index(needle_shape)]
            acc.setdefault((L, h), []).append((float(p[mem].sum()), float(p[tag].sum()), float(p[tag[best]])))
    n += 1
print("examples", n, "memory tokens per example ~", len(mem))
for (L, h), v in sorted(acc.items()):
    v = np.array(v).mean(0)
    print(f"head {L}.{h}: on memory {v[0]:.3f}  on the needle-shape tag tokens (all blocks) {v[1]:.3f}  on the needle block's one {v[2]:.3f}")
